"""`lcs eval` results, read without torch (the simulator and builds use them; lcs.evaluate writes them).

The file is results.json from `lcs eval --out DIR` (or the `--json` output): a list of rows as
`lcs.evaluate.LevelResult` writes them, `{model, alpha, level, keep, width, bits, accuracy, zero_fraction}`,
the evaluated subspace's rows first, then those of any baselines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lcs.errors import ConfigError


class ResultsError(ConfigError):
    """A file that is not `lcs eval` results."""


def read_accuracy(path: str | Path) -> list[dict]:
    """Rows `{alpha, accuracy}` of the first model listed (the subspace; baselines follow it), as floats."""
    path = Path(path)
    what = f"{path} is not a results.json written by `lcs eval --out`"
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file (results.json from `lcs eval --out DIR`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{what} (cannot read it as text: {exc})") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{what} (not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "model" in r for r in rows):
        raise ResultsError(f"{what} (expected a non-empty list of rows with model, alpha and accuracy)")
    main = rows[0]["model"]
    table = []
    for i, row in enumerate(rows):
        if row["model"] != main:
            continue
        values = [row.get("alpha"), row.get("accuracy")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ResultsError(f"{what} (row {i}: alpha and accuracy must be numbers, got {values[0]!r} and "
                               f"{values[1]!r})")
        table.append({"alpha": float(values[0]), "accuracy": float(values[1])})
    return table
