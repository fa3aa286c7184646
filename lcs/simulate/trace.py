"""Trace files: what the world around the device does over time, one CSV row per sample.

Columns (header row required; names are case-sensitive; extra columns are ignored):

| column            | unit     | range     | required | default when the column is absent               |
|-------------------|----------|-----------|----------|-------------------------------------------------|
| `t_s`             | seconds  | 0 .. 1e12 | yes      | -                                               |
| `battery_pct`     | percent  | 0 .. 100  | yes      | -                                               |
| `cpu_load`        | fraction | 0 .. 1    | yes      | -                                               |
| `power_budget_mw` | mW       | 0 .. 1e12 | no       | unlimited                                        |

A missing required column is an error naming every one that is missing: a trace that says nothing about
the battery or the load would otherwise be replayed as a full battery on an idle board without a word. Only
the budget may be left out, meaning no budget. The upper bounds (31,700 years, 1 GW) keep times and budgets
finite through sums and plots.

- `t_s` must strictly increase. Row k describes the interval [t_k, t_k+1); the last row lasts as
  long as the one before it, so a trace needs at least two rows.
- `battery_pct` is the charge the rest of the system leaves (drain by other consumers, charging
  by a harvester); the simulator applies its *changes* row to row and subtracts the energy the
  inference workload itself uses (see `lcs.simulate.model`).
- `cpu_load` is the share of the whole board's CPU capacity taken by competing work (0.5 on a
  two-core board = one core busy), not a percentage.
- `power_budget_mw` is the power the inference workload may draw on top of the board's idle power.
- Traces are streamed (`open_trace(...).steps()`, or `.step_chunks()` as numpy arrays a block at a time): rows
  are read and validated as the replay asks for them, so memory does not grow with the trace's length;
  `load_trace` reads a whole (small) trace.
- Lines starting with `#` are comments (the example traces document themselves this way); blank
  lines are skipped. Every cell of a known column must hold a finite number: a blank, `nan` or
  `inf` cell is an error naming the file, line and column.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcs.errors import DataError

REQUIRED_COLUMNS = ("t_s", "battery_pct", "cpu_load")
MAX_T_S = MAX_BUDGET_MW = 1e12
# column -> (lowest, highest, default when absent)
COLUMNS: dict[str, tuple[float, float, float]] = {
    "t_s": (0.0, MAX_T_S, math.nan),
    "battery_pct": (0.0, 100.0, math.nan),
    "cpu_load": (0.0, 1.0, math.nan),
    "power_budget_mw": (0.0, MAX_BUDGET_MW, math.inf),
}
# characters of trace per block in chunks(): ~11k rows of four columns. Larger blocks cost no less CPU but more
# memory: at 1 MiB the peak RSS of a 10^7-row replay was 255 MB (freed blocks fragment the heap), at 256 KiB ~130 MB.
CHUNK_CHARS = 1 << 18
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

    def steps(self):
        """The same tuples as `TraceStream.steps`."""
        n, durations, battery = len(self), self.durations(), self.battery_pct
        for k in range(n):
            change = battery[k + 1] - battery[k] if k + 1 < n else 0.0
            yield (self.lines[k], self.t_s[k], durations[k], battery[k], self.cpu_load[k], self.power_budget_mw[k],
                   change)


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


class TraceStream:
    """A trace whose header has been checked; `rows()` / `steps()` read and validate the data as they go."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        with self._open() as fh:
            header = None
            for number, row in self._records(fh):
                header_line, header = number, [cell.strip() for cell in row]
                break
        if header is None:
            raise TraceError(f"{self.name}: empty trace (expected a header row with {', '.join(COLUMNS)})")
        seen: set[str] = set()
        for column in header:
            if column in COLUMNS and column in seen:
                raise TraceError(f"{self.name}:{header_line}: column {column} appears twice in the header")
            seen.add(column)
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise TraceError(f"{self.name}:{header_line}: missing required column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)} (header has: {', '.join(header) or 'nothing'})")
        self.header_line = header_line
        self.width = len(header)
        self.columns = tuple(c for c in COLUMNS if c in header)
        self.index = {c: header.index(c) for c in self.columns}

    def _open(self):
        try:
            return open(self.path, encoding="utf-8-sig", newline="")
        except FileNotFoundError:
            raise TraceError(f"{self.name}: no such trace file") from None
        except IsADirectoryError:
            raise TraceError(f"{self.name}: is a directory, not a trace file") from None
        except OSError as exc:
            raise TraceError(f"{self.name}: cannot read ({exc.strerror})") from None

    def _records(self, fh):
        """(line number, cells) of every line that is neither blank nor a comment, read lazily."""
        lines = iter(fh)
        numbered = _numbered(self.name, lines)
        reader = csv.reader(line for _, line in numbered)
        try:
            for row in reader:
                # a quoted cell spanning lines would shift every line number
                if reader.line_num != numbered.count:
                    raise TraceError(f"{self.name}: quoted cells must not span lines")
                yield numbered.number, row
        except csv.Error as exc:
            raise TraceError(f"{self.name}: not a valid CSV file ({exc})") from None

    def rows(self):
        """Validated rows: (line, t_s, battery_pct, cpu_load, power_budget_mw), one at a time."""
        with self._open() as fh:
            lines = self._lines(fh)
            next(lines)  # the header
            yield from self._validated(lines, None)

    def _validated(self, lines, before: float | None):
        """(line, t, battery, load, budget) of each (number, line) of `lines`; `before`: the t_s of the row before."""
        name, width = self.name, self.width
        getters = [(c, self.index.get(c), COLUMNS[c][2]) for c in COLUMNS]
        i_t, i_b, i_c, i_p = (self.index.get(c) for c in COLUMNS)
        full = i_p is not None  # all four columns: the fast path below applies
        for number, line in lines:
            # a plain line splits on commas; one with quotes goes through the csv module
            row = line.split(",") if '"' not in line else self._quoted(line, number)
            if len(row) > width:
                raise TraceError(f"{name}:{number}: {len(row)} cells but the header names {width} columns")
            try:  # fast path: four numbers in range; anything odd goes through _number for the exact message
                if not full or len(row) < width:
                    raise ValueError
                t, b, c, p = float(row[i_t]), float(row[i_b]), float(row[i_c]), float(row[i_p])
                if not (0.0 <= t <= MAX_T_S and 0.0 <= b <= 100.0 and 0.0 <= c <= 1.0
                        and 0.0 <= p <= MAX_BUDGET_MW):
                    raise ValueError
            except ValueError:
                t, b, c, p = (default if i is None else
                              _number(row[i] if i < len(row) else "", f"{name}:{number}", column)
                              for column, i, default in getters)
            if before is not None and t <= before:
                if t < before:
                    raise TraceError(f"{name}:{number}: column t_s goes backwards ({t:g} after {before:g})")
                raise TraceError(f"{name}:{number}: column t_s does not advance ({t:g} twice)")
            before = t
            yield number, t, b, c, p

    def chunks(self, chars: int | None = None):
        """The validated rows as numpy arrays (t_s, battery_pct, cpu_load, power_budget_mw), about `chars`
        characters of the file at a time: the same rows, values and errors as `rows()`, for replays that work
        on whole arrays (`lcs.simulate.batch`). A block of plain numeric lines is parsed by numpy's C reader
        (loadtxt: correctly rounded like float()) and checked as arrays; a block with anything else (comments,
        blank lines, quotes, a bad or out-of-range cell, a non-numeric extra column) goes through `rows()`'s
        own line-by-line validation, which gives the exact message."""
        known = [self.index.get(c) for c in COLUMNS]
        chars = chars or CHUNK_CHARS
        before = None
        with self._open() as fh:
            number = 0
            try:
                for _ in range(self.header_line):  # up to and including the header
                    fh.readline()
                number = self.header_line
                while True:
                    lines = fh.readlines(chars)
                    if not lines:
                        return
                    block = _block(lines, self.width, known, before)
                    if block is None:  # the exact, line-by-line path
                        rows = list(self._validated(((number + i + 1, line) for i, line in enumerate(lines)
                                                     if line.strip() and line.strip()[0] != "#"), before))
                        block = tuple(np.array([r[j] for r in rows], dtype=float) for j in range(1, 5))
                    number += len(lines)
                    if len(block[0]):
                        before = float(block[0][-1])
                        yield block
            except UnicodeDecodeError:
                raise TraceError(f"{self.name}: not a UTF-8 text file") from None

    def step_chunks(self, chars: int | None = None):
        """`steps()` as arrays: `StepChunk`s whose rows are the tuples `steps()` yields, in order."""
        held = None  # rows not yet yielded: each needs the next row's time and battery
        gap, count = None, 0
        for t, b, c, p in self.chunks(chars):
            count += len(t)
            if held is not None:
                t, b, c, p = (np.concatenate([h, x]) for h, x in zip(held, (t, b, c, p)))
            if len(t) < 2:
                held = (t, b, c, p)
                continue
            dt, change = np.diff(t), np.diff(b)
            gap = float(dt[-1])
            yield StepChunk(t[:-1], dt, b[:-1], c[:-1], p[:-1], change)
            held = (t[-1:], b[-1:], c[-1:], p[-1:])
        if gap is None:
            raise TraceError(f"{self.name}: a trace needs at least two data rows (found {count})")
        t, b, c, p = held
        yield StepChunk(t, np.array([gap]), b, c, p, np.zeros(1))

    def _lines(self, fh):
        """(line number, line) of every line that is neither blank nor a comment."""
        number = 0
        try:
            for line in fh:
                number += 1
                stripped = line.strip()
                if stripped and stripped[0] != "#":
                    yield number, line
        except UnicodeDecodeError:
            raise TraceError(f"{self.name}: not a UTF-8 text file") from None

    def _quoted(self, line: str, number: int) -> list[str]:
        try:
            row = next(csv.reader([line]))
        except csv.Error as exc:
            raise TraceError(f"{self.name}:{number}: not a valid CSV line ({exc})") from None
        if row and "\n" in row[-1]:  # an unterminated quote ran into the line's end
            raise TraceError(f"{self.name}: quoted cells must not span lines")
        return row

    def steps(self):
        """Rows with what the replay needs from the next one: (line, t_s, dt_s, battery_pct, cpu_load,
        power_budget_mw, battery change to the next row). Raises at the end if there were fewer than two rows."""
        rows = self.rows()
        current = next(rows, None)
        gap = None
        count = 0
        for following in rows:
            gap = following[1] - current[1]
            yield (current[0], current[1], gap, current[2], current[3], current[4], following[2] - current[2])
            count += 1
            current = following
        if current is None or gap is None:
            found = count + (current is not None)
            raise TraceError(f"{self.name}: a trace needs at least two data rows (found {found})")
        yield (current[0], current[1], gap, current[2], current[3], current[4], 0.0)


