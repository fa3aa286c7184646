"""What running one level costs on one board: latency under load, power, energy, battery drain.

The workload: one inference request arrives every `period_ms` (default 100 ms, a 10 Hz sensor)
and each answer is due within `deadline_ms` (default: the period).

Latency under load. A level's profile latency `L` (or `cycles / clock_hz`) is measured on the
otherwise idle board, with inference on one core. Competing work takes `cpu_load` of the board's
`cores`, so `cores * (1 - cpu_load)` cores are free; inference gets at most one of them:

    share   = clamp(cores * (1 - cpu_load), MIN_CPU_SHARE, 1)
    latency = L / share

A single-core MCU at 50 % load therefore runs at half speed; a two-core board is not slowed until
more than one core's worth of load arrives. `MIN_CPU_SHARE` stands for the scheduler's fairness:
even a saturated board gives a runnable task a slice, so latency stays finite.

Energy. The board file's `power_mw` gives `idle` (all cores idle) and `active` (all cores busy);
one busy core adds `(active - idle) / cores`. An inference keeps one core busy for `L` of CPU time
(load stretches wall time, not CPU time), so it costs

    energy_per_inference_mj = (active - idle) / cores * L_ms / 1000

The device answers `1000 / max(period_ms, latency_ms)` requests a second (it cannot start the next
before the last is done), so the level's average power, compared with `power_budget_mw`, is

    power_mw = energy_per_inference_mj * 1000 / max(period_ms, latency_ms)

Idle power is not charged to the workload: it is part of what the trace's `battery_pct` already
shows. Battery: per step, the trace's own change of `battery_pct` is applied and the workload's
energy subtracted, `energy_mj / 3600 / capacity_mwh * 100` percent, clamped to [0, 100]; a step
can only use the charge that is there (the rest of the step goes unserved), and an empty battery
serves nothing until the trace charges it again. Default capacity: 3700 mWh (1000 mAh at 3.7 V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lcs.errors import ConfigError
from lcs.simulate.profile import LevelSpec, Profile, ProfileError

DEFAULT_PERIOD_MS = 100.0
DEFAULT_CAPACITY_MWH = 3700.0
MIN_CPU_SHARE = 0.05
MJ_PER_MWH = 3600.0


@dataclass(frozen=True)
class BoardPower:
    """The board figures the model needs (from `targets/<board>.json`)."""

    name: str
    cores: int
    clock_hz: float
    idle_mw: float
    active_mw: float

    @classmethod
    def from_board(cls, board) -> "BoardPower":
        power = board.power_mw if isinstance(board.power_mw, dict) else {}
        idle, active = power.get("idle"), power.get("active")
        for key, value in (("idle", idle), ("active", active)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"board {board.name}: power_mw.{key} must be a non-negative number, got {value!r}")
        if active < idle:
            raise ConfigError(f"board {board.name}: power_mw.active ({active:g}) is below power_mw.idle ({idle:g})")
        if not isinstance(board.cores, int) or board.cores < 1:
            raise ConfigError(f"board {board.name}: cores must be a positive integer, got {board.cores!r}")
        return cls(name=board.name, cores=board.cores, clock_hz=float(board.clock_hz or 0.0),
                   idle_mw=float(idle), active_mw=float(active))

    @property
    def core_mw(self) -> float:
        """Power one busy core adds to the idle board."""
        return (self.active_mw - self.idle_mw) / self.cores


@dataclass(frozen=True)
class Workload:
    period_ms: float = DEFAULT_PERIOD_MS
    deadline_ms: float = DEFAULT_PERIOD_MS

    def __post_init__(self) -> None:
        for name in ("period_ms", "deadline_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Option:
    """One level, costed for the current step's load."""

    level: LevelSpec
    latency_ms: float  # wall-clock latency under the step's CPU load
    power_mw: float  # average power the workload draws running this level
    energy_per_inference_mj: float
    rate_hz: float  # answers per second
    meets_deadline: bool


def cpu_share(cpu_load: float, cores: int) -> float:
    return min(1.0, max(MIN_CPU_SHARE, cores * (1.0 - cpu_load)))


class CostModel:
    """Turns a profile plus a board into per-step options; cached by load (traces repeat values)."""

    def __init__(self, profile: Profile, board: BoardPower, workload: Workload) -> None:
        self.profile, self.board, self.workload = profile, board, workload
        self.base_latency_ms = tuple(self._base_latency_ms(level) for level in profile.levels)
        self.energy_mj = tuple(board.core_mw * ms / 1000.0 for ms in self.base_latency_ms)
        self._cache: dict[float, tuple[Option, ...]] = {}

    def _base_latency_ms(self, level: LevelSpec) -> float:
        if level.latency_ms is not None:
            return level.latency_ms
        if self.board.clock_hz <= 0:
            raise ProfileError(f"{self.profile.source}: level {level.index} gives only cycles and board "
                               f"{self.board.name} has no clock_hz to turn them into time")
        return level.cycles / self.board.clock_hz * 1000.0

    def options(self, cpu_load: float) -> tuple[Option, ...]:
        cached = self._cache.get(cpu_load)
        if cached is not None:
            return cached
        share = cpu_share(cpu_load, self.board.cores)
        period, deadline = self.workload.period_ms, self.workload.deadline_ms
        options = []
        for level, base, energy in zip(self.profile.levels, self.base_latency_ms, self.energy_mj):
            latency = base / share
            rate = 1000.0 / max(period, latency)
            options.append(Option(level=level, latency_ms=latency, power_mw=energy * rate,
                                  energy_per_inference_mj=energy, rate_hz=rate, meets_deadline=latency <= deadline))
        result = tuple(options)
        if len(self._cache) < 4096:
            self._cache[cpu_load] = result
        return result


@dataclass(frozen=True)
class OptionTable:
    """`CostModel.options` for many steps at once: arrays K steps x L levels (profile order), the same numbers."""

    latency_ms: np.ndarray
    power_mw: np.ndarray
    rate_hz: np.ndarray
    meets_deadline: np.ndarray  # bool


def option_table(model: CostModel, cpu_load) -> OptionTable:
    """Every level costed at every load of `cpu_load` (an array), with the operations `options` does per step, in
    the same order, so each number is the same float."""
    load = np.asarray(cpu_load, dtype=float)
    share = np.minimum(1.0, np.maximum(MIN_CPU_SHARE, model.board.cores * (1.0 - load)))
    latency = np.asarray(model.base_latency_ms, dtype=float)[None, :] / share[:, None]
    rate = 1000.0 / np.maximum(model.workload.period_ms, latency)
    return OptionTable(latency_ms=latency, power_mw=np.asarray(model.energy_mj, dtype=float)[None, :] * rate,
                       rate_hz=rate, meets_deadline=latency <= model.workload.deadline_ms)


def battery_step(battery_pct: float, environment_delta_pct: float, energy_mj: float,
                 capacity_mwh: float) -> tuple[float, float]:
    """Apply one step to the battery; returns (battery after, fraction of the requested energy served)."""
    available = battery_pct + environment_delta_pct
    needed = energy_mj / MJ_PER_MWH / capacity_mwh * 100.0
    if needed <= 0:
        return min(100.0, max(0.0, available)), 1.0
    used = min(needed, max(available, 0.0))
    return min(100.0, max(0.0, available - used)), used / needed
