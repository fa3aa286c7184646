"""The replay loop: per trace step, ask the policy for a level, have an executor run it, keep the books.

Executors are the seam between the model and hardware. `ModelExecutor` (model-only mode) runs
nothing and reports the cost model's numbers. The hardware-in-the-loop executor
(`lcs.simulate.hardware.DeviceExecutor`) implements the same two methods, sending set-level when
the level changes and one inference per running step to a device (`lcs.device`), as fast as the
device answers (not paced to the trace's clock), and returns the device's own timing and output;
the runner records them beside the model's expectation. An executor may also offer `report()`, a
dict merged into the summary. Decisions, deadline misses and energy always come from the cost model, so the
two modes are comparable step for step (the device does not see the trace's simulated CPU load).

This per-step loop is the reference; `lcs.simulate.batch` replays long model-only traces in chunks with the same
results (`Summary.add_chunk` keeps the books for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

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
        return _NOTHING


_NOTHING = Execution()  # frozen: one shared instance, not one per step of a long trace


@dataclass(slots=True)  # slots: one is made per trace row
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
    """Run a whole (in-memory) trace through `policy`; returns one record per trace row."""
    executor = executor or ModelExecutor()
    records = list(iter_replay(trace.steps(), model, policy, capacity_mwh=capacity_mwh, executor=executor))
    return Replay(records=records, policy=policy.name, source=executor.source)


def iter_replay(steps: Iterable[tuple], model: CostModel, policy: Policy, *, capacity_mwh: float,
                executor: Executor | None = None) -> Iterator[StepRecord]:
    """The replay as a stream: one record per step of `steps` (`Trace.steps()` or `TraceStream.steps()`), made
    when the consumer asks for it, so a trace of any length runs in constant memory."""
    if not (math.isfinite(capacity_mwh) and capacity_mwh > 0):
        raise LcsError(f"battery capacity must be a positive number of mWh, got {capacity_mwh!r}")
    executor = executor or ModelExecutor()
    deadline = model.workload.deadline_ms
    battery = None
    running: Option | None = None  # last level set on the device; idle steps keep it loaded
    previous: int | None = None  # position in the options of the previous step's level (None: idle)
    for k, (_, t_s, dt, trace_battery, cpu_load, budget, environment) in enumerate(steps):
        if battery is None:
            battery = trace_battery
        options = model.options(cpu_load)
        record = StepRecord(step=k, t_s=t_s, dt_s=dt, trace_battery_pct=trace_battery, battery_pct=battery,
                            cpu_load=cpu_load, power_budget_mw=budget, deadline_ms=deadline, state="empty")
        choice, position = None, None
        if battery > 0:
            current = None if previous is None else options[previous]
            obs = Observation(step=k, t_s=t_s, dt_s=dt, battery_pct=battery, cpu_load=cpu_load,
                              power_budget_mw=budget, deadline_ms=deadline, current=current, options=options,
                              capacity_mwh=capacity_mwh)
            choice = policy.choose(obs)
            position = None
            if choice is not None:
                try:  # tuple.index tries identity first; the check below refuses a look-alike
                    position = options.index(choice)
                except ValueError:
                    pass
                if position is not None and options[position] is not choice:
                    position = None
            if choice is not None and position is None:
                raise PolicyError(f"policy {policy.name} returned {choice!r} at step {k}; "
                                  f"it must return one of obs.options or None")
            record.state = "idle" if choice is None else "run"
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
        yield record


class Summary:
    """The headline numbers, accumulated record by record (constant memory)."""

    def __init__(self) -> None:
        self.steps = self.run_steps = self.idle_steps = self.empty_steps = 0
        self.deadline_misses = self.over_budget_steps = self.switches = 0
        self.answers = self.weighted_accuracy = self.energy = self.duration = 0.0
        self.battery_start = self.battery_left = None
        self.battery_min = math.inf
        self.level_time: dict[str, float] = {}
        self.device_count, self.device_sum, self.device_max = 0, 0.0, -math.inf

    def add(self, r: StepRecord) -> None:
        if self.battery_start is None:
            self.battery_start = r.battery_pct
        self.steps += 1
        self.energy += r.energy_mj
        self.duration += r.dt_s
        self.switches += r.switched
        self.battery_left = r.battery_end_pct
        self.battery_min = min(self.battery_min, r.battery_pct, r.battery_end_pct)
        if r.state == "run":
            self.run_steps += 1
            self.answers += r.answers
            self.weighted_accuracy += r.accuracy * r.answers
            self.deadline_misses += r.deadline_miss
            self.over_budget_steps += r.over_budget
            self.level_time[r.label] = self.level_time.get(r.label, 0.0) + r.dt_s * r.served_fraction
            if r.device_latency_ms is not None:
                self.device_count += 1
                self.device_sum += r.device_latency_ms
                self.device_max = max(self.device_max, r.device_latency_ms)
        elif r.state == "idle":
            self.idle_steps += 1
        else:
            self.empty_steps += 1

    def add_chunk(self, c) -> None:
        """`add` for every record of a `batch.ChunkReplay` at once: the same counts, and the same sums added in
        the same order (a running sum, np.cumsum, adds one value at a time as `add` does)."""
        import numpy as np

        if not len(c):
            return
        if self.battery_start is None:
            self.battery_start = c.battery_pct[0]
        self.steps += len(c)
        self.energy = _running_sum(self.energy, c.energy_mj)
        self.duration = _running_sum(self.duration, c.steps.dt_s)
        self.switches += int(c.switched.sum())
        self.battery_left = c.battery_end_pct[-1]
        self.battery_min = min(self.battery_min, min(c.battery_pct), min(c.battery_end_pct))
        run = c.state == 0
        ran = c.position[run]
        self.run_steps += len(ran)
        self.idle_steps += int((c.state == 1).sum())
        self.empty_steps += int((c.state == 2).sum())
        answers = c.answers[run]
        accuracy = np.array([level.accuracy for level in c.levels], dtype=float)
        self.answers = _running_sum(self.answers, answers)
        self.weighted_accuracy = _running_sum(self.weighted_accuracy, accuracy[ran] * answers)
        self.deadline_misses += int(c.deadline_miss[run].sum())
        self.over_budget_steps += int(c.over_budget[run].sum())
        # time per label, labels in the order they first ran (the dict's key order is the summary's)
        labels = [level.label for level in c.levels]
        label_of = np.array([labels.index(label) for label in labels])[ran]
        seconds = (c.steps.dt_s * c.served_fraction)[run]
        for first in sorted(np.unique(label_of, return_index=True)[1].tolist()):
            label = labels[label_of[first]]
            self.level_time[label] = _running_sum(self.level_time.get(label, 0.0), seconds[label_of == label_of[first]])

    def result(self) -> dict:
        return {
            "steps": self.steps,
            "duration_s": self.duration,
            "mean_expected_accuracy": (self.weighted_accuracy / self.answers) if self.answers else None,
            "answers": self.answers,
            "energy_mj": self.energy,
            "energy_mwh": self.energy / 3600.0,
            "mean_power_mw": self.energy / self.duration if self.duration else 0.0,
            "deadline_misses": self.deadline_misses,
            "over_budget_steps": self.over_budget_steps,
            "switches": self.switches,
            "run_steps": self.run_steps,
            "idle_steps": self.idle_steps,
            "empty_steps": self.empty_steps,
            "battery_start_pct": self.battery_start,
            "battery_left_pct": self.battery_left,
            "battery_min_pct": self.battery_min,
            "time_per_level_s": self.level_time,
            **({"device_latency_ms_mean": self.device_sum / self.device_count,
                "device_latency_ms_max": self.device_max} if self.device_count else {}),
        }


def _running_sum(start: float, values) -> float:
    """`start + v0 + v1 + ...` added left to right, as a loop of `+=` does (np.cumsum accumulates in order)."""
    import numpy as np

    if not len(values):
        return start
    return float(np.cumsum(np.concatenate([[start], values]))[-1])


def summarize(result: Replay) -> dict:
    """The headline numbers of a replay (JSON-ready)."""
    summary = Summary()
    for record in result.records:
        summary.add(record)
    return summary.result()
