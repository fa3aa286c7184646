"""`lcs simulate --compare`: the chosen policy beside every built-in policy, every fixed level and the
offline optimum (`lcs.simulate.optimum`) on the same trace, battery and cost model.

Each row is one replay through `runner.replay` (model-only: the chosen policy's own row is the run
that just happened, device and all). Columns, each also as a ratio to the optimum's row:

- delivered accuracy: the sum over requests of the answering level's accuracy, counting only answers
  on time and within the step's power budget (late, over-budget, idle and empty steps give 0); shown
  per request (delivered / requests that arrived), so 0.95 means "as good as answering every request
  with a 95 % level";
- energy (mWh) the workload drew; battery life: when the simulated battery first ran dry (the whole
  trace when it never did); battery left at the end; deadline misses and level switches (steps).

The optimum is an upper bound on delivered accuracy for every row; `optimum.upper_bound` bounds the
optimum itself (the DP's discretisation, see `lcs.simulate.optimum`).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from lcs import atomic
from lcs.simulate import optimum as opt
from lcs.simulate.model import CostModel
from lcs.simulate.policies import POLICIES, make_policy
from lcs.simulate.runner import StepRecord, Summary, iter_replay, replay
from lcs.simulate.trace import Trace

COMPARE_JSON, COMPARE_PNG = "compare.json", "compare.png"
METRICS = ("delivered", "energy_mwh", "battery_life_s", "battery_left_pct", "deadline_misses", "switches")


def delivered(records: list[StepRecord]) -> float:
    """Accuracy summed over answers that were on time and within budget."""
    return sum(r.accuracy * r.answers for r in records
               if r.state == "run" and not r.deadline_miss and not r.over_budget)


def battery_life_s(records: list[StepRecord]) -> float | None:
    """Seconds until the simulated battery first ran dry; None when it never did."""
    for r in records:
        if r.battery_end_pct <= 0.0 or r.state == "empty":
            return r.t_s + r.dt_s - records[0].t_s
    return None


def metrics(records: list[StepRecord], period_ms: float) -> dict:
    duration = sum(r.dt_s for r in records)
    requests = duration * 1000.0 / period_ms
    total = delivered(records)
    energy = sum(r.energy_mj for r in records) / 3600.0
    return {
        "delivered": total, "delivered_per_request": total / requests if requests else 0.0,
        "answers": sum(r.answers for r in records), "energy_mwh": energy,
        "battery_life_s": battery_life_s(records), "battery_left_pct": records[-1].battery_end_pct,
        "deadline_misses": sum(r.deadline_miss for r in records if r.state == "run"),
        "over_budget_steps": sum(r.over_budget for r in records if r.state == "run"),
        "switches": sum(r.switched for r in records),
    }


def _ratio(value, reference) -> float | None:
    if value is None or reference is None:
        return None
    if reference == 0:
        return 1.0 if value == 0 else None
    return value / reference


@dataclass
class Comparison:
    rows: list[dict]  # name, kind (chosen/policy/fixed/optimum), metrics, ratios
    optimum: dict  # bound and timing
    duration_s: float


def compare(trace: Trace, model: CostModel, policy: str, policy_options: dict | None, *,
            capacity_mwh: float) -> Comparison:
    """Every row of the comparison, each replayed model-only. The chosen policy's row is a fresh instance of it:
    decisions, energy and misses come from the cost model even when a device ran it, so the rows agree."""
    chosen = replay(trace, model, make_policy(policy, policy_options), capacity_mwh=capacity_mwh)
    chosen_name = chosen.policy
    period = model.workload.period_ms
    duration = sum(trace.durations())
    best = opt.solve(trace, model, capacity_mwh)
    best_run = replay(trace, model, opt.Scheduled(best.schedule), capacity_mwh=capacity_mwh)
    runs: list[tuple[str, str, list[StepRecord]]] = [(f"{chosen_name} (chosen)", "chosen", chosen.records)]
    for name in sorted(POLICIES):
        if name == "fixed":
            continue
        runs.append((name, "policy", replay(trace, model, make_policy(name), capacity_mwh=capacity_mwh).records))
    for level in model.profile.levels:
        policy = make_policy("fixed", {"level": str(level.index)})
        runs.append((f"fixed {level.index}: {level.label}", "fixed",
                     replay(trace, model, policy, capacity_mwh=capacity_mwh).records))
    runs.append(("optimum (offline)", "optimum", best_run.records))
    reference = metrics(best_run.records, period)
    for key in ("battery_life_s",):  # a battery that never ran dry lasted the whole trace
        reference[key] = reference[key] if reference[key] is not None else duration
    rows = []
    for name, kind, records in runs:
        m = metrics(records, period)
        life = m["battery_life_s"] if m["battery_life_s"] is not None else duration
        ratios = {key: _ratio(life if key == "battery_life_s" else m[key], reference[key]) for key in METRICS}
        rows.append({"name": name, "kind": kind, **m, "battery_ran_dry": m["battery_life_s"] is not None,
                     "ratio_to_optimum": ratios})
    return Comparison(rows=rows, optimum={**best.bound(reference["delivered"]), "steps": len(trace)},
                      duration_s=duration)


def to_json(comparison: Comparison, settings: dict) -> dict:
    return {**settings, "duration_s": comparison.duration_s, "optimum": comparison.optimum, "rows": comparison.rows}


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_comparison(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    bound = data["optimum"]
    note = ("exact" if bound["exact"] else
            f"within {100 * bound['relative_gap']:.2f} % of the bound, {bound['grid_points']}-point battery grid")
    table = Table(title=f"compare {Path(data['trace']).name} on {data['board']} "
                        f"(capacity {data['capacity_mwh']:g} mWh; optimum {note}, {bound['seconds']:.2f} s)")
    for column, justify in (("run", "left"), ("delivered acc./request", "right"), ("x opt", "right"),
                            ("energy mWh", "right"), ("x opt", "right"), ("battery life", "right"),
                            ("x opt", "right"), ("left %", "right"), ("misses", "right"),
                            ("switches", "right")):
        table.add_column(column, justify=justify, no_wrap=column == "run")
    for row in data["rows"]:
        r = row["ratio_to_optimum"]
        life = (f"{row['battery_life_s'] / 3600:.2f} h" if row["battery_ran_dry"] else "whole trace")
        style = "bold" if row["kind"] in ("chosen", "optimum") else None
        table.add_row(row["name"], f"{row['delivered_per_request']:.4f}", _fmt_ratio(r["delivered"]),
                      f"{row['energy_mwh']:.4g}", _fmt_ratio(r["energy_mwh"]), life,
                      _fmt_ratio(r["battery_life_s"]), f"{row['battery_left_pct']:.1f}",
                      f"{row['deadline_misses']}", f"{row['switches']}", style=style)
    Console().print(table)


def plot_png(data: dict) -> bytes:
    """One figure: each run's ratio to the optimum for delivered accuracy, energy and battery life."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = data["rows"]
    names = [row["name"] for row in rows]
    shown = (("delivered", "delivered accuracy"), ("energy_mwh", "energy"), ("battery_life_s", "battery life"))
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(13, 0.38 * len(rows) + 1.8), dpi=110, sharey=True)
    for ax, (key, label) in zip(axes, shown):
        values = [row["ratio_to_optimum"][key] for row in rows]
        colors = ["tab:orange" if row["kind"] == "chosen" else "tab:green" if row["kind"] == "optimum"
                  else "tab:blue" if row["kind"] == "policy" else "0.6" for row in rows]
        ax.barh(y, [math.nan if v is None else v for v in values], color=colors)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{label} / optimum", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    ax = axes[-1]
    ax.barh(y - 0.2, [row["deadline_misses"] for row in rows], height=0.4, color="tab:red", label="misses")
    ax.barh(y + 0.2, [row["switches"] for row in rows], height=0.4, color="tab:purple", label="switches")
    ax.set_title("steps", fontsize=9)
    ax.legend(fontsize=7)
    axes[0].set_yticks(y, names, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(f"{Path(data['trace']).name} on {data['board']}: each run against the offline optimum", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write(out_dir: str | Path, data: dict) -> dict[str, Path]:
    from lcs.simulate.output import _json_safe

    out = Path(out_dir)
    rendered = {COMPARE_JSON: (json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n").encode(),
                COMPARE_PNG: plot_png(data)}
    for name, blob in rendered.items():
        atomic.write_bytes(out / name, blob)
    return {name: out / name for name in rendered}


class Densest:
    """The replay of a device that always runs its densest level, beside a run on the same trace and battery, fed
    as it goes: `add` a step record (`runner.iter_replay`) or `add_chunk` a `batch.ChunkReplay`."""

    def __init__(self) -> None:
        self.summary, self.level = Summary(), None

    def add(self, record: StepRecord) -> None:
        self.summary.add(record)
        self.level = self.level or (record.label if record.state == "run" else None)

    def add_chunk(self, chunk) -> None:
        self.summary.add_chunk(chunk)
        ran = chunk.position[chunk.state == 0]
        self.level = self.level or (chunk.levels[ran[0]].label if len(ran) else None)

    def saving(self, policy_summary: dict) -> dict:
        """What the run (`policy_summary`: its headline numbers) saved against this one."""
        other = self.summary.result()
        energy = policy_summary["energy_mwh"], other["energy_mwh"]
        left = policy_summary["battery_left_pct"], other["battery_left_pct"]
        served = policy_summary["answers"], other["answers"]
        return {"densest_level": self.level,
                "energy_mwh": {"policy": energy[0], "densest": energy[1], "saved": energy[1] - energy[0]},
                "battery_left_pct": {"policy": left[0], "densest": left[1], "gained": left[0] - left[1]},
                "answers": {"policy": served[0], "densest": served[1], "more": served[0] - served[1]}}


def saving_vs_densest(steps, model: CostModel, policy_summary: dict, *, capacity_mwh: float) -> dict:
    """What the run saved against a device that always runs its densest level on the same trace and battery.
    `steps`: the trace's steps (streamed); `policy_summary`: the run's own headline numbers."""
    densest = Densest()
    for record in iter_replay(steps, model, make_policy("fixed"), capacity_mwh=capacity_mwh):
        densest.add(record)
    return densest.saving(policy_summary)
