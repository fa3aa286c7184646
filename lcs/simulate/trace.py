"""Trace files: what the world around the device does over time, one CSV row per sample.

Columns (header row required; names are case-sensitive; extra columns are ignored):

| column            | unit     | range     | required | default when the column is absent               |
|-------------------|----------|-----------|----------|-------------------------------------------------|
| `t_s`             | seconds  | >= 0      | yes      | -                                               |
| `battery_pct`     | percent  | 0 .. 100  | no       | 100 in every row (nothing else drains the battery) |
| `cpu_load`        | fraction | 0 .. 1    | no       | 0 (the board is otherwise idle)                  |
| `power_budget_mw` | mW       | >= 0      | no       | unlimited                                        |

- `t_s` must strictly increase. Row k describes the interval [t_k, t_k+1); the last row lasts as
  long as the one before it, so a trace needs at least two rows.
- `battery_pct` is the charge the rest of the system leaves (drain by other consumers, charging
  by a harvester); the simulator applies its *changes* row to row and subtracts the energy the
  inference workload itself uses (see `lcs.simulate.model`).
- `cpu_load` is the share of the whole board's CPU capacity taken by competing work (0.5 on a
  two-core board = one core busy), not a percentage.
- `power_budget_mw` is the power the inference workload may draw on top of the board's idle power.
- Lines starting with `#` are comments (the example traces document themselves this way); blank
  lines are skipped. Every cell of a known column must hold a finite number: a blank, `nan` or
  `inf` cell is an error naming the file, line and column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from lcs.errors import DataError

REQUIRED_COLUMNS = ("t_s",)
# column -> (lowest, highest, default when absent)
COLUMNS: dict[str, tuple[float, float, float]] = {
    "t_s": (0.0, math.inf, math.nan),
    "battery_pct": (0.0, 100.0, 100.0),
    "cpu_load": (0.0, 1.0, 0.0),
    "power_budget_mw": (0.0, math.inf, math.inf),
}
RANGE_HINTS = {"cpu_load": " (a fraction of the board's CPU, not a percentage)"}


class TraceError(DataError):
    """A trace file that cannot be read or breaks the documented format."""


@dataclass(frozen=True)
class Trace:
    """A validated trace: parallel tuples, one entry per row, plus where each row came from."""

    path: Path
    t_s: tuple[float, ...]
    battery_pct: tuple[float, ...]
    cpu_load: tuple[float, ...]
    power_budget_mw: tuple[float, ...]
    lines: tuple[int, ...]  # file line number of each row, for messages
    columns: tuple[str, ...]  # the known columns the file actually has

    def __len__(self) -> int:
        return len(self.t_s)

    def durations(self) -> list[float]:
        """Seconds each row lasts: the gap to the next row; the last row repeats the previous gap."""
        gaps = [b - a for a, b in zip(self.t_s, self.t_s[1:])]
        return gaps + gaps[-1:]


def _number(text: str, where: str, column: str) -> float:
    cell = text.strip()
    if not cell:
        raise TraceError(f"{where}: column {column} is blank")
    try:
        value = float(cell)
    except ValueError:
        raise TraceError(f"{where}: column {column}: {cell!r} is not a number") from None
    if math.isnan(value):
        raise TraceError(f"{where}: column {column} is NaN")
    if math.isinf(value):
        raise TraceError(f"{where}: column {column} is infinite")
    lo, hi, _ = COLUMNS[column]
    if not lo <= value <= hi:
        bound = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
        raise TraceError(f"{where}: column {column} = {value:g} is outside {bound}{RANGE_HINTS.get(column, '')}")
    return value


def _data_lines(text: str):
    """(line number, line) for every line that is neither blank nor a comment."""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, line


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace CSV; raises `TraceError` naming file, line and column on bad input."""
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TraceError(f"{name}: no such trace file") from None
    except IsADirectoryError:
        raise TraceError(f"{name}: is a directory, not a trace file") from None
    except UnicodeDecodeError:
        raise TraceError(f"{name}: not a UTF-8 text file") from None
    except OSError as exc:
        raise TraceError(f"{name}: cannot read ({exc.strerror})") from None

    numbered = list(_data_lines(text))
    if not numbered:
        raise TraceError(f"{name}: empty trace (expected a header row with {', '.join(COLUMNS)})")
    try:
        rows = list(csv.reader(line for _, line in numbered))
    except csv.Error as exc:
        raise TraceError(f"{name}: not a valid CSV file ({exc})") from None
    if len(rows) != len(numbered):  # a quoted cell spanning lines would shift every line number
        raise TraceError(f"{name}: quoted cells must not span lines")

    header_line, header = numbered[0][0], [cell.strip() for cell in rows[0]]
    seen: set[str] = set()
    for column in header:
        if column in COLUMNS and column in seen:
            raise TraceError(f"{name}:{header_line}: column {column} appears twice in the header")
        seen.add(column)
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise TraceError(f"{name}:{header_line}: missing required column {column} "
                             f"(header has: {', '.join(header) or 'nothing'})")
    present = tuple(c for c in COLUMNS if c in header)
    index = {c: header.index(c) for c in present}

    values: dict[str, list[float]] = {c: [] for c in COLUMNS}
    lines: list[int] = []
    for (number, _), row in zip(numbered[1:], rows[1:]):
        where = f"{name}:{number}"
        if len(row) > len(header):
            raise TraceError(f"{where}: {len(row)} cells but the header names {len(header)} columns")
        for column in COLUMNS:
            if column in index:
                cell = row[index[column]] if index[column] < len(row) else ""
                value = _number(cell, where, column)
            else:
                value = COLUMNS[column][2]
            values[column].append(value)
        if lines:
            before, now = values["t_s"][-2], values["t_s"][-1]
            if now < before:
                raise TraceError(f"{where}: column t_s goes backwards ({now:g} after {before:g})")
            if now == before:
                raise TraceError(f"{where}: column t_s does not advance ({now:g} twice)")
        lines.append(number)
    if len(lines) < 2:
        raise TraceError(f"{name}: a trace needs at least two data rows (found {len(lines)})")
    return Trace(path=path, t_s=tuple(values["t_s"]), battery_pct=tuple(values["battery_pct"]),
                 cpu_load=tuple(values["cpu_load"]), power_budget_mw=tuple(values["power_budget_mw"]),
                 lines=tuple(lines), columns=present)