def _block(lines: list[str], width: int, known: list, before: float | None):
    """A block of lines as validated column arrays, or None when anything in it needs the line-by-line path."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "input contained no data"
            table = np.loadtxt(lines, delimiter=",", comments=None, dtype=float, ndmin=2)
    except (ValueError, UserWarning):
        return None
    if table.shape != (len(lines), width):  # every line a row of exactly the header's cells
        return None
    columns = []
    for column, i in zip(COLUMNS, known):
        lo, hi, default = COLUMNS[column]
        if i is None:
            columns.append(np.full(len(lines), default))
            continue
        values = np.ascontiguousarray(table[:, i])
        if not ((values >= lo) & (values <= hi)).all():  # NaN fails both
            return None
        columns.append(values)
    t = columns[0]
    if (before is not None and t[0] <= before) or not (t[1:] > t[:-1]).all():
        return None
    return tuple(columns)


@dataclass(frozen=True)
class StepChunk:
    """Consecutive steps as parallel arrays: what `steps()` yields (without the line numbers), row by row."""

    t_s: np.ndarray
    dt_s: np.ndarray
    battery_pct: np.ndarray
    cpu_load: np.ndarray
    power_budget_mw: np.ndarray
    change: np.ndarray  # battery change to the next row

    def __len__(self) -> int:
        return len(self.t_s)


class _numbered:
    """Iterator over (line number, line) of data lines; remembers the last number and how many it gave."""

    def __init__(self, name: str, lines) -> None:
        self.name, self.lines, self.number, self.count = name, lines, 0, 0
        self._line_no = 0

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                line = next(self.lines)
            except UnicodeDecodeError:
                raise TraceError(f"{self.name}: not a UTF-8 text file") from None
            self._line_no += 1
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                self.number, self.count = self._line_no, self.count + 1
                return self.number, line


def open_trace(path: str | Path) -> TraceStream:
    """Check a trace's header (file readable, required columns present); read its rows lazily."""
    return TraceStream(Path(path))


def load_trace(path: str | Path) -> Trace:
    """Read and validate a whole trace CSV; raises `TraceError` naming file, line and column on bad input."""
    stream = open_trace(path)
    values: dict[str, list[float]] = {c: [] for c in COLUMNS}
    lines: list[int] = []
    for number, *row in stream.rows():
        lines.append(number)
        for column, value in zip(COLUMNS, row):
            values[column].append(value)
    if len(lines) < 2:
        raise TraceError(f"{stream.name}: a trace needs at least two data rows (found {len(lines)})")
    return Trace(path=stream.path, t_s=tuple(values["t_s"]), battery_pct=tuple(values["battery_pct"]),
                 cpu_load=tuple(values["cpu_load"]), power_budget_mw=tuple(values["power_budget_mw"]),
                 lines=tuple(lines), columns=stream.columns)
