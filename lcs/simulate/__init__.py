"""`lcs simulate`: replay a power/load trace and see which level a policy runs, step by step.

    trace.csv ──► trace.py (validate) ─┐
    artifact / profile.json ──► profile.py ─┤
    targets/<board>.json ──► model.py (latency, power, energy) ──► runner.py (policy per step,
                                                   executor runs it, books kept) ──► output.py

- `trace.py`: the trace CSV format (columns, units, defaults) and its validation.
- `profile.py`: levels with accuracy and latency, from an artifact manifest or a JSON profile.
- `model.py`: the documented latency/power/energy/battery model.
- `policies.py`: the policy API (`Policy.choose`, `register`) and the built-in policies.
- `runner.py`: the replay loop and the executor seam (model-only, or a device's own answers).
- `batch.py`: the same replay in chunks of rows, for long model-only traces (a policy's batch rule, arrays, one
  tight battery loop): bit-for-bit the per-step replay's results at a fraction of the cost.
- `hardware.py`: hardware in the loop (`DeviceExecutor`) over any client with hello / set_level / infer: lcs
  firmware over serial (`--device`, `--sim`) or a CPU build on a Linux board over TVM RPC (`--rpc`, `--tracker
  --key`), opened by `lcs.transport.board.open_board` as `lcs deploy` opens them.
- `output.py`: timeline.csv, summary.json, timeline.png and the printed table.
- `planner.py`: the receding-horizon policy `plan`.
- `optimum.py`: the offline optimum (the best schedule knowing the whole trace) and its bound.
- `compare.py`: `--compare` (every policy, every fixed level and the optimum side by side) and the saving
  against always running the densest level.
- `scaling.py`: traces in the board's own units (`--budget-scale`, `--load-scale`) and the load model stated per board.

This package imports neither torch nor TVM (TVM only when a run uses --rpc/--tracker).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from lcs.errors import ConfigError
from lcs.simulate.model import DEFAULT_CAPACITY_MWH, DEFAULT_PERIOD_MS, BoardPower, CostModel, Workload
from lcs.simulate.profile import Profile, ProfileError, load_profile_artifact, load_profile_json
from lcs.simulate.runner import Executor, Replay, Summary, iter_replay
from lcs.simulate.trace import load_trace, open_trace

__all__ = ["SimulationResult", "simulate", "load_levels", "resolve_board", "load_trace", "DEFAULT_CAPACITY_MWH",
           "DEFAULT_PERIOD_MS"]


@dataclass
class SimulationResult:
    replay: Replay
    summary: dict
    profile: Profile
    files: dict[str, Path]
    comparison: dict | None = None  # with compare=True: `lcs.simulate.compare`'s table as JSON


def load_levels(*, artifact: str | Path | None = None, profile: str | Path | None = None,
                board: str | None = None, accuracy: str | Path | None = None) -> Profile:
    if (artifact is None) == (profile is None):
        raise ConfigError("give the levels as exactly one of --artifact FILE or --profile FILE.json")
    if artifact is not None:
        return load_profile_artifact(artifact, board, accuracy)
    return load_profile_json(profile, accuracy)


def resolve_board(name: str | None, levels: Profile) -> BoardPower:
    """The board to simulate: --board, else the one the profile was measured on; they must agree."""
    import targets

    if name is None and levels.target is None:
        raise ConfigError(f"{levels.source} names no board; pass --board (one of {', '.join(targets.names())})")
    if name is not None and levels.target is not None and name != levels.target:
        raise ProfileError(f"{levels.source} was measured on {levels.target}, not on --board {name}; "
                           f"its latencies would not hold there")
    from lcs.config import load_board

    return BoardPower.from_board(load_board(name or levels.target))


def simulate(trace_path: str | Path, *, artifact: str | Path | None = None, profile: str | Path | None = None,
             board: str | None = None, policy: str = "greedy", policy_options: Mapping[str, str] | None = None,
             deadline_ms: float | None = None, period_ms: float | None = None,
             capacity_mwh: float = DEFAULT_CAPACITY_MWH, out_dir: str | Path | None = None,
             device: str | None = None, sim: str | None = None, rpc: str | None = None,
             tracker: str | None = None, key: str | None = None, executor: Executor | None = None,
             accuracy: str | Path | None = None, budget_scale: str | None = None, load_scale: str | None = None,
             compare: bool = False, per_step: bool = False) -> SimulationResult:
    """Replay `trace_path` with `policy`; write timeline.csv, summary.json and timeline.png to `out_dir`.

    Levels, board, policy and the trace's header are validated before anything runs; the trace's rows are
    streamed and validated as they are replayed (constant memory), the timeline written as it goes and renamed
    into place only when the whole run succeeds. One request arrives every `period_ms` (default 100 ms); its
    deadline defaults to the period. `SimulationResult.replay.records` holds the records only without `out_dir`.
    A model-only run of a policy with a batch rule replays the trace in chunks (`lcs.simulate.batch`: the same
    results, many times faster); `per_step=True` forces the per-step replay (the reference the tests compare to).
    """
    from lcs.simulate.output import StreamingOutputs
    from lcs.simulate.policies import make_policy

    trace = open_trace(trace_path)
    levels = load_levels(artifact=artifact, profile=profile, board=board, accuracy=accuracy)
    board_power = resolve_board(board, levels)
    period = period_ms if period_ms is not None else DEFAULT_PERIOD_MS
    workload = Workload(period_ms=period, deadline_ms=deadline_ms if deadline_ms is not None else period)
    chosen = make_policy(policy, policy_options)
    if not (isinstance(capacity_mwh, (int, float)) and capacity_mwh > 0 and capacity_mwh != float("inf")):
        raise ConfigError(f"--capacity-mwh must be a positive number, got {capacity_mwh!r}")
    model = CostModel(levels, board_power, workload)
    from lcs.simulate import batch
    from lcs.simulate import compare as cmp
    from lcs.simulate.scaling import make_scaling

    scaling = make_scaling(trace, model, budget_scale, load_scale)

    from lcs.transport.board import Where, open_board

    # None, or exactly one checked --device / --sim / --rpc / --tracker --key (an executor object counts as one)
    where = Where.from_options(device=device, sim=sim, rpc=rpc, tracker=tracker, key=key, optional=True)
    if where is not None and executor is not None:
        raise ConfigError("give at most one of --device URL, --sim BOARD, --rpc HOST:PORT, "
                          "--tracker HOST:PORT --key K (or an executor)")
    if where is not None and where.remote and artifact is None:
        raise ConfigError(f"{where.option()} runs the CPU build inside an artifact on the board; pass --artifact")
    if where is not None and where.sim is not None and artifact is None:
        raise ConfigError("--sim starts the firmware inside an artifact; pass --artifact")
    if where is not None and where.remote:
        from lcs.transport.rpc import check_key_names_board

        check_key_names_board(where.key, board_power.name, f"the simulation of board {board_power.name!r}")
    if sim is not None and sim != board_power.name:
        raise ConfigError(f"--sim {sim} but the levels are for board {board_power.name}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")

    title = f"{Path(trace.path).name}: policy {chosen.name} on {board_power.name}"
    tally = Summary()
    kept: list = []
    files: dict[str, Path] = {}
    with contextlib.ExitStack() as running:
        outputs = None
        if out_dir is not None:  # first: an --out that cannot be written fails before any board starts
            hardware = where is not None or getattr(executor, "source", "model") != "model"
            outputs = running.enter_context(StreamingOutputs(out_dir, with_device=hardware))
        if where is not None:
            # no RPC session time limit: the replay lasts as long as the trace (it still ends with this process)
            board = running.enter_context(open_board(artifact, where, rpc_options={"session_timeout": 0}))
            executor = device_executor(board, board.connection, board_power, levels, artifact)
        source = executor.source if executor is not None else "model"
        rule = None if per_step or executor is not None else batch.batch_rule(chosen, model)
        densest = cmp.Densest()
        if rule is not None:
            # the run and the always-densest replay side by side, from one reading of the trace
            ours, theirs = itertools.tee(scaling.chunks(trace.step_chunks()))
            fixed = make_policy("fixed").batch(model)
            for chunk, dense in zip(batch.replay_chunks(ours, model, rule, capacity_mwh=capacity_mwh),
                                    batch.replay_chunks(theirs, model, fixed, capacity_mwh=capacity_mwh)):
                tally.add_chunk(chunk)
                densest.add_chunk(dense)
                if outputs is not None:
                    outputs.add_chunk(chunk)
                else:
                    kept.extend(chunk.records())
        else:
            for record in iter_replay(scaling.steps(trace.steps()), model, chosen, capacity_mwh=capacity_mwh,
                                      executor=executor):
                tally.add(record)
                if outputs is not None:
                    outputs.add(record)
                else:
                    kept.append(record)
        result = Replay(records=kept, policy=chosen.name, source=source)
        summary = {
            "trace": str(trace.path), "levels_from": levels.source, "board": board_power.name,
            "policy": chosen.name, "source": result.source, "deadline_ms": workload.deadline_ms,
            "period_ms": workload.period_ms, "capacity_mwh": capacity_mwh,
            # what each level costs unloaded at this period: the scale a trace's power_budget_mw must match
            "level_power_mw": {o.level.label: o.power_mw for o in model.options(0.0)},
            **tally.result(), "scaling": scaling.applied,
        }
        summary["vs_densest"] = densest.saving(summary) if rule is not None else cmp.saving_vs_densest(
            scaling.steps(trace.steps()), model, summary, capacity_mwh=capacity_mwh)
        if hasattr(executor, "report"):
            summary.update(executor.report())
        comparison = None
        if compare:  # before the outputs are renamed into place: a failure leaves none of them
            table = cmp.compare(scaling.trace(load_trace(trace.path)), model, policy, policy_options,
                                capacity_mwh=capacity_mwh)
            comparison = cmp.to_json(table, {k: summary[k] for k in ("trace", "levels_from", "board", "policy",
                                                                       "deadline_ms", "period_ms", "capacity_mwh",
                                                                       "scaling")})
        if outputs is not None:
            files = outputs.finish(summary, levels.levels, title)
            if comparison is not None:
                files.update(cmp.write(out_dir, comparison))
            summary["files"] = {name: str(path) for name, path in files.items()}
    return SimulationResult(replay=result, summary=summary, profile=levels, files=files, comparison=comparison)


def device_executor(client, url: str, board: BoardPower, levels: Profile, artifact: str | Path | None):
    """A hardware-in-the-loop executor over an open board (`lcs.transport.board`); sample inputs and reference
    outputs come from the artifact when there is one."""
    from lcs.simulate.hardware import DeviceExecutor

    inputs = reference = None
    if artifact is not None:
        from lcs.artifact import open_artifact

        art = open_artifact(artifact)
        ref = art.reference()
        inputs = [x.reshape(-1).tolist() for x in ref["input"]]
        reference = {lv.index: [y.reshape(-1).tolist() for y in art.expected(ref, lv)] for lv in art.levels
                     if lv.index in {p.index for p in levels.levels}}
    return DeviceExecutor(client, clock_hz=board.clock_hz, level_indices=[lv.index for lv in levels.levels],
                          source=f"device:{url}", inputs=inputs, reference=reference)
