"""The offline optimum: the best schedule of levels (and idle steps) for a whole trace, known in advance.

What is maximised: the *delivered accuracy*, the sum over requests of the accuracy of the level that
answered them; a request answered late (latency over the deadline), answered while the workload
broke the step's power budget, or not answered at all (idle, battery empty, a level slower than the
period) counts 0. The model is exactly `lcs.simulate.model` as `runner.replay` applies it.

The battery as a deficit. Call `T_k` the trace's own battery at row k (what the rest of the system
leaves) and `D_k = T_k - b_k` what the workload has taken (`b_k`: the simulated battery). The
simulated battery never exceeds the trace's (it starts equal and only loses the workload's energy),
so the clamp at 100 % never acts and one step is

    D_{k+1} = min(T_{k+1}, D_k + n)        n: the step's energy need in % of capacity
    served  = 0 if D_k >= T_k (empty) else min(1, (T_{k+1} - D_k) / n)

Dynamic programming over a grid of D (N + 1 points, step h over [0, D_top], where D_top is the
smaller of the trace's highest battery and the energy of the costliest allowed level at every step).
Actions that need more than another allowed one and earn no more are dropped first, and rows of the
grid a step cannot reach are skipped.

- The schedule: a value function interpolated between grid points picks a level per step (and
  `block_upper_bound` proposes a second schedule; the better is kept). The schedule is replayed
  exactly (`runner.replay`): what it delivers is a true lower bound on the optimum.
- The upper bound U, the smallest of three: the sum of every step's best level; a second value
  function that rounds the next deficit *down* to the grid (rewards fall and transitions rise with D,
  so by induction it never undervalues a state; rounding gains at most h per step, so it is used
  when steps cross grid cells); and `block_upper_bound`, which relaxes the battery within blocks of
  steps and rounds once per block, for traces whose steps each need far less than a cell.

The optimum lies between the replayed schedule and U: the *stated bound*. `bound()` reports U and
the relative gap of the schedule to it (every run writes it into compare.json). When the per-step best
level never runs the battery dry, that schedule is optimal, the gap is 0 and no DP runs.

Measured (2-core host shared with other work, host_profile.json levels): battery_discharge.csv with a
300 mWh battery (601 steps, the battery binds): 1.3 s, gap 0.14 % at 16385 points; with 100 mWh the
per-step bound leaves 2.8 % and the block bound (the smallest over three block lengths) brings it to
1.4 % (7 s in all). 10^5 one-minute steps, a battery binding over 69 days: 55 s (35 s the
per-step DP at 1501 points, 20 s the block bound), gap 0.76 %.

Cost: O(K * N * A) for K steps, A = levels + 1 actions, numpy-vectorised over the grid and actions
(one Python iteration per step); memory K * (N + 1) * 2 bytes for the decisions. The default grid is
sized so that K * N * A stays near 1.2e9 (at most 16384 points, at least 256). The block bound costs
about N_b^2 element operations (N_b = 16384 points, 8192 when steps cross cells); it runs only when the
per-step bound leaves a gap above 0.5 %.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lcs.simulate.model import MJ_PER_MWH, CostModel, option_table
from lcs.simulate.policies import BUDGET_TOLERANCE, Observation, Policy
from lcs.simulate.trace import Trace

MAX_GRID, MIN_GRID, WORK = 16384, 256, 1.2e9
BLOCK_BOUND_WHEN = 0.005  # relative gap of the per-step bound above which the block bound is computed too


@dataclass(frozen=True)
class StepCosts:
    """Per step k and level i (arrays K x L), in the runner's own terms."""

    dt_s: np.ndarray  # K
    trace_pct: np.ndarray  # K + 1: T_0..T_{K-1}, and T_K = T_{K-1} (the last step has no change)
    reward: np.ndarray  # K x L: accuracy x answers, 0 where not allowed
    need_pct: np.ndarray  # K x L: battery % the level takes over the whole step
    allowed: np.ndarray  # K x L: within budget and on time


def step_costs(trace: Trace, model: CostModel, capacity_mwh: float) -> StepCosts:
    """Every level's reward and energy at every step, with the numbers `CostModel.options` gives."""
    budget = np.asarray(trace.power_budget_mw, dtype=float)
    dt = np.asarray(trace.durations(), dtype=float)
    accuracy = np.asarray([lv.accuracy for lv in model.profile.levels], dtype=float)
    table = option_table(model, trace.cpu_load)
    affordable = table.power_mw <= budget[:, None] * (1 + BUDGET_TOLERANCE)
    allowed = table.meets_deadline & affordable
    reward = np.where(allowed, accuracy[None, :] * table.rate_hz * dt[:, None], 0.0)
    need = table.power_mw * dt[:, None] / MJ_PER_MWH / capacity_mwh * 100.0
    battery = np.asarray(trace.battery_pct, dtype=float)
    return StepCosts(dt_s=dt, trace_pct=np.append(battery, battery[-1]), reward=reward, need_pct=need,
                     allowed=allowed)


