"""Traces in the device's own units: rescale a trace's power budget and CPU load to the simulated board.

A trace recorded on one device (a 10 W edge box, a solar node) carries that device's budgets and
load. Two options map them onto the board being simulated (`lcs simulate --budget-scale/--load-scale`):

`--budget-scale`
- `FACTOR` (a positive number): every budget times FACTOR;
- `from=P` : the trace came from a device whose dynamic power range (active minus idle) is P mW; the
  factor is the board's own range over P (`targets/<board>.json` power_mw), so a budget keeps its
  share of the device's power;
- `levels`: the trace's highest finite budget becomes the costliest level's unloaded power at the
  period, so the budget spans the levels' own range (the budget binds where it did on the source).
Every mode multiplies by one factor: the budget's energy over the trace, as a share of the device's
power range, is conserved (`sum(budget' * dt) = factor * sum(budget * dt)`); unlimited stays unlimited.

`--load-scale`
- `FACTOR`: every load times FACTOR, capped at 1;
- `from=CORESxHZ` (e.g. `from=4x1.5e9`): the trace's load was measured on CORES cores at HZ; the same
  competing work (load x cores x clock cycles per second) is placed on the board: factor =
  CORES * HZ / (board cores * board clock), capped at 1 (the summary counts capped rows).

The load model the simulator applies (`lcs.simulate.model`): latency = L / clamp(cores * (1 - load),
0.05, 1); `load_model()` states it for the board.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from lcs.errors import ConfigError
from lcs.simulate.model import MIN_CPU_SHARE, BoardPower, CostModel
from lcs.simulate.trace import Trace


def _positive(text: str, option: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} {what}: expected a positive number, got {text!r}")
    return value


def budget_factor(spec: str, top_budget, model: CostModel) -> tuple[float, str]:
    """`top_budget()`: the trace's highest finite budget (asked only for `levels`: it reads the trace)."""
    option = "--budget-scale"
    spec = spec.strip()
    if spec == "levels":
        top = top_budget()
        if top <= 0:
            raise ConfigError(f"{option} levels: the trace has no positive finite power_budget_mw to scale")
        costliest = max(o.power_mw for o in model.options(0.0))
        return costliest / top, f"highest budget {top:g} mW -> costliest level {costliest:.4g} mW"
    if spec.startswith("from="):
        source = _positive(spec[5:], option, "from=P (the recording device's dynamic power in mW)")
        board = model.board.active_mw - model.board.idle_mw
        if board <= 0:
            raise ConfigError(f"{option} {spec}: board {model.board.name} has no dynamic power range (active = idle)")
        return board / source, f"source range {source:g} mW -> board {model.board.name} range {board:g} mW"
    return _positive(spec, option, "FACTOR, from=P or levels"), "factor given"


def load_factor(spec: str, board: BoardPower) -> tuple[float, str]:
    option = "--load-scale"
    spec = spec.strip()
    if spec.startswith("from="):
        cores_text, sep, hz_text = spec[5:].partition("x")
        if not sep:
            raise ConfigError(f"{option} {spec}: expected from=CORESxHZ, e.g. from=4x1.5e9")
        cores = _positive(cores_text, option, "CORES")
        hz = _positive(hz_text, option, "HZ")
        if board.clock_hz <= 0:
            raise ConfigError(f"{option} {spec}: board {board.name} has no clock_hz")
        return (cores * hz / (board.cores * board.clock_hz),
                f"{cores:g} cores x {hz:g} Hz -> {board.cores} x {board.clock_hz:g} Hz on {board.name}")
    return _positive(spec, option, "FACTOR or from=CORESxHZ"), "factor given"


def load_model(board: BoardPower) -> str:
    free = "any load above 0 slows it" if board.cores == 1 else \
        f"a load up to {1 - 1 / board.cores:.3g} leaves a core free"
    return (f"latency = unloaded latency / clamp({board.cores} x (1 - cpu_load), {MIN_CPU_SHARE:g}, 1) on "
            f"{board.name} ({board.cores} core{'s' if board.cores > 1 else ''}): {free}; at load 1 it is "
            f"{1 / MIN_CPU_SHARE:g}x slower")


@dataclass
class Scaling:
    """The factors to apply to a trace's steps, and what the summary says about them."""

    budget: float = 1.0
    load: float = 1.0
    applied: dict = field(default_factory=dict)

    def steps(self, steps):
        """`Trace.steps()` / `TraceStream.steps()` tuples with budget and load rescaled (streams as it goes)."""
        if self.budget == 1.0 and self.load == 1.0:
            yield from steps
            return
        for line, t_s, dt, battery, load, budget, change in steps:
            yield line, t_s, dt, battery, min(1.0, load * self.load), budget * self.budget, change

    def chunks(self, chunks):
        """`TraceStream.step_chunks()` rescaled as `steps` rescales each row (the same float operations)."""
        if self.budget == 1.0 and self.load == 1.0:
            yield from chunks
            return
        for c in chunks:
            yield dataclasses.replace(c, cpu_load=np.minimum(1.0, c.cpu_load * self.load),
                                      power_budget_mw=c.power_budget_mw * self.budget)

    def trace(self, trace: Trace) -> Trace:
        """A whole in-memory trace, rescaled."""
        return dataclasses.replace(trace, power_budget_mw=tuple(b * self.budget for b in trace.power_budget_mw),
                                   cpu_load=tuple(min(1.0, x * self.load) for x in trace.cpu_load))


def make_scaling(trace, model: CostModel, budget: str | None, load: str | None) -> Scaling:
    """Checks the options and works out the factors; `trace` is a `Trace` or a `TraceStream` (read at most once
    more, as a stream, when `levels` needs the highest budget or a load scale needs its capped rows counted)."""
    scaling = Scaling(applied={"load_model": load_model(model.board)})

    chunked = hasattr(trace, "step_chunks")  # a stream: read it as arrays (a long trace), else row by row

    def top_budget() -> float:
        if chunked:
            tops = [float(c.power_budget_mw[np.isfinite(c.power_budget_mw)].max(initial=0.0))
                    for c in trace.step_chunks()]
            return max(tops, default=0.0)
        return max((step[5] for step in trace.steps() if math.isfinite(step[5])), default=0.0)

    if budget is not None:
        factor, how = budget_factor(budget, top_budget, model)
        scaling.budget = factor
        scaling.applied["budget"] = {"spec": budget, "factor": factor, "how": how}
    if load is not None:
        factor, how = load_factor(load, model.board)
        scaling.load = factor
        capped = (sum(int((c.cpu_load * factor > 1.0).sum()) for c in trace.step_chunks()) if chunked else
                  sum(step[4] * factor > 1.0 for step in trace.steps()))
        scaling.applied["load"] = {"spec": load, "factor": factor, "how": how, "capped_rows": capped}
    return scaling


def rescale(trace: Trace, model: CostModel, budget: str | None, load: str | None) -> tuple[Trace, dict]:
    """A whole trace in the board's units, and what was done (for the summary)."""
    scaling = make_scaling(trace, model, budget, load)
    return scaling.trace(trace), scaling.applied
