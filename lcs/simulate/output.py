"""What a simulation leaves behind: timeline.csv, summary.json, timeline.png, and a printed table.

The timeline is written row by row as the replay runs (a trace of any length needs constant memory) to a
temporary file that is renamed into place only when the run succeeds; the plot is drawn from at most
`PLOT_POINTS`-odd evenly spaced rows (plus the last). A failure leaves no half-written file behind, and a
folder `--out` created for the run is removed again.

timeline.csv, one row per trace row (blank cells: not applicable, e.g. no level while idle):
  step, t_s, dt_s; trace_battery_pct (the trace's own value), battery_pct (simulated, at the start
  of the step), cpu_load, power_budget_mw (`inf`: unlimited), deadline_ms; state (`run`, `idle`:
  the policy chose no level, `empty`: no charge); level, alpha, label, accuracy of the level run;
  latency_ms (model, under load), deadline_miss and over_budget (0/1); power_mw, energy_mj,
  answers (requests answered), served_fraction (share of the step the battery could power),
  battery_end_pct, switched (1 when the level changed); with a device also device_latency_ms
  (measured on the device) and output (its predicted class).

summary.json: the run's settings, `level_power_mw` (each level's unloaded cost at the period),
mean_expected_accuracy (over answers), answers, energy_mj/energy_mwh, mean_power_mw,
deadline_misses, over_budget_steps, switches, run/idle/empty steps, battery start/left/min,
time_per_level_s; `scaling` (any --budget-scale/--load-scale applied, and the load model on this board);
`vs_densest` (energy, battery left and answers against always running the densest level); with a device
also its latency and how many predictions differed from the artifact's reference outputs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import fields
from pathlib import Path

from lcs import atomic
from lcs.simulate.runner import StepRecord

TIMELINE_CSV, SUMMARY_JSON, PLOT_PNG = "timeline.csv", "summary.json", "timeline.png"
MODEL_ONLY_COLUMNS = {"device_latency_ms", "output"}  # left out when no device ran


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def timeline_columns(with_device: bool) -> list[str]:
    return [f.name for f in fields(StepRecord) if with_device or f.name not in MODEL_ONLY_COLUMNS]


def timeline_csv(records: list[StepRecord], with_device: bool) -> str:
    columns = timeline_columns(with_device)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        writer.writerow([_cell(getattr(r, c)) for c in columns])
    return buf.getvalue()


PLOT_POINTS = 4000
# the model-only timeline's columns (timeline_columns(False)) as printf templates; test_hostile checks them
# against the csv writer's output
_RUN = "%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%s,%d,%.6g,%s,%.6g,%.6g,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%d\n"
_IDLE = "%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%s,,,,,,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%d\n"


def _g6(values, keep=None) -> list[str]:
    """`"%.6g," % v` for each value of an array (a cell as _RUN writes it, and its comma); "," where `keep` is False.
    A value that repeats (a load, a budget, a level's latency) is formatted once."""
    import numpy as np

    cells = None
    if len(values) >= 256:
        unique, inverse = np.unique(values, return_inverse=True)
        zeros = np.signbit(values[values == 0])
        if 4 * len(unique) <= len(values) and (zeros.all() or not zeros.any()):  # 0.0 and -0.0 would merge
            cells = np.array([_G6 % v for v in unique.tolist()], dtype=object)[inverse]
    if cells is None:
        cells = np.array([_G6 % v for v in values.tolist()], dtype=object)
    if keep is not None:
        cells[~keep] = ","
    return cells.tolist()


_G6 = "%.6g,"


def timeline_text(c) -> str:
    """The model-only timeline lines of a `batch.ChunkReplay`: the text `StreamingOutputs._row` gives for each of its
    records. Each column becomes a list of cells (with their commas; a repeated value formatted once), the lists
    are interleaved row-major into one list and joined once: no per-row Python code."""
    import numpy as np

    s, run, n = c.steps, c.state == 0, len(c)
    deadline = _G6 % c.deadline_ms
    # deadline_ms and state; level, alpha, label, accuracy of each option position and four blank cells at -1
    states = np.array([deadline + state + "," for state in ("run", "idle", "empty")], dtype=object)
    levels = np.array([f"{lv.index:d},{_G6 % lv.alpha}{_quoted_row([lv.label])[:-1]},{_G6 % lv.accuracy}"
                       for lv in c.levels] + [",,,,"], dtype=object)
    flags = np.array(["0,", "1,"], dtype=object)
    ends = _g6(np.asarray(c.battery_end_pct))
    columns = [
        list(map("%d,".__mod__, range(c.first_step, c.first_step + n))), list(map(_G6.__mod__, s.t_s.tolist())),
        _g6(s.dt_s), _g6(s.battery_pct), [_G6 % c.battery_pct[0]] + ends[:-1],  # a step starts where the last ended
        _g6(s.cpu_load), _g6(s.power_budget_mw), states[c.state].tolist(), levels[c.position].tolist(),
        _g6(c.latency_ms, run), flags[c.deadline_miss.view(np.uint8)].tolist(),
        flags[c.over_budget.view(np.uint8)].tolist(), _g6(c.power_mw), _g6(c.energy_mj), _g6(c.answers),
        _g6(c.served_fraction), ends, np.array(["0\n", "1\n"], dtype=object)[c.switched.view(np.uint8)].tolist()]
    cells = [""] * (n * len(columns))
    for j, column in enumerate(columns):
        cells[j::len(columns)] = column
    return "".join(cells)


def _quoted_row(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


class Decimator:
    """Keeps every `stride`-th record, doubling the stride whenever 2 x `points` are held, plus the last one:
    an evenly spaced sample of at most ~2 x `points` records, whatever the length."""

    def __init__(self, points: int | None = None) -> None:
        self.points, self.stride, self.kept, self.last = points or PLOT_POINTS, 1, [], None

    def add(self, record: StepRecord) -> None:
        self.last = record
        if record.step % self.stride == 0:
            self.kept.append(record)
            if len(self.kept) >= 2 * self.points:
                self.kept = self.kept[::2]
                self.stride *= 2

    def sample(self) -> list[StepRecord]:
        if self.last is not None and (not self.kept or self.kept[-1] is not self.last):
            return self.kept + [self.last]
        return list(self.kept)


class StreamingOutputs:
    """timeline.csv written as the replay goes, summary.json and a decimated timeline.png at the end.

    Use as a context manager: `add(record)` per step, `finish(...)` after the last; leaving the block without
    `finish` (an error, an interrupt) removes the temporary timeline and a folder created for the run."""

    def __init__(self, out_dir: str | Path, with_device: bool) -> None:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            from lcs.errors import ConfigError

            raise ConfigError(f"--out {out} exists and is not a folder")
        self.out, self.with_device = out, with_device
        self.columns = timeline_columns(with_device)
        self.decimator = Decimator()
        self._labels: dict[str, str] = {}
        self.files: dict[str, Path] = {}
        self._created: list[Path] = []
        self._tmp: Path | None = None
        self._fh = None

    def __enter__(self) -> "StreamingOutputs":
        missing = []
        for parent in (self.out, *self.out.parents):
            if parent.exists():
                break
            missing.append(parent)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._created = missing
            fd, tmp = tempfile.mkstemp(prefix=f".{TIMELINE_CSV}.", suffix=".tmp", dir=self.out)
        except OSError as exc:
            self._cleanup()
            from lcs.errors import ConfigError

            raise ConfigError(f"cannot write to --out {self.out}: {exc.strerror}") from None
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", newline="", buffering=1 << 20)
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self._writer.writerow(self.columns)
        return self

    def add(self, record: StepRecord) -> None:
        self._fh.write(self._row(record))
        self.decimator.add(record)

    def add_chunk(self, chunk) -> None:
        """`add` for every record of a `batch.ChunkReplay` (model-only): the same lines, made a chunk at a time; the
        plot's sample gets records only for the rows the decimator keeps (and the last)."""
        self._fh.write(timeline_text(chunk))
        first, record = chunk.first_step, None
        i = -first % self.decimator.stride
        while i < len(chunk):  # only the rows whose step is a multiple of the (growing) stride
            record = chunk.record(i)
            self.decimator.add(record)
            stride = self.decimator.stride
            i = ((first + i) // stride + 1) * stride - first
        if len(chunk) and (record is None or record.step != first + len(chunk) - 1):
            self.decimator.last = chunk.record(len(chunk) - 1)  # the plot's last point, as `add` keeps it

    def _row(self, r: StepRecord) -> str:
        """One timeline line, the same text `_cell` gives, formatted by one C-level `%` per row (the hot loop of
        a long trace): `%.6g` matches `{:.6g}` and writes inf as `inf`, `%d` writes a bool as 0/1."""
        if self.with_device:
            return _quoted_row([_cell(getattr(r, c)) for c in self.columns])
        if r.level is None:  # idle or empty: no level, alpha, label, accuracy or latency
            return _IDLE % (r.step, r.t_s, r.dt_s, r.trace_battery_pct, r.battery_pct, r.cpu_load, r.power_budget_mw,
                            r.deadline_ms, r.state, r.deadline_miss, r.over_budget, r.power_mw, r.energy_mj,
                            r.answers, r.served_fraction, r.battery_end_pct, r.switched)
        label = self._labels.get(r.label)
        if label is None:
            label = self._labels[r.label] = _quoted_row([r.label])[:-1]
        return _RUN % (r.step, r.t_s, r.dt_s, r.trace_battery_pct, r.battery_pct, r.cpu_load, r.power_budget_mw,
                       r.deadline_ms, r.state, r.level, r.alpha, label, r.accuracy, r.latency_ms, r.deadline_miss,
                       r.over_budget, r.power_mw, r.energy_mj, r.answers, r.served_fraction, r.battery_end_pct,
                       r.switched)

    def finish(self, summary: dict, levels, title: str) -> dict[str, Path]:
        self._fh.close()
        png = plot_png(self.decimator.sample(), summary, levels, title)
        atomic.write_bytes(self.out / SUMMARY_JSON, summary_json(summary).encode())
        atomic.write_bytes(self.out / PLOT_PNG, png)
        atomic.set_mode(self._tmp)
        os.replace(self._tmp, self.out / TIMELINE_CSV)
        self._tmp = None
        self.files = {name: self.out / name for name in (TIMELINE_CSV, SUMMARY_JSON, PLOT_PNG)}
        return self.files

    def _cleanup(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        for folder in self._created:  # innermost first; only if the run put nothing else there
            try:
                folder.rmdir()
            except OSError:
                break

    def __exit__(self, *exc) -> None:
        if not self.files:
            self._cleanup()


def _json_safe(value):
    """JSON has no infinity: an unlimited budget is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def summary_json(summary: dict) -> str:
    return json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n"


def _time_axis(records: list[StepRecord]) -> tuple[list[float], str, float]:
    end = records[-1].t_s + records[-1].dt_s
    scale, unit = (3600.0, "h") if end >= 3 * 3600 else (60.0, "min") if end >= 180 else (1.0, "s")
    return [r.t_s / scale for r in records], unit, end / scale


def plot_png(records: list[StepRecord], summary: dict, levels, title: str) -> bytes:
    """Five panels over time: battery, power vs budget, level, latency vs deadline, accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, unit, x_end = _time_axis(records)
    edges = xs + [x_end]  # step plots: each row holds its value until the next row

    def steps(values):
        return values + values[-1:]

    def masked(values):  # None (idle, empty) shows as a gap
        return steps([math.nan if v is None else v for v in values])

    fig, axes = plt.subplots(5, 1, figsize=(9, 10.5), dpi=110, sharex=True,
                             gridspec_kw={"height_ratios": [1.1, 1, 1.2, 1, 1]})
    ax_bat, ax_pow, ax_lvl, ax_lat, ax_acc = axes

    ax_bat.plot(edges, steps([r.battery_pct for r in records]), drawstyle="steps-post", lw=1.8,
                color="tab:green", label="battery (with inference)")
    ax_bat.plot(edges, steps([r.trace_battery_pct for r in records]), drawstyle="steps-post", lw=1,
                ls="--", color="0.45", label="trace (rest of system)")
    ax_bat.set_ylabel("battery (%)")
    ax_bat.set_ylim(-3, 103)
    ax_bat.legend(fontsize=8, loc="best")

    budget = [r.power_budget_mw for r in records]
    if any(math.isfinite(b) for b in budget):
        ax_pow.plot(edges, masked([b if math.isfinite(b) else None for b in budget]), drawstyle="steps-post",
                    lw=1, color="tab:red", label="power budget")
    ax_pow.plot(edges, steps([r.power_mw for r in records]), drawstyle="steps-post", lw=1.4,
                color="tab:orange", label="inference power")
    ax_pow.set_ylabel("power (mW)")
    ax_pow.legend(fontsize=8, loc="best")

    positions = {lv.index: i for i, lv in enumerate(levels)}
    ax_lvl.plot(edges, masked([positions.get(r.level) for r in records]), drawstyle="steps-post", lw=1.6,
                color="tab:blue")
    idle = [i for i, r in enumerate(records) if r.state != "run"]
    if idle:
        ax_lvl.scatter([xs[i] for i in idle], [-0.6] * len(idle), marker="|", s=30, color="0.5",
                       label="idle / battery empty")
        ax_lvl.legend(fontsize=8, loc="best")
    ax_lvl.set_yticks(range(len(levels)), [f"{lv.index}: {lv.label}" for lv in levels], fontsize=7)
    ax_lvl.set_ylim(-1, len(levels))
    ax_lvl.set_ylabel("level")

    ax_lat.plot(edges, masked([r.latency_ms for r in records]), drawstyle="steps-post", lw=1.4,
                color="tab:purple", label="latency (under load)")
    ax_lat.axhline(records[0].deadline_ms, color="tab:red", lw=1, ls="--", label="deadline")
    measured = [i for i, r in enumerate(records) if r.device_latency_ms is not None]
    if measured:  # hardware in the loop: what the device itself timed (unloaded) beside the model
        ax_lat.scatter([xs[i] for i in measured], [records[i].device_latency_ms for i in measured], s=10,
                       marker="x", color="tab:green", zorder=3, label="device (measured, unloaded)")
    misses = [i for i, r in enumerate(records) if r.deadline_miss]
    if misses:  # the count is the whole run's; a long run's plot shows a sample of the rows
        ax_lat.scatter([xs[i] for i in misses], [records[i].latency_ms for i in misses], s=12, color="tab:red",
                       zorder=3, label=f"missed ({summary.get('deadline_misses', len(misses))})")
    shown = [v for r in records for v in (r.latency_ms, r.device_latency_ms) if v is not None] + [records[0].deadline_ms]
    if max(shown) / min(shown) > 20:  # a deadline far above the latencies would flatten them on a linear axis
        ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.legend(fontsize=8, loc="best")

    ax_acc.plot(edges, masked([None if r.accuracy is None else 100 * r.accuracy for r in records]),
                drawstyle="steps-post", lw=1.4, color="tab:brown")
    ax_acc.set_ylabel("expected acc. (%)")
    ax_acc.set_xlabel(f"time ({unit})")

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(edges[0], edges[-1])
    mean = summary.get("mean_expected_accuracy")
    headline = (f"mean accuracy {100 * mean:.2f}%" if mean is not None else "no answers") + \
        f", energy {summary['energy_mwh']:.3g} mWh, misses {summary['deadline_misses']}, " \
        f"switches {summary['switches']}, battery left {summary['battery_left_pct']:.1f}%"
    fig.suptitle(f"{title}\n{headline}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out_dir: str | Path, records: list[StepRecord], summary: dict, levels, title: str,
                  with_device: bool) -> dict[str, Path]:
    """Render all three files, then write them; returns their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from lcs.errors import ConfigError

        raise ConfigError(f"--out {out} exists and is not a folder")
    rendered = {
        TIMELINE_CSV: timeline_csv(records, with_device).encode(),
        SUMMARY_JSON: summary_json(summary).encode(),
        PLOT_PNG: plot_png(records, summary, levels, title),
    }
    paths = {}
    for name, data in rendered.items():
        atomic.write_bytes(out / name, data)
        paths[name] = out / name
    return paths


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    mean = summary["mean_expected_accuracy"]
    budget_note = f" ({summary['over_budget_steps']} over budget)" if summary["over_budget_steps"] else ""
    table = Table(title=f"simulate {Path(summary['trace']).name}: policy {summary['policy']} on {summary['board']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("steps", f"{summary['steps']} over {summary['duration_s']:.6g} s"),
        ("mean expected accuracy", "-" if mean is None else f"{100 * mean:.2f}%"),
        ("answers", f"{summary['answers']:.6g}"),
        ("energy", f"{summary['energy_mwh']:.4g} mWh ({summary['mean_power_mw']:.4g} mW mean)"),
        ("deadline misses", f"{summary['deadline_misses']} of {summary['run_steps']} running steps"
                            f" (deadline {summary['deadline_ms']:g} ms)"),
        ("level switches", str(summary["switches"])),
        ("idle / empty steps", f"{summary['idle_steps']} / {summary['empty_steps']}{budget_note}"),
        ("battery", f"{summary['battery_start_pct']:.1f}% -> {summary['battery_left_pct']:.1f}% "
                    f"(min {summary['battery_min_pct']:.1f}%)"),
    ]
    costs = list(summary.get("level_power_mw", {}).values())
    if costs:
        rows.append(("level cost (unloaded)", f"{min(costs):.4g} to {max(costs):.4g} mW "
                                              f"at one request per {summary['period_ms']:g} ms"))
    if summary.get("device_latency_ms_mean") is not None:
        disagree = summary.get("reference_disagreements")
        rows.append(("device latency", f"{summary['device_latency_ms_mean']:.4g} ms mean, "
                                       f"{summary['device_latency_ms_max']:.4g} ms max ({summary['source']})"))
        if disagree is not None:
            rows.append(("device vs reference", f"{disagree} of {summary['device_inferences']} predictions differ"))
    saving = summary.get("vs_densest")
    if saving and saving.get("densest_level"):
        e, b, a = saving["energy_mwh"], saving["battery_left_pct"], saving["answers"]
        rows.append((f"vs always {saving['densest_level']}",
                     f"energy {e['saved']:+.4g} mWh saved ({e['policy']:.4g} vs {e['densest']:.4g}), battery left "
                     f"{b['gained']:+.1f} points ({b['policy']:.1f}% vs {b['densest']:.1f}%), inferences served "
                     f"{a['more']:+.6g} ({a['policy']:.6g} vs {a['densest']:.6g})"))
    if (summary.get("scaling") or {}).get("load_model"):
        rows.append(("load model", summary["scaling"]["load_model"]))
    for key, label in (("budget", "budget scaled"), ("load", "load scaled")):
        applied = (summary.get("scaling") or {}).get(key)
        if applied:
            capped = f", {applied['capped_rows']} rows capped at 1" if applied.get("capped_rows") else ""
            rows.append((label, f"x{applied['factor']:.4g} ({applied['how']}{capped})"))
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
