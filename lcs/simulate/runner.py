"""The replay loop: per trace step, ask the policy for a level, have an executor run it, keep the books.

Executors are the seam between the model and hardware. `ModelExecutor` (model-only mode) runs
nothing and reports the cost model's numbers. The hardware-in-the-loop executor
(`lcs.simulate.hardware.DeviceExecutor`) implements the same two methods, sending set-level when
the level changes and one inference per running step to a device (`lcs.device`), as fast as the
device answers (not paced to the trace's clock), and returns the device's own timing and output;
the runner records them beside the model's expectation. An executor may also offer `report()`, a
dict merged into the summary. Decisions, deadline misses and energy always come from the cost model, so the
two modes are comparable step for step (the device does not see the trace's simulated CPU load).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from lcs.errors import LcsError
from lcs.simulate.model import CostModel, Option, battery_step
from lcs.simulate.policies import Observation, Policy
from lcs.simulate.trace import Trace


class PolicyError(LcsError):
    """A policy returned something that is not one of the step's options."""


@dataclass(frozen=True)
class Execution:
    """What the executor saw when it ran one step's level."""

    device_latency_ms: float | None = None  # measured on the device (None in model-only mode)
    output: str | None = None  # e.g. the predicted class, for the timeline


class Executor(Protocol):
    source: str  # "model" or e.g. "device:socket://..."

    def set_level(self, option: Option) -> None:
        """Make `option.level` the running level (called only when it changes)."""

    def infer(self, option: Option) -> Execution:
        """Run one inference at the running level."""


class ModelExecutor:
    """Model-only mode: nothing runs, the cost model's numbers stand."""

    source = "model"

    def set_level(self, option: Option) -> None:
        pass

    def infer(self, option: Option) -> Execution:
        return Execution()


@dataclass
class StepRecord:
    """One row of the timeline."""

    step: int
    t_s: float
    dt_s: float
    trace_battery_pct: float
    battery_pct: float  # simulated, at the start of the step
    cpu_load: float
    power_budget_mw: float
    deadline_ms: float
    state: str  # "run" | "idle" (policy chose none) | "empty" (battery empty)
    level: int | None = None
    alpha: float | None = None
    label: str = ""
    accuracy: float | None = None
    latency_ms: float | None = None
    deadline_miss: bool = False
    over_budget: bool = False
    power_mw: float = 0.0
    energy_mj: float = 0.0
    answers: float = 0.0  # requests answered during the step (fractional: a rate times a duration)
    served_fraction: float = 0.0  # share of the step the battery could power
    battery_end_pct: float = 0.0
    switched: bool = False
    device_latency_ms: float | None = None
    output: str | None = None


@dataclass
class Replay:
    records: list[StepRecord]
    policy: str
    source: str
    extra: dict = field(default_factory=dict)


def replay(trace: Trace, model: CostModel, policy: Policy, *, capacity_mwh: float,
           executor: Executor | None = None) -> Replay:
    """Run the whole trace through `policy`; returns one record per trace row."""
    if not (math.isfinite(capacity_mwh) and capacity_mwh > 0):
        raise LcsError(f"battery capacity must be a positive number of mWh, got {capacity_mwh!r}")
    executor = executor or ModelExecutor()
    deadline = model.workload.deadline_ms
    durations = trace.durations()
    n = len(trace)
    battery = trace.battery_pct[0]
    running: Option | None = None  # last level set on the device; idle steps keep it loaded
    previous: int | None = None  # position in the options of the previous step's level (None: idle)
    records: list[StepRecord] = []
    for k in range(n):
        dt = durations[k]
        options = model.options(trace.cpu_load[k])
        record = StepRecord(step=k, t_s=trace.t_s[k], dt_s=dt, trace_battery_pct=trace.battery_pct[k],
                            battery_pct=battery, cpu_load=trace.cpu_load[k],
                            power_budget_mw=trace.power_budget_mw[k], deadline_ms=deadline, state="empty")
        choice, position = None, None
        if battery > 0:
            current = None if previous is None else options[previous]
            obs = Observation(step=k, t_s=trace.t_s[k], dt_s=dt, battery_pct=battery, cpu_load=trace.cpu_load[k],
                              power_budget_mw=trace.power_budget_mw[k], deadline_ms=deadline, current=current,
                              options=options, capacity_mwh=capacity_mwh)
            choice = policy.choose(obs)
            position = next((i for i, o in enumerate(options) if o is choice), None)
            if choice is not None and position is None:
                raise PolicyError(f"policy {policy.name} returned {choice!r} at step {k}; "
                                  f"it must return one of obs.options or None")
            record.state = "idle" if choice is None else "run"
        environment = trace.battery_pct[k + 1] - trace.battery_pct[k] if k + 1 < n else 0.0
        energy = choice.power_mw * dt if choice is not None else 0.0
        battery_end, served = battery_step(battery, environment, energy, capacity_mwh)
        if choice is not None and served > 0:
            level = choice.level
            if running is None or running.level.index != level.index:
                record.switched = running is not None
                executor.set_level(choice)
                running = choice
            execution = executor.infer(choice)
            record.level, record.alpha, record.label, record.accuracy = level.index, level.alpha, level.label, level.accuracy
            record.latency_ms = choice.latency_ms
            record.deadline_miss = not choice.meets_deadline
            record.over_budget = choice.power_mw > record.power_budget_mw * (1 + 1e-9)
            record.served_fraction = served
            record.power_mw = choice.power_mw * served
            record.energy_mj = energy * served
            record.answers = choice.rate_hz * dt * served
            record.device_latency_ms, record.output = execution.device_latency_ms, execution.output
            previous = position
        else:
            if choice is not None:  # chosen, but the battery had nothing to give this step
                record.state = "empty"
            previous = None
        record.battery_end_pct = battery_end
        battery = battery_end
        records.append(record)
    return Replay(records=records, policy=policy.name, source=executor.source)


def summarize(result: Replay) -> dict:
    """The headline numbers of a replay (JSON-ready)."""
    records = result.records
    ran = [r for r in records if r.state == "run"]
    answers = sum(r.answers for r in ran)
    energy = sum(r.energy_mj for r in records)
    duration = sum(r.dt_s for r in records)
    level_time: dict[str, float] = {}
    for r in ran:
        level_time[r.label] = level_time.get(r.label, 0.0) + r.dt_s * r.served_fraction
    return {
        "steps": len(records),
        "duration_s": duration,
        "mean_expected_accuracy": (sum(r.accuracy * r.answers for r in ran) / answers) if answers else None,
        "answers": answers,
        "energy_mj": energy,
        "energy_mwh": energy / 3600.0,
        "mean_power_mw": energy / duration if duration else 0.0,
        "deadline_misses": sum(r.deadline_miss for r in ran),
        "over_budget_steps": sum(r.over_budget for r in ran),
        "switches": sum(r.switched for r in records),
        "run_steps": len(ran),
        "idle_steps": sum(r.state == "idle" for r in records),
        "empty_steps": sum(r.state == "empty" for r in records),
        "battery_start_pct": records[0].battery_pct,
        "battery_left_pct": records[-1].battery_end_pct,
        "battery_min_pct": min(min(r.battery_pct, r.battery_end_pct) for r in records),
        "time_per_level_s": level_time,
        **_device_latency(ran),
    }


def _device_latency(ran: list[StepRecord]) -> dict:
    measured = sorted(r.device_latency_ms for r in ran if r.device_latency_ms is not None)
    if not measured:
        return {}
    return {"device_latency_ms_mean": sum(measured) / len(measured),
            "device_latency_ms_max": measured[-1]}