@dataclass
class Optimum:
    schedule: list[int | None]  # per step: the position of the level in the profile, or None (idle)
    estimate: float  # the interpolating DP's value of the schedule (the replay gives the true one)
    upper: float  # no schedule delivers more
    exact: bool  # the per-step best never empties the battery: that schedule is optimal
    grid_points: int  # 0 when no DP was needed
    grid_step_pct: float
    seconds: float

    def bound(self, achieved: float) -> dict:
        gap = 0.0 if self.upper <= 0 else max(0.0, (self.upper - achieved) / self.upper)
        return {"upper_bound": self.upper, "dp_estimate": self.estimate, "relative_gap": gap,
                "exact": self.exact, "grid_points": self.grid_points, "grid_step_pct": self.grid_step_pct,
                "seconds": self.seconds}


def _feasible_without_rationing(costs: StepCosts, choice: np.ndarray) -> bool:
    """Does running `choice` (level position or -1) at every step keep the battery serving fully?"""
    T = costs.trace_pct
    rows = np.arange(len(choice))
    need = np.where(choice >= 0, costs.need_pct[rows, np.maximum(choice, 0)], 0.0)
    # cumulative deficit without caps (it never hits a cap if every step is fully served)
    cumulative = np.concatenate([[0.0], np.cumsum(need)])
    running = choice >= 0
    ok_start = cumulative[:-1] < T[:-1]
    ok_end = cumulative[1:] <= T[1:]
    return bool(np.all(~running | (ok_start & ok_end)))


def solve(trace: Trace, model: CostModel, capacity_mwh: float, grid_points: int | None = None) -> Optimum:
    """The schedule that maximises delivered accuracy over the whole trace (see the module's docstring)."""
    start = time.perf_counter()
    costs = step_costs(trace, model, capacity_mwh)
    K, L = costs.reward.shape
    best = np.where(costs.allowed.any(axis=1), np.argmax(np.where(costs.allowed, costs.reward, -1.0), axis=1), -1)
    best = np.where((best >= 0) & (costs.reward[np.arange(K), np.maximum(best, 0)] > 0), best, -1)
    per_step_max = float(costs.reward[np.arange(K), np.maximum(best, 0)][best >= 0].sum())
    if _feasible_without_rationing(costs, best):
        return Optimum(schedule=[int(i) if i >= 0 else None for i in best], estimate=per_step_max,
                       upper=per_step_max, exact=True, grid_points=0, grid_step_pct=0.0,
                       seconds=time.perf_counter() - start)

    # actions: 0 = idle, 1..L = level position + 1; a level not allowed is never worth its energy
    need = np.concatenate([np.zeros((K, 1)), costs.need_pct], axis=1)
    reward = np.concatenate([np.zeros((K, 1)), costs.reward], axis=1)
    allowed = np.concatenate([np.ones((K, 1), bool), costs.allowed & (costs.reward > 0)], axis=1)
    A = L + 1
    # an action that needs at least as much as another allowed one and earns no more is never better
    # (served and the next deficit are monotone in the need): drop it, most steps keep 3 or 4 actions
    worse = np.zeros_like(allowed)
    for i in range(A):
        for j in range(A):
            if i != j:
                beats = allowed[:, i] & (need[:, i] <= need[:, j]) & (reward[:, i] >= reward[:, j])
                tie = (need[:, i] == need[:, j]) & (reward[:, i] == reward[:, j])
                worse[:, j] |= beats & (~tie | (i < j))
    useful = allowed & ~worse
    top_need = np.where(useful, need, 0.0).max(axis=1)
    d_top = float(min(costs.trace_pct.max(), top_need.sum()))
    n = grid_points or int(np.clip(WORK / (K * A), MIN_GRID, MAX_GRID))
    h = d_top / n if d_top > 0 else 1.0
    # the deficit at step k is at most what the costliest levels take before it: rows above are never reached
    reach = np.minimum(n, np.ceil(np.concatenate([[0.0], np.cumsum(top_need)])[:K] / h + 1e-6).astype(int) + 1)
    grid = np.arange(n + 1) * h  # deficits
    T = costs.trace_pct
    v_mid = np.zeros(n + 1)  # value to go, interpolated between grid points: it picks the schedule
    v_up = np.zeros(n + 1)  # next deficit rounded down: optimistic, an upper bound
    decisions = np.zeros((K, n + 1), dtype=np.int16)
    # when steps need much less than a cell, rounding down makes them nearly free: that bound is then
    # left to `block_upper_bound`
    per_step_bound = float(top_need.mean()) >= h / 4
    for k in range(K - 1, -1, -1):
        acts = np.flatnonzero(useful[k])
        m = reach[k] + 1
        g = grid[:m]
        nk, rk = need[k, acts], reward[k, acts]
        after = np.minimum(T[k + 1], g[:, None] + nk[None, :]) / h  # m x actions, in grid steps
        room = np.clip(T[k + 1] - g, 0.0, None)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            served = np.where(nk[None, :] > 0, np.minimum(1.0, room / nk[None, :]), 1.0)
        gain = rk[None, :] * np.where((g < T[k])[:, None], served, 0.0)
        below = np.minimum(np.floor(after).astype(np.int64), n)
        frac = np.clip(after - below, 0.0, 1.0)
        above = np.minimum(below + 1, n)
        q_mid = gain + v_mid[below] * (1 - frac) + v_mid[above] * frac
        choice = np.argmax(q_mid, axis=1)
        decisions[k, :m] = acts[choice]
        v_mid, v_up = v_mid.copy(), v_up.copy()  # rows above m keep the next step's values: never read
        v_mid[:m] = q_mid[np.arange(m), choice]
        if per_step_bound:
            v_up[:m] = (gain + v_up[below]).max(axis=1)
    # follow the decisions from D_0 = 0, tracking the deficit exactly and reading the nearest grid point
    schedule: list[int | None] = []
    deficit = 0.0
    for k in range(K):
        a = int(decisions[k, min(int(round(deficit / h)), n)])
        schedule.append(a - 1 if a else None)
        deficit = min(T[k + 1], deficit + need[k, a])
    upper = min(float(v_up[0]) if per_step_bound else np.inf, per_step_max)
    achieved = _delivered(schedule, need, reward, T)
    if upper > achieved * (1 + BLOCK_BOUND_WHEN):  # the per-step bound is loose: try the block relaxation
        # each block length gives a valid bound and they vary with where blocks fall: keep the smallest
        block_grid = 8192 if per_step_bound else 16384
        lengths = set()
        for cells in ((128, 256, 512) if K <= 20000 else (256,)):
            length = block_steps(need, useful, T, block_grid, cells)
            if length in lengths:  # on a short trace several cell counts give the same blocks: the same bound again
                continue
            lengths.add(length)
            block_bound, priced = block_upper_bound(need, reward, useful, T, cells_per_block=cells,
                                                    grid_points=block_grid)
            upper = min(upper, block_bound)
            value = _delivered(priced, need, reward, T)
            if value > achieved:  # its priced schedule, when better
                schedule, achieved = priced, value
    return Optimum(schedule=schedule, estimate=float(v_mid[0]), upper=upper, exact=False,
                   grid_points=n + 1, grid_step_pct=h, seconds=time.perf_counter() - start)


