"""Level-switching policies: per trace step, pick which level runs (or none).

A policy is a class with one method, `choose(obs) -> Option | None`, registered by name. It sees an
`Observation`: the step's time, battery, load and power budget, the deadline, the level running now,
and every level costed for this step (`Option`: latency under load, power, energy per answer).
Returning `None` leaves the device idle for the step. A policy may keep state (one instance per run).

Parameters are dataclass fields; the CLI sets them with `--policy-option NAME=VALUE`.

A policy may also offer `batch(model)`: the same decisions for a chunk of steps at once (see `BatchRule`), which
long model-only replays use (`lcs.simulate.batch`); the built-in rules are tested to decide exactly as `choose`.
Without it (the default) the replay calls `choose` step by step.

Adding a policy (in your own module, then `lcs simulate --policy yourmodule:Frugal`):

    >>> from dataclasses import dataclass
    >>> from lcs.simulate.policies import Policy, register
    >>> @register
    ... @dataclass
    ... class Frugal(Policy):
    ...     '''The cheapest level that meets the deadline, whatever the budget.'''
    ...     name = "frugal"
    ...     def choose(self, obs):
    ...         on_time = [o for o in obs.options if o.meets_deadline]
    ...         return min(on_time or obs.options, key=lambda o: o.power_mw)
    >>> make_policy("frugal").name
    'frugal'

Built in:
- `greedy`: the most accurate level within the power budget that meets the deadline; if none meets
  the deadline, the fastest level within the budget (late answers beat none); if no level fits
  the budget, idle. Never exceeds the budget.
- `battery`: greedy under a cost ceiling set by battery thresholds (default 50, 20, 5 %): above
  the first, any level; between thresholds, only the cheaper levels (by energy per answer), the
  ceiling stepping down evenly to the cheapest alone; below the last, idle, to save what is left.
- `fixed`: always the level `level` (an index; default -1: the costliest, i.e. the densest), whatever
  the budget or the deadline: the device without a controller.
- `plan`: receding-horizon planning (`lcs.simulate.planner`): forecasts the battery trend, budget
  and load from the recent past and spends energy where it buys the most accuracy over the horizon.
- `hysteresis`: greedy that steps down at once when the running level breaks the budget or the
  deadline, but steps up only after a better level has fitted with `margin` (default 10 %) budget
  headroom for `hold` (default 3) steps in a row: fewer switches on a noisy trace.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np

from lcs.errors import ConfigError
from lcs.simulate.model import CostModel, Option, OptionTable

BUDGET_TOLERANCE = 1e-9  # relative; keeps float noise from turning "exactly at budget" into a breach


@dataclass(frozen=True)
class Observation:
    """What a policy knows at the start of one step."""

    step: int
    t_s: float
    dt_s: float
    battery_pct: float  # simulated state of charge at the start of the step
    cpu_load: float
    power_budget_mw: float
    deadline_ms: float
    current: Option | None  # level running before this step (None: idle or not started)
    options: tuple[Option, ...]  # every level of the profile, costed for this step, by index
    capacity_mwh: float | None = None  # battery capacity, to turn energy into battery percent

    def within_budget(self, option: Option, budget_mw: float | None = None) -> bool:
        budget = self.power_budget_mw if budget_mw is None else budget_mw
        return option.power_mw <= budget * (1 + BUDGET_TOLERANCE)

    def affordable(self, budget_mw: float | None = None) -> list[Option]:
        return [o for o in self.options if self.within_budget(o, budget_mw)]

    def option_for(self, index: int) -> Option:
        for option in self.options:
            if option.level.index == index:
                return option
        raise KeyError(index)


class Policy(abc.ABC):
    """Pick the level for one step. Subclass, set `name`, implement `choose`, decorate with `register`."""

    name: ClassVar[str]

    @abc.abstractmethod
    def choose(self, obs: Observation) -> Option | None:
        """The option to run this step (one of `obs.options`), or None to stay idle."""

    def batch(self, model: CostModel) -> BatchRule | None:
        """Optional: the same decisions as `choose` for many steps at once, for long model-only replays
        (`lcs.simulate.batch`). None (the default): the replay calls `choose` step by step."""
        return None


@dataclass(frozen=True)
class BatchSteps:
    """A chunk of consecutive steps as a batch rule sees them: every level costed at every step (K x L arrays,
    options in profile order, as `Observation.options`), the budgets and step lengths."""

    options: OptionTable
    power_budget_mw: np.ndarray
    dt_s: np.ndarray


# A batch rule maps a chunk to an int array of option positions (-1: idle) when the choice depends on the step
# alone, or to a function (k, battery_pct, previous position or -1) -> position, called in step order exactly
# where `choose` would be (battery above 0), when it depends on the battery or on the past.
BatchRule = Callable[[BatchSteps], "np.ndarray | Callable[[int, float, int], int]"]


def greedy_positions(steps: BatchSteps, accuracy: np.ndarray, order: Sequence[int] | None = None,
                     budget_mw: np.ndarray | None = None) -> np.ndarray:
    """`greedy_choice` at every step of a chunk, as option positions (-1: none): candidates `order` (positions;
    default all, in profile order, which breaks ties as the per-step rule does), budget default the step's."""
    table = steps.options
    limit = (steps.power_budget_mw if budget_mw is None else budget_mw) * (1 + BUDGET_TOLERANCE)
    affordable = table.power_mw <= limit[:, None]
    on_time = affordable & table.meets_deadline
    order = range(table.power_mw.shape[1]) if order is None else order
    k = len(limit)
    # best_accuracy: the first maximum of (accuracy, -power) over the on-time candidates, in candidate order
    best, best_acc, best_cost = np.full(k, -1), np.zeros(k), np.zeros(k)
    # else the first minimum of (latency, -accuracy) over the affordable ones
    quick, quick_lat = np.full(k, -1), np.zeros(k)
    quick_acc = np.zeros(k)
    for i in order:
        cost, acc = -table.power_mw[:, i], accuracy[i]
        better = on_time[:, i] & ((best < 0) | (acc > best_acc) | ((acc == best_acc) & (cost > best_cost)))
        best, best_acc, best_cost = np.where(better, i, best), np.where(better, acc, best_acc), \
            np.where(better, cost, best_cost)
        latency = table.latency_ms[:, i]
        faster = affordable[:, i] & ((quick < 0) | (latency < quick_lat) | ((latency == quick_lat) & (-acc < -quick_acc)))
        quick, quick_lat, quick_acc = np.where(faster, i, quick), np.where(faster, latency, quick_lat), \
            np.where(faster, acc, quick_acc)
    return np.where(best >= 0, best, quick)


