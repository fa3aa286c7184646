"""`plan`: a receding-horizon policy that prices energy by what the battery has left to give.

Each step it knows the step's own budget, load and battery (the `Observation`) and forecasts the
rest from the recent past:

- the battery trend `r` (% per second) the rest of the system imposes: an exponential average, time
  constant `trend_s`, of each step's battery change with the policy's own use added back;
- budget, load and step length: the last `window` steps, taken as a sample of the steps to come.

Planning. A price `lam` on energy turns every step into `argmax_i (reward_i - lam * need_i)` over the
levels that fit the budget and the deadline (reward: accuracy x answers in the step; need: battery %;
idle scores 0, so a level that would miss its deadline is never run). Over the forecast sample that
rule has an answer rate rho(lam) (delivered accuracy per second) and a drain p(lam) (% per second).
Running it, the battery lasts `T(lam) = b / (p(lam) - r)` (forever when the trend pays for it), so
over the horizon it delivers `rho(lam) * min(H, T(lam))`, H = `horizon_s` (rolling) or, when the
mission's end is known, `until_s` minus the step's time. The policy keeps the price with the
largest forecast delivery among 0 and a geometric ladder of `prices` values spanning the levels' own
accuracy-per-energy ratios, re-planned every `replan` steps, and applies it to the current step.
With plenty of battery the price is 0 and the choice is greedy's (less the late answers); as the
battery would run dry inside the horizon the price rises and cheaper levels buy a longer life.

Cost per step on a device: the choice is one multiply-add and a compare per level (about 10
instructions a level on a Cortex-M4 with FPU); a re-plan evaluates window x levels x (prices + 1)
multiply-adds (60 x 7 x 25 ~ 10^4, about 10^5 instructions), which `replan` spreads over steps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lcs.errors import ConfigError
from lcs.simulate.model import MJ_PER_MWH, Option
from lcs.simulate.policies import BUDGET_TOLERANCE, Observation, Policy, register


def _need_pct(option: Option, dt_s: float, capacity_mwh: float) -> float:
    return option.power_mw * dt_s / MJ_PER_MWH / capacity_mwh * 100.0


def _rewards(obs_options, budget: float, dt: float, deadline_ms: float) -> np.ndarray:
    return np.array([o.level.accuracy * o.rate_hz * dt
                     if o.power_mw <= budget * (1 + BUDGET_TOLERANCE) and o.latency_ms <= deadline_ms else 0.0
                     for o in obs_options])


@register
@dataclass
class Plan(Policy):
    name: ClassVar[str] = "plan"
    horizon_s: float = 86400.0  # how far ahead the battery must last (a rolling horizon)
    until_s: float = -1.0  # when known: the trace time the mission ends (next recharge); replaces horizon_s
    window: int = 60  # recent steps taken as the forecast of budget and load
    trend_s: float = 1800.0  # time constant of the battery-trend average
    replan: int = 1  # steps between re-plans of the price
    prices: int = 24  # rungs of the price ladder

    def __post_init__(self) -> None:
        self.horizon_s, self.trend_s, self.until_s = float(self.horizon_s), float(self.trend_s), float(self.until_s)
        self.window, self.replan, self.prices = int(self.window), int(self.replan), int(self.prices)
        if not self.horizon_s > 0 or not self.trend_s > 0:
            raise ConfigError(f"plan: horizon_s and trend_s must be positive, got {self.horizon_s:g}, {self.trend_s:g}")
        if self.window < 1 or self.replan < 1 or self.prices < 1:
            raise ConfigError("plan: window, replan and prices must be at least 1")
        self._history = deque(maxlen=self.window)  # (rewards per level, needs per level, dt) of recent steps
        self._trend: float | None = None
        self._last: tuple[float, float, float] | None = None  # battery, own need, dt of the previous step
        self._price = 0.0
        self._since = 0

    def _observe_trend(self, obs: Observation) -> None:
        if self._last is not None:
            battery, used, dt = self._last
            change = (obs.battery_pct - battery + used) / dt
            if self._trend is None:
                self._trend = change
            else:
                a = 1.0 - math.exp(-dt / self.trend_s)
                self._trend += a * (change - self._trend)

    def _plan(self, battery: float, horizon: float) -> float:
        rewards = np.array([h[0] for h in self._history])  # S x L
        needs = np.array([h[1] for h in self._history])
        seconds = float(sum(h[2] for h in self._history))
        useful = rewards > 0
        if not useful.any():
            return 0.0
        ratio = rewards[useful] / np.maximum(needs[useful], 1e-300)
        lo, hi = float(ratio.min()), float(ratio.max())
        ladder = np.concatenate([[0.0], np.geomspace(lo / 4, hi * 4, self.prices)])
        score = rewards[None, :, :] - ladder[:, None, None] * needs[None, :, :]  # P x S x L
        score = np.where(useful[None], score, -np.inf)
        pick = np.argmax(score, axis=2)
        run = np.take_along_axis(score, pick[..., None], axis=2)[..., 0] > 0
        got = np.where(run, np.take_along_axis(np.broadcast_to(rewards, score.shape), pick[..., None], 2)[..., 0], 0)
        used = np.where(run, np.take_along_axis(np.broadcast_to(needs, score.shape), pick[..., None], 2)[..., 0], 0)
        rho, drain = got.sum(axis=1) / seconds, used.sum(axis=1) / seconds  # per second, per price
        net = drain - (self._trend or 0.0)
        with np.errstate(divide="ignore"):
            life = np.where(net > 0, battery / np.where(net > 0, net, 1.0), np.inf)
        delivered = rho * np.minimum(horizon, life)
        best = np.flatnonzero(delivered >= delivered.max() * (1 - 1e-12))
        return float(ladder[best[0]])  # the lowest price among the best

    def choose(self, obs: Observation) -> Option | None:
        capacity = obs.capacity_mwh or 3700.0
        self._observe_trend(obs)
        rewards = _rewards(obs.options, obs.power_budget_mw, obs.dt_s, obs.deadline_ms)
        needs = np.array([_need_pct(o, obs.dt_s, capacity) for o in obs.options])
        self._history.append((rewards, needs, obs.dt_s))
        if self._since % self.replan == 0:
            horizon = self.horizon_s if self.until_s < 0 else max(self.until_s - obs.t_s, obs.dt_s)
            self._price = self._plan(obs.battery_pct, horizon)
        self._since += 1
        score = np.where(rewards > 0, rewards - self._price * needs, -np.inf)
        i = int(np.argmax(score))
        choice = obs.options[i] if score[i] > 0 else None
        self._last = (obs.battery_pct, needs[i] if choice is not None else 0.0, obs.dt_s)
        return choice