def _delivered(schedule: list[int | None], need: np.ndarray, reward: np.ndarray, T: np.ndarray) -> float:
    """What `schedule` delivers, with the runner's battery arithmetic in deficit form (actions: position + 1)."""
    total, deficit = 0.0, 0.0
    for k, position in enumerate(schedule):
        a = 0 if position is None else position + 1
        if a and deficit < T[k] and need[k, a] > 0:
            total += reward[k, a] * min(1.0, max(T[k + 1] - deficit, 0.0) / need[k, a])
        elif a and deficit < T[k]:
            total += reward[k, a]
        deficit = min(T[k + 1], deficit + need[k, a])
    return total


def _hull_segments(need: np.ndarray, reward: np.ndarray) -> list[tuple[float, float]]:
    """(energy, reward) of the segments of the upper concave hull of a step's options, from idle (0, 0)."""
    segments, n0, r0 = [], 0.0, 0.0
    points = [(n, r) for n, r in zip(need, reward) if r > 0]
    while True:
        ahead = [(r - r0) / (n - n0) if n > n0 else np.inf for n, r in points if r > r0]
        if not ahead:
            return segments
        best = [(n, r) for n, r in points if r > r0][int(np.argmax(ahead))]
        if best[0] <= n0:  # free reward (no energy): take it without a segment's slope
            r0 = best[1]
            segments.append((0.0, r0))
            continue
        segments.append((best[0] - n0, best[1] - r0))
        n0, r0 = best


def block_steps(need: np.ndarray, useful: np.ndarray, T: np.ndarray, grid_points: int, cells_per_block: int) -> int:
    """Steps per block of `block_upper_bound`: about `cells_per_block` grid cells of the costliest energy."""
    top = np.where(useful, need, 0.0).max(axis=1)
    h = float(min(T.max(), top.sum())) / grid_points
    return int(np.clip(round(cells_per_block * h / max(float(top.mean()), 1e-300)), 1, len(need)))