def _accuracy(model: CostModel) -> np.ndarray:
    return np.array([level.accuracy for level in model.profile.levels], dtype=float)


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"policy {cls.__name__} needs a class attribute `name`")
    POLICIES[name] = cls
    return cls


def best_accuracy(options: Sequence[Option]) -> Option | None:
    """Most accurate; among equals the cheapest."""
    return max(options, key=lambda o: (o.level.accuracy, -o.power_mw), default=None)


def greedy_choice(obs: Observation, candidates: Sequence[Option] | None = None,
                  budget_mw: float | None = None) -> Option | None:
    """The greedy rule over `candidates` (default: all options) and a budget (default: the step's)."""
    pool = obs.options if candidates is None else candidates
    limit = (obs.power_budget_mw if budget_mw is None else budget_mw) * (1 + BUDGET_TOLERANCE)
    affordable = [o for o in pool if o.power_mw <= limit]
    on_time = [o for o in affordable if o.meets_deadline]
    if on_time:
        return best_accuracy(on_time)
    return min(affordable, key=lambda o: (o.latency_ms, -o.level.accuracy), default=None)


def fits(obs: Observation, option: Option) -> bool:
    return obs.within_budget(option) and option.meets_deadline


@register
@dataclass
class Greedy(Policy):
    name: ClassVar[str] = "greedy"

    def choose(self, obs: Observation) -> Option | None:
        return greedy_choice(obs)

    def batch(self, model: CostModel) -> BatchRule:
        accuracy = _accuracy(model)
        return lambda steps: greedy_positions(steps, accuracy)


@register
@dataclass
class Battery(Policy):
    name: ClassVar[str] = "battery"
    thresholds: tuple[float, ...] = (50.0, 20.0, 5.0)  # percent, from high to low

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if not self.thresholds or any(not 0 <= t <= 100 for t in self.thresholds) or \
                list(self.thresholds) != sorted(self.thresholds, reverse=True) or \
                len(set(self.thresholds)) != len(self.thresholds):
            raise ConfigError(f"battery thresholds must be distinct percentages from high to low, "
                              f"got {','.join(f'{t:g}' for t in self.thresholds) or 'none'}")

    def band(self, battery_pct: float) -> int:
        """0 above the first threshold, len(thresholds) below the last."""
        return sum(battery_pct < t for t in self.thresholds)

    def choose(self, obs: Observation) -> Option | None:
        band, last = self.band(obs.battery_pct), len(self.thresholds)
        if band == last:
            return None
        by_cost = sorted(obs.options, key=lambda o: (o.energy_per_inference_mj, -o.level.accuracy))
        return greedy_choice(obs, by_cost[:self._ceiling(band, len(by_cost)) + 1])

    def _ceiling(self, band: int, levels: int) -> int:
        last = len(self.thresholds)
        return levels - 1 if last == 1 else round((levels - 1) * (1 - band / (last - 1)))

    def batch(self, model: CostModel) -> BatchRule:
        options = model.options(0.0)  # energy per answer does not depend on the load: one order for every step
        by_cost = sorted(range(len(options)),
                         key=lambda i: (options[i].energy_per_inference_mj, -options[i].level.accuracy))
        accuracy, thresholds, last = _accuracy(model), self.thresholds, len(self.thresholds)

        def rule(steps: BatchSteps):
            tables = [greedy_positions(steps, accuracy, by_cost[:self._ceiling(band, len(by_cost)) + 1]).tolist()
                      for band in range(last)]

            def step(k: int, battery_pct: float, previous: int) -> int:
                band = 0  # self.band, inlined: this runs once per trace row (the call costs ~17 % of a replay)
                for t in thresholds:
                    if battery_pct < t:
                        band += 1
                return -1 if band == last else tables[band][k]
            return step
        return rule


