"""`plan`: a receding-horizon policy that prices energy by what the battery has left to give.

Each step it knows the step's own budget, load and battery (the `Observation`) and forecasts the
rest from the recent past:

- the battery trend `r` (% per second) the rest of the system imposes (each step's battery change
  with the policy's own use added back): a straight line fitted to the last `trend_s` seconds,
  extrapolated and kept within the range of trends seen so far, which further ahead (time constant
  `trend_s`) reverts to the long-run trend of everything seen (a morning's charge is not taken to
  last all day when a night has been seen);
- budget, load and step length: the last `window` steps, taken as a sample of the steps to come.

Planning. A price `lam` on energy turns every step into `argmax_i (reward_i - lam * need_i)` over the
levels that fit the budget and the deadline (reward: accuracy x answers in the step; need: battery %;
idle scores 0, so a level that would miss its deadline is never run). Over the forecast sample that
rule has an answer rate rho(lam) (delivered accuracy per second) and a drain p(lam) (% per second).
The battery is then stepped over the horizon (`points` steps) under the forecast trend and p(lam);
an empty battery serves only what the trend brings in. The price kept is the one with the largest
forecast delivery among 0 and a geometric ladder of `prices` values spanning the levels' own
accuracy-per-energy ratios; it is re-planned every `replan_s` seconds of trace time and applied to
the current step.
The horizon is `horizon_s` (rolling) or, when the mission's end (the next recharge) is known,
`until_s` minus the step's time. With battery to spare the price is 0 and the choice is greedy's
(less the late answers, which deliver nothing); as the battery would run dry inside the horizon the
price rises and cheaper levels buy a longer life.

Cost on a device: the per-step choice is one multiply-add and a compare per level (about 10
instructions a level on a Cortex-M4 with FPU). A re-plan (every `replan_s` of trace time) scores
window x levels x (prices + 1) candidates and steps points x (prices + 1) battery forecasts: with the defaults 60 x 7 x 25 + 48 x 25,
about 1.2e4 multiply-adds, some 1e5 instructions.
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
    trend_s: float = 3600.0  # the recent past the battery trend (level and slope) is fitted to
    replan_s: float = 60.0  # re-plan the price when this much trace time has passed since the last plan
    prices: int = 24  # rungs of the price ladder
    points: int = 48  # time points of the battery forecast over the horizon

    def __post_init__(self) -> None:
        self.horizon_s, self.trend_s, self.until_s = float(self.horizon_s), float(self.trend_s), float(self.until_s)
        self.window, self.prices, self.points = int(self.window), int(self.prices), int(self.points)
        self.replan_s = float(self.replan_s)
        if not self.horizon_s > 0 or not self.trend_s > 0:
            raise ConfigError(f"plan: horizon_s and trend_s must be positive, got {self.horizon_s:g}, {self.trend_s:g}")
        if self.window < 1 or self.prices < 1 or self.points < 1 or not self.replan_s >= 0:
            raise ConfigError("plan: window, prices and points must be at least 1, replan_s at least 0")
        self._history = deque(maxlen=self.window)  # (rewards per level, needs per level, dt) of recent steps
        self._changes: deque = deque()  # (t, battery change per second the rest of the system made)
        self._seen = (math.inf, -math.inf)  # lowest and highest fitted trend so far
        self._long = (0.0, 0.0)  # battery change and seconds over everything seen: the long-run trend
        self._last: tuple[float, float, float, float] | None = None  # t, battery, own need, dt of the last step
        self._price = 0.0
        self._planned_at = -math.inf

    def _observe_trend(self, obs: Observation) -> None:
        if self._last is not None:
            t, battery, used, dt = self._last
            if battery > 0 and obs.battery_pct > 0:  # at 0 the battery is clamped: the trend is not visible
                change = (obs.battery_pct - battery + used) / dt
                self._changes.append((t, change))
                self._long = (self._long[0] + change * dt, self._long[1] + dt)
        while self._changes and self._changes[0][0] < obs.t_s - self.trend_s:
            self._changes.popleft()

    def _trend(self, now: float) -> tuple[float, float]:
        """(level now, slope) of the rest of the system's battery trend, % per second (per second)."""
        if not self._changes:
            return 0.0, 0.0
        t = np.array([c[0] for c in self._changes])
        r = np.array([c[1] for c in self._changes])
        if len(r) < 3 or t[-1] - t[0] < self.trend_s / 2:
            level, slope = float(r.mean()), 0.0
        else:
            slope, intercept = np.polyfit(t - now, r, 1)
            level, slope = float(intercept), float(slope)
        self._seen = (min(self._seen[0], level), max(self._seen[1], level))
        return level, slope

    def _plan(self, battery: float, horizon: float, now: float) -> float:
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
        # the battery over the horizon under each price: the trend extrapolated linearly, kept within the
        # range of trends seen so far; an empty battery serves what the trend brings in (a fluid model)
        level, slope = self._trend(now)
        step = horizon / self.points
        times = (np.arange(self.points) + 0.5) * step
        trend = np.clip(level + slope * times, min(self._seen[0], level), max(self._seen[1], level))
        if self._long[1] > 0:  # beyond the recent past the forecast reverts to the long-run trend
            weight = np.exp(-times / self.trend_s)
            trend = weight * trend + (1 - weight) * (self._long[0] / self._long[1])
        b = np.full(len(ladder), battery)
        delivered = np.zeros(len(ladder))
        want = drain * step
        per_want = rho * step / np.where(want > 0, want, np.inf)  # delivery per % used
        idle = want <= 0
        for r in trend:
            available = b + r * step
            use = np.minimum(want, np.maximum(available, 0.0))
            delivered += use * per_want
            b = np.minimum(available - use, 100.0)
        delivered = np.where(idle, 0.0, delivered)
        best = np.flatnonzero(delivered >= delivered.max() * (1 - 1e-9))
        return float(ladder[best[0]])  # the lowest price among the best

    def choose(self, obs: Observation) -> Option | None:
        capacity = obs.capacity_mwh or 3700.0
        self._observe_trend(obs)
        rewards = _rewards(obs.options, obs.power_budget_mw, obs.dt_s, obs.deadline_ms)
        needs = np.array([_need_pct(o, obs.dt_s, capacity) for o in obs.options])
        self._history.append((rewards, needs, obs.dt_s))
        if obs.t_s - self._planned_at >= self.replan_s:
            self._planned_at = obs.t_s
            horizon = self.horizon_s if self.until_s < 0 else max(self.until_s - obs.t_s, obs.dt_s)
            self._price = self._plan(obs.battery_pct, horizon, obs.t_s)
        score = np.where(rewards > 0, rewards - self._price * needs, -np.inf)
        # a battery run to 0 serves nothing the next step, even while charging: while the trend charges,
        # run only what this step's charge leaves the battery above 0 for (else wait for the charge)
        trend = self._trend(obs.t_s)[0] if self._changes else 0.0
        if trend > 0:
            score = np.where(needs < obs.battery_pct + trend * obs.dt_s, score, -np.inf)
        i = int(np.argmax(score))
        choice = obs.options[i] if score[i] > 0 else None
        self._last = (obs.t_s, obs.battery_pct, needs[i] if choice is not None else 0.0, obs.dt_s)
        return choice