def block_upper_bound(need: np.ndarray, reward: np.ndarray, useful: np.ndarray, T: np.ndarray,
                      grid_points: int = 16384, cells_per_block: int = 256) -> tuple[float, list[int | None]]:
    """An upper bound on delivered accuracy that stays tight when each step needs far less than a grid cell.

    Steps are grouped in blocks of about `cells_per_block` cells of the costliest energy. Within a block
    the bound lets each step mix its levels fractionally (the upper concave hull of its (energy, reward)
    options) and checks the battery only at the block's end, through two facts true of every schedule:
    with E the energy the block uses, b the battery at its start and P the sum of the trace's rises in
    it, E <= b + P, and the deficit at its end is at least max(min(lowest trace value in the block,
    D + E), T_end - T_start + D - P + E). Energy is rounded up to whole cells in the reward and down in
    the deficit, and the deficit down to the grid: each block can only gain, so the result is a bound.
    """
    K = len(need)
    top = np.where(useful, need, 0.0).max(axis=1)
    d_top = float(min(T.max(), top.sum()))
    if d_top <= 0:
        return float(np.where(useful, reward, 0.0).max(axis=1).sum()), [None] * K
    n = grid_points
    h = d_top / n
    grid = np.arange(n + 1) * h
    m = block_steps(need, useful, T, grid_points, cells_per_block)
    bounds = list(range(0, K, m)) + [K]
    v = np.zeros(n + 1)
    blocks = []  # per block, from the last: (start, end, hull prices, cumulative energy, chosen cells)
    for s, e in reversed(list(zip(bounds[:-1], bounds[1:]))):
        segments = [seg for k in range(s, e) for seg in _hull_segments(need[k][useful[k]], reward[k][useful[k]])]
        free = sum(r for dn, r in segments if dn <= 0)
        paid = sorted(((r / dn, dn, r) for dn, r in segments if dn > 0), reverse=True)
        cum_e = np.concatenate([[0.0], np.cumsum([dn for _, dn, _ in paid])])
        cum_r = np.concatenate([[0.0], np.cumsum([r for _, _, r in paid])]) + free
        t_start, t_end, t_low = T[s], T[e], T[s + 1:e + 1].min()
        rises = float(np.clip(np.diff(T[s:e + 1]), 0.0, None).sum())
        e_max = np.maximum(t_start - grid + rises, 0.0)  # E <= battery at the start + the rises
        reward_at_max = np.interp(e_max, cum_e, cum_r)  # where the battery caps E below t h
        best = np.full(n + 1, -np.inf)
        best_t = np.zeros(n + 1, dtype=np.int64)
        cells = np.arange(int(np.ceil(cum_e[-1] / h)) + 1)
        for chunk in np.array_split(cells, max(1, len(cells) * (n + 1) // 4_000_000 + 1)):
            t = chunk[:, None]
            e_low = np.maximum(0.0, (t - 1) * h)  # E in (e_low, t h]: reward below R(t h), deficit above e_low
            gain = np.where(e_max[None, :] >= t * h, np.interp(chunk * h, cum_e, cum_r)[:, None], reward_at_max[None, :])
            after = np.maximum(np.minimum(t_low, grid[None, :] + e_low), t_end - t_start + grid[None, :] - rises + e_low)
            index = np.minimum((np.maximum(after, 0.0) / h).astype(np.int64), n)
            q = np.where(e_low <= e_max[None, :], gain + v[index], -np.inf)
            top_q = q.max(axis=0)
            best_t = np.where(top_q > best, chunk[np.argmax(q, axis=0)], best_t)
            best = np.maximum(best, top_q)
        v = best
        blocks.append((s, e, np.array([p for p, _, _ in paid]), cum_e, best_t))
    # a schedule from the blocks' decisions: at each block's start (the deficit followed exactly) take the
    # energy the bound chose there, and price it at the hull's slope at that energy: every step then runs
    # the option that earns most above that price
    schedule: list[int | None] = []
    deficit = 0.0
    for s, e, prices, cum_e, best_t in reversed(blocks):
        energy = best_t[min(int(deficit / h), n)] * h
        i = int(np.searchsorted(cum_e, energy, side="left"))
        price = 0.0 if i >= len(cum_e) or not len(prices) else (np.inf if i == 0 else float(prices[i - 1]))
        for k in range(s, e):
            score = np.where(useful[k], reward[k] - (price * need[k] if np.isfinite(price) else
                                                     np.where(need[k] > 0, np.inf, 0.0)), -np.inf)
            score[0] = 0.0
            a = int(np.argmax(score))
            schedule.append(a - 1 if a else None)
            deficit = min(T[k + 1], deficit + need[k, a])
    return float(v[0]), schedule


class Scheduled(Policy):
    """Replays a fixed schedule (level positions per step) through the ordinary runner."""

    name = "optimum"

    def __init__(self, schedule: list[int | None]) -> None:
        self.schedule = schedule

    def choose(self, obs: Observation):
        position = self.schedule[obs.step]
        return None if position is None else obs.options[position]