@register
@dataclass
class Hysteresis(Policy):
    name: ClassVar[str] = "hysteresis"
    hold: int = 3  # steps a better level must keep fitting before stepping up
    margin: float = 0.1  # budget headroom a better level needs to count

    def __post_init__(self) -> None:
        self.hold = int(self.hold)
        self.margin = float(self.margin)
        if self.hold < 1:
            raise ConfigError(f"hysteresis hold must be at least 1 step, got {self.hold}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"hysteresis margin must be in [0, 1), got {self.margin:g}")
        self._waited = 0

    def choose(self, obs: Observation) -> Option | None:
        current = obs.current
        if current is None or not fits(obs, current):
            self._waited = 0
            return greedy_choice(obs)  # start, or step down at once: the running level breaks a limit
        better = greedy_choice(obs, budget_mw=obs.power_budget_mw * (1 - self.margin))
        if better is None or not better.meets_deadline or better.level.accuracy <= current.level.accuracy:
            self._waited = 0
            return obs.option_for(current.level.index)
        self._waited += 1
        if self._waited < self.hold:
            return obs.option_for(current.level.index)
        self._waited = 0
        return better

    def batch(self, model: CostModel) -> BatchRule:
        accuracy = _accuracy(model)
        acc = accuracy.tolist()

        def rule(steps: BatchSteps):
            table, width = steps.options, len(acc)
            start = greedy_positions(steps, accuracy).tolist()
            better = greedy_positions(steps, accuracy, budget_mw=steps.power_budget_mw * (1 - self.margin)).tolist()
            limit = steps.power_budget_mw * (1 + BUDGET_TOLERANCE)
            fit = ((table.power_mw <= limit[:, None]) & table.meets_deadline).ravel().tolist()
            on_time = table.meets_deadline.ravel().tolist()

            def step(k: int, battery_pct: float, previous: int) -> int:  # `choose`, on positions
                if previous < 0 or not fit[k * width + previous]:
                    self._waited = 0
                    return start[k]
                up = better[k]
                if up < 0 or not on_time[k * width + up] or acc[up] <= acc[previous]:
                    self._waited = 0
                    return previous
                self._waited += 1
                if self._waited < self.hold:
                    return previous
                self._waited = 0
                return up
            return step
        return rule


def densest(options: Sequence[Option]) -> Option:
    """The costliest level (energy per answer), ties to the higher alpha: the one a device runs uncontrolled."""
    return max(options, key=lambda o: (o.energy_per_inference_mj, o.level.alpha))


@register
@dataclass
class Fixed(Policy):
    name: ClassVar[str] = "fixed"
    level: int = -1  # level index; -1: the densest

    def __post_init__(self) -> None:
        self.level = int(self.level)
        if self.level < -1:
            raise ConfigError(f"fixed level must be a level index or -1 (the densest), got {self.level}")

    def choose(self, obs: Observation) -> Option | None:
        if self.level == -1:
            return densest(obs.options)
        try:
            return obs.option_for(self.level)
        except KeyError:
            raise ConfigError(f"fixed level {self.level}: the profile has levels "
                              f"{', '.join(str(o.level.index) for o in obs.options)}") from None

    def batch(self, model: CostModel) -> BatchRule | None:
        options = model.options(0.0)  # the densest by energy per answer, the same at every load
        positions = [i for i, o in enumerate(options) if o.level.index == self.level]
        if self.level == -1:
            positions = [options.index(densest(options))]
        if not positions:
            return None  # choose() per step says which levels there are, at the first step it is asked
        return lambda steps: np.full(len(steps.dt_s), positions[0])


def _convert(value: str, default, field_name: str, policy: str):
    try:
        if isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return value.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if isinstance(default, tuple):
            return tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"policy {policy}: option {field_name}={value!r} is not a valid "
                          f"{type(default).__name__}") from None
    return value


def policy_class(name: str) -> type[Policy]:
    """A registered name, or `module:Class` for a policy defined outside lcs."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"policy {name}: cannot import {module_name} ({exc})") from None
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise ConfigError(f"policy {name}: {module_name} has no Policy subclass {class_name}")
        return cls
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))} "
                          f"or give module:Class")
    return POLICIES[name]


def make_policy(name: str, options: Mapping[str, str] | None = None) -> Policy:
    """A fresh policy instance; `options` are its dataclass fields as strings (from the CLI)."""
    cls = policy_class(name)
    options = dict(options or {})
    if options:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(f"policy {cls.name} has no option {', '.join(unknown)}"
                              f" (options: {', '.join(fields) or 'none'})")
        kwargs = {}
        for key, value in options.items():
            field = fields[key]
            default = field.default if field.default is not dataclasses.MISSING else None
            kwargs[key] = _convert(value, default, key, cls.name)
        return cls(**kwargs)
    return cls()


from lcs.simulate import planner as _planner  # noqa: E402,F401  (registers `plan`)
