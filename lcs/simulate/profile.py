"""Level profiles: the compression levels a device can run, with accuracy and speed per level.

The source of truth is an artifact's manifest (`lcs.artifact`): its `levels` list and its `target`.
For hardware-free use the same data can come from a JSON profile file:

    {
      "target": {"name": "host"},            # or "board": "host"; optional if --board is given
      "levels": [
        {"index": 0, "alpha": 0.0, "label": "width 0.250", "accuracy": 0.91, "latency_ms": 0.11},
        {"index": 1, "alpha": 1.0, "label": "width 1.000", "accuracy": 0.97, "cycles": 2400000},
        ...
      ]
    }

Per level: `index` (what set-level sends to a device), `alpha`, `label` (optional), `accuracy`
(fraction 0..1, required: policies trade it against cost; builds copy the checkpoint's own evaluation,
and `--accuracy` replaces it with `lcs eval` results matched by alpha), and its unloaded speed as
`latency_ms` or, when only that is known, MCU `cycles` (turned into time with the board's clock).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lcs.errors import ConfigError
from lcs.results import read_accuracy
from lcs.subspace.levels import same_alpha


class ProfileError(ConfigError):
    """A level profile (JSON file or artifact manifest) the simulator cannot use."""


@dataclass(frozen=True)
class LevelSpec:
    """One level as the simulator sees it."""

    index: int
    alpha: float
    label: str
    accuracy: float
    latency_ms: float | None = None  # measured on the unloaded board
    cycles: int | None = None  # MCU cycles per inference, when no latency was measured


@dataclass(frozen=True)
class Profile:
    levels: tuple[LevelSpec, ...]  # sorted by index
    target: str | None  # board the profile was measured on, if it says
    source: str  # where it came from, for messages and the summary


def _finite(value, where: str, field: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"{where}: {field} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ProfileError(f"{where}: {field} = {value:g} is outside [{lo:g}, {hi:g}]")
    return value


def profile_from_dict(data: dict, source: str) -> Profile:
    """Validate a `{"levels": [...], "target": ...}` mapping (a profile file or an artifact manifest)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a JSON object with a 'levels' list")
    raw_levels = data.get("levels")
    if not isinstance(raw_levels, list) or not raw_levels:
        raise ProfileError(f"{source}: needs a non-empty 'levels' list")
    levels: list[LevelSpec] = []
    for i, raw in enumerate(raw_levels):
        where = f"{source}: levels[{i}]"
        if not isinstance(raw, dict):
            raise ProfileError(f"{where} is not an object")
        index = raw.get("index", i)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ProfileError(f"{where}: index must be a non-negative integer, got {index!r}")
        if raw.get("accuracy") is None:
            raise ProfileError(f"{where}: no accuracy (pass --accuracy results.json from `lcs eval --out`)")
        accuracy = _finite(raw["accuracy"], where, "accuracy", lo=0.0, hi=1.0)
        if raw.get("alpha") is None:
            raise ProfileError(f"{where}: no alpha")
        alpha = _finite(raw["alpha"], where, "alpha", lo=0.0, hi=1.0)
        latency = raw.get("latency_ms")
        cycles = raw.get("cycles")
        if latency is not None:
            latency = _finite(latency, where, "latency_ms", lo=0.0)
            if latency == 0:
                raise ProfileError(f"{where}: latency_ms must be positive")
        if cycles is not None:
            if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles <= 0:
                raise ProfileError(f"{where}: cycles must be a positive integer, got {cycles!r}")
        if latency is None and cycles is None:
            raise ProfileError(f"{where}: needs latency_ms or cycles")
        label = raw.get("label") or f"alpha {alpha:.3f}"
        levels.append(LevelSpec(index=index, alpha=alpha, label=str(label), accuracy=accuracy,
                                latency_ms=latency, cycles=cycles))
    indices = [level.index for level in levels]
    if len(set(indices)) != len(indices):
        raise ProfileError(f"{source}: level indices repeat ({indices})")
    target = data.get("target", data.get("board"))
    if isinstance(target, dict):
        target = target.get("name")
    if target is not None and not isinstance(target, str):
        raise ProfileError(f"{source}: target must be a board name or a board object with a name")
    return Profile(levels=tuple(sorted(levels, key=lambda lv: lv.index)), target=target, source=source)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def with_accuracy(data: dict, accuracy_path: str | Path) -> dict:
    """Accuracy per level from `lcs eval` results (results.json or --json output, read by `lcs.results`), matched by
    alpha. Results given explicitly win over the manifest's own numbers; a level they do not cover keeps its own, if
    it has one. Only the first model in the results counts (eval lists the subspace first, then baselines).
    """
    path = Path(accuracy_path)
    known = read_accuracy(path)
    levels = []
    for i, level in enumerate(data.get("levels") or []):
        if isinstance(level, dict) and isinstance(level.get("alpha"), (int, float)):
            match = [row["accuracy"] for row in known if same_alpha(row["alpha"], level["alpha"])]
            if not match and level.get("accuracy") is not None:
                levels.append(level)
                continue
            if not match:
                raise ProfileError(f"{path} has no accuracy for level {level.get('index', i)} "
                                   f"(alpha {level['alpha']:g}); evaluate with --levels covering it")
            level = {**level, "accuracy": match[0]}
        levels.append(level)
    return {**data, "levels": levels}


def load_profile_json(path: str | Path, accuracy: str | Path | None = None) -> Profile:
    path = Path(path)
    data = _read_json(path, "profile")
    if accuracy is not None and isinstance(data, dict):
        data = with_accuracy(data, accuracy)
    return profile_from_dict(data, str(path))


def load_profile_artifact(path: str | Path, board: str | None = None, accuracy: str | Path | None = None) -> Profile:
    """The levels of an artifact, read through `lcs.artifact` (which checks integrity and, given `board`,
    that the artifact was built for it)."""
    from lcs import artifact

    manifest = artifact.open_artifact(path, expect_target=board).manifest
    data = {"target": manifest.target_name,
            "levels": [{"index": lv.index, "alpha": lv.alpha, "label": lv.label, "accuracy": lv.accuracy,
                        "latency_ms": lv.latency_ms, "cycles": lv.cycles} for lv in manifest.levels]}
    if accuracy is not None:
        data = with_accuracy(data, accuracy)
    return profile_from_dict(data, str(path))
