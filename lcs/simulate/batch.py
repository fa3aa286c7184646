"""The replay in chunks of rows: `runner.iter_replay`'s records, as arrays, for long model-only traces.

`runner.iter_replay` builds an observation, calls the policy and makes a record per step (about 10 µs a row).
Here a chunk of the trace (`TraceStream.step_chunks`, ~11k rows) is costed at once (`model.option_table`),
the policy decides through its batch rule (`Policy.batch`: greedy, fixed, battery, hysteresis), and only what
is sequential runs row by row in one tight loop of local variables: the battery (each step's charge depends
on the last), and the decision where it depends on the battery or the past. Everything after the loop is
array arithmetic doing the same float operations as the per-step code in the same order, so the records,
the timeline text (`output.timeline_text`) and the summary (`Summary.add_chunk`) are the same to the bit;
tests/test_simulate_batch.py checks that on every built-in policy. A policy without a batch rule (`plan`, a
user's own), an executor (hardware in the loop) or `--compare` use the per-step replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from lcs.errors import LcsError
from lcs.simulate.model import MJ_PER_MWH, CostModel, option_table
from lcs.simulate.policies import BatchRule, BatchSteps, Policy
from lcs.simulate.runner import StepRecord
from lcs.simulate.trace import StepChunk

STATES = ("run", "idle", "empty")  # ChunkReplay.state codes


@dataclass
class ChunkReplay:
    """One chunk's records as columns (the fields of `StepRecord`); `record(i)` makes row i's record."""

    first_step: int
    steps: StepChunk  # t_s, dt_s, trace battery, cpu_load, budget
    battery_pct: list[float]  # simulated, at the start of each step
    battery_end_pct: list[float]
    state: np.ndarray  # index into STATES
    position: np.ndarray  # option position of the level run (-1: none)
    latency_ms: np.ndarray
    deadline_miss: np.ndarray
    over_budget: np.ndarray
    power_mw: np.ndarray
    energy_mj: np.ndarray
    answers: np.ndarray
    served_fraction: np.ndarray
    switched: np.ndarray
    deadline_ms: float
    levels: tuple  # LevelSpec per option position

    def __len__(self) -> int:
        return len(self.state)

    def record(self, i: int) -> StepRecord:
        s = self.steps
        r = StepRecord(step=self.first_step + i, t_s=float(s.t_s[i]), dt_s=float(s.dt_s[i]),
                       trace_battery_pct=float(s.battery_pct[i]), battery_pct=self.battery_pct[i],
                       cpu_load=float(s.cpu_load[i]), power_budget_mw=float(s.power_budget_mw[i]),
                       deadline_ms=self.deadline_ms, state=STATES[self.state[i]],
                       deadline_miss=bool(self.deadline_miss[i]), over_budget=bool(self.over_budget[i]),
                       power_mw=float(self.power_mw[i]), energy_mj=float(self.energy_mj[i]),
                       answers=float(self.answers[i]), served_fraction=float(self.served_fraction[i]),
                       battery_end_pct=self.battery_end_pct[i], switched=bool(self.switched[i]))
        if self.position[i] >= 0:
            level = self.levels[self.position[i]]
            r.level, r.alpha, r.label, r.accuracy = level.index, level.alpha, level.label, level.accuracy
            r.latency_ms = float(self.latency_ms[i])
        return r

    def records(self) -> Iterator[StepRecord]:
        return (self.record(i) for i in range(len(self)))


def batch_rule(policy: Policy, model: CostModel) -> BatchRule | None:
    """The policy's batch rule, or None when it has none (the per-step replay then runs). A subclass that redefines
    `choose` but inherits `batch` (say a user's variant of greedy) gets None: the inherited rule decides as the
    parent's `choose` does, not as the subclass's."""
    mro = type(policy).__mro__
    defines = {name: next(c for c in mro if name in c.__dict__) for name in ("batch", "choose")}
    if not issubclass(defines["batch"], defines["choose"]):
        return None
    return policy.batch(model)


def replay_chunks(chunks: Iterable[StepChunk], model: CostModel, rule: BatchRule, *,
                  capacity_mwh: float) -> Iterator[ChunkReplay]:
    """`runner.iter_replay` over `chunks` with a batch rule: one `ChunkReplay` per chunk, in order."""
    if not (np.isfinite(capacity_mwh) and capacity_mwh > 0):
        raise LcsError(f"battery capacity must be a positive number of mWh, got {capacity_mwh!r}")
    levels = model.profile.levels
    level_index = np.array([level.index for level in levels])
    deadline = model.workload.deadline_ms
    battery = None
    previous = -1  # option position the previous step ran (-1: none); what `Observation.current` shows
    running = -1  # level index last set (idle steps keep it loaded)
    first = 0
    for chunk in chunks:
        n = len(chunk)
        if battery is None:
            battery = float(chunk.battery_pct[0])
        table = option_table(model, chunk.cpu_load)
        dt = chunk.dt_s
        # battery % each level would take over the whole step (battery_step's `needed`, the same operations)
        need = table.power_mw * dt[:, None] / MJ_PER_MWH / capacity_mwh * 100.0
        decided = rule(BatchSteps(options=table, power_budget_mw=chunk.power_budget_mw, dt_s=dt))
        if callable(decided):
            starts, ends, served, chosen, battery, previous = _sequential(
                decided, need.ravel().tolist(), need.shape[1], chunk.change.tolist(), battery, previous)
            chosen = np.array(chosen)
        else:
            positions = np.asarray(decided)
            needs = np.where(positions >= 0, need[np.arange(n), np.maximum(positions, 0)], 0.0)
            starts, ends, served, battery = _stateless(needs.tolist(), chunk.change.tolist(), battery)
            chosen = np.where(np.array(starts) > 0, positions, -1)
        served = np.array(served)
        alive = np.array(starts) > 0
        run = (chosen >= 0) & (served > 0)
        state = np.where(run, 0, np.where(alive & (chosen < 0), 1, 2))
        position = np.where(run, chosen, -1)
        rows, at = np.arange(n), np.maximum(position, 0)
        power, rate = table.power_mw[rows, at], table.rate_hz[rows, at]
        # a level switch: a running step whose level differs from the last one run (across idle steps and chunks)
        ran = np.flatnonzero(run)
        now = level_index[position[ran]]
        before = np.concatenate([[running], now[:-1]])
        switched = np.zeros(n, dtype=bool)
        switched[ran] = (before >= 0) & (before != now)
        if len(ran):
            running = int(now[-1])
        yield ChunkReplay(
            first_step=first, steps=chunk, battery_pct=starts, battery_end_pct=ends, state=state, position=position,
            latency_ms=table.latency_ms[rows, at], deadline_miss=run & ~table.meets_deadline[rows, at],
            over_budget=run & (power > chunk.power_budget_mw * (1 + 1e-9)),
            power_mw=np.where(run, power * served, 0.0), energy_mj=np.where(run, power * dt * served, 0.0),
            answers=np.where(run, rate * dt * served, 0.0), served_fraction=np.where(run, served, 0.0),
            switched=switched, deadline_ms=deadline, levels=levels)
        first += n


# The two loops below are `model.battery_step` inlined, with Python's min/max spelled as the comparisons they
# make (min(a, b) is b only if b < a; max(a, b) is b only if b > a), so every float comes out the same.

def _stateless(needs: list, changes: list, battery: float):
    """The battery through a chunk whose choices are known (`needs`: battery % the chosen level takes, 0 idle)."""
    starts, ends, served = [], [], []
    start, end, serve = starts.append, ends.append, served.append
    for needed, change in zip(needs, changes):
        start(battery)
        if not battery > 0:  # an empty battery: the policy is not asked, nothing runs
            needed = 0.0
        available = battery + change
        if needed <= 0:
            battery = available if available > 0.0 else 0.0
            serve(1.0)
        else:
            room = 0.0 if 0.0 > available else available
            used = room if room < needed else needed
            battery = available - used
            battery = battery if battery > 0.0 else 0.0
            serve(used / needed)
        if not battery < 100.0:
            battery = 100.0
        end(battery)
    return starts, ends, served, battery


def _sequential(step, need: list, width: int, changes: list, battery: float, previous: int):
    """The battery and the decision together, for rules whose choice depends on the battery or the past."""
    starts, ends, served, chosen = [], [], [], []
    start, end, serve, choose = starts.append, ends.append, served.append, chosen.append
    for k, change in enumerate(changes):
        start(battery)
        needed, position = 0.0, -1
        if battery > 0:
            position = step(k, battery, previous)
            if position >= 0:
                needed = need[k * width + position]
        choose(position)
        available = battery + change
        if needed <= 0:
            battery = available if available > 0.0 else 0.0
            fraction = 1.0
        else:
            room = 0.0 if 0.0 > available else available
            used = room if room < needed else needed
            battery = available - used
            battery = battery if battery > 0.0 else 0.0
            fraction = used / needed
        if not battery < 100.0:
            battery = 100.0
        serve(fraction)
        end(battery)
        previous = position if position >= 0 and fraction > 0 else -1
    return starts, ends, served, chosen, battery, previous
