"""`lcs build`: checkpoint -> one verified artifact for one board.

    board ──► checkpoint ──► levels ──► torch network per level (graph.py) ──► Relax ──► tvm.compile (+ tuning)
          ──► shared libraries + weights (.npz) + reference I/O ──► verified with lcs.runtime ──► .lcsa (artifact.py)

Strategies (per-level, weights-as-input, alpha-input): strategy.py. Steps, one module each: target.py (board ->
TVM target), export.py (levels -> Relax modules, weights, reference outputs), tune.py (MetaSchedule), compile.py
(kernels + executor -> shared library), verify.py (every level against torch, thread counts), then the artifact
(lcs/artifact.py).

Executor: each module's library holds its kernels and lcs's static executor (cpu_executor.py: C calling the kernels
in a fixed order from a memory plan made here, no Relax VM; ~2.5 us less per call of a small network), or, for a graph
that is not a plain list of kernels, a Relax VM program. The manifest says which ("executor") and why not static.

Verification: every level's compiled output is compared with torch on sample inputs (max abs diff <= 1e-4; 2e-3 for
levels with quantized activations, whose values may round one grid step apart: lcs.artifact.level_atol) through
`lcs.runtime` itself before the artifact is written: on the board over RPC when --rpc/--tracker is given, on this
machine when the board is the host, else with the same Relax module compiled for the host (the qemu test runs the
real cross-compiled libraries).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import targets
from lcs import artifact as art
from lcs.config import load_board
from lcs.errors import ConfigError, DataError
from lcs.evaluate import accuracy_table
from tvm_build import verify as v
from tvm_build.strategy import STRATEGIES, strategy as find_strategy


def build(checkpoint_path: str | Path, target: str, output: str | Path, *, levels: str | None = None,
          strategy: str = "per-level", tune: int = 0, rpc: str | None = None, tracker: str | None = None,
          key: str | None = None, eval_results: str | Path | None = None, progress: bool = True,
          threads: int | None = None, log: Callable[[str], None] | None = None, int8: bool | None = False,
          int8_store: str | None = None) -> dict:
    """Build and write the artifact; returns a summary (the manifest plus timings).

    `threads` (CPU boards): the thread count the model runs on. Kernels are planned and tuned for it and lcs.runtime
    never uses more; without it the kernels are planned for every core and the build records the fastest count it
    can measure. `int8` (MCU and host-sim boards): the levels run the int8 kernels (tvm_build/mcu/build_int8.py);
    False: the fp32 kernels; None (the CLI's default): int8 on MCU and sim boards wherever the model converts, fp32
    elsewhere (the log line and the manifest's firmware.precision say which and why). Linux boards: True builds each
    level as C integer kernels (tvm_build/cpu_int8.py), otherwise fp32 TVM. `int8_store`: the int8 weight
    store, auto (default), derived or ready (build_int8.STORES)."""
    log = log or (lambda msg: None)
    output = Path(output)
    board = load_board(target)
    find_strategy(strategy)  # an unknown name fails before anything is loaded
    if tune < 0:
        raise ConfigError("--tune wants a number of trials >= 0")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads wants a count >= 1, got {threads}")
    if rpc or tracker:  # malformed addresses fail now, not after the compile
        from lcs.transport.rpc import Endpoint

        Endpoint(rpc, tracker, key)
    if board.kind not in ("linux", "mcu", "sim"):
        raise ConfigError(f"target {board.name} is a {board.kind} board; lcs build makes artifacts for linux, mcu "
                          f"and sim boards")
    if int8 is None and int8_store is not None:  # choosing an int8 store asks for int8
        int8 = True
    if int8_store is not None and board.kind not in ("mcu", "sim"):
        raise ConfigError(f"--int8-store chooses a firmware weight store; {board.name} is a {board.kind} board")
    if int8_store is not None and int8 is False:
        raise ConfigError("--int8-store chooses the weight store of an int8 build; drop --fp32")
    if board.kind in ("mcu", "sim"):
        if threads is not None:
            raise ConfigError(f"--threads is for CPU boards; {board.name} runs the model on its one core")
        if strategy != "per-level" or tune:
            raise ConfigError(f"target {board.name} is a {board.kind} board: its firmware has one strategy (all "
                              f"levels, switched on the device) and no MetaSchedule tuning; drop --strategy/--tune")
        ckpt, alphas = _checkpoint_and_levels(checkpoint_path, levels)
        if int8_store == "derived":  # refused before any work
            from tvm_build.mcu.build_int8 import derivable

            why = derivable(ckpt.config)
            if why:
                raise ConfigError(f"--int8-store derived: {why}")
        return _build_mcu(ckpt, board, output, alphas, accuracy_table(ckpt.metrics, eval_results), log, int8,
                          int8_store or "auto")
    if int8:  # linux boards: integer kernels only when asked (the default stays fp32 TVM)
        if tune or strategy != "per-level":
            raise ConfigError("--int8 levels are C integer kernels, one library per level: drop --tune/--strategy")
        if threads is not None and threads > 64:  # firmware_host/src/cpu/q8_pool.h
            raise ConfigError(f"--int8 levels run on at most 64 threads, got --threads {threads}")
        if rpc or tracker:
            raise ConfigError("--int8 builds are verified on this machine; drop --rpc/--tracker")
        from tvm_build import target as tt
        from tvm_build.cpu_int8 import build_cpu_int8

        ckpt, alphas = _checkpoint_and_levels(checkpoint_path, levels)
        return build_cpu_int8(ckpt, board, output, alphas, tt.is_host(board), log, threads)
    from tvm_build import target as tt

    try:
        import tvm  # noqa: F401
    except ImportError:
        raise tt.ToolchainError("Apache TVM is not installed: pip install 'lcs[tvm]' (apache-tvm==0.27.0.post1)") \
            from None
    tt.check_cross_compiler(board)
    if tune and not (tt.is_host(board) or rpc or tracker):
        raise ConfigError(f"tuning for {board.name} needs the board: give --tracker host:port --key K "
                          f"(timings on this machine say nothing about a {board.cpu})")
    if tune and rpc:
        raise ConfigError("remote tuning goes through TVM's tracker (MetaSchedule's RPCRunner): use --tracker "
                          "host:port --key K; --rpc host:port is enough for verification and timing")

    ckpt, alphas = _checkpoint_and_levels(checkpoint_path, levels)
    find_strategy(strategy).check(ckpt.config.subspace.family)
    accuracy = accuracy_table(ckpt.metrics, eval_results)
    with _Progress(progress) as bar:
        return _build_linux(ckpt, board, output, alphas, strategy, tune, rpc, tracker, key, accuracy, threads, bar,
                            log)


def _checkpoint_and_levels(checkpoint_path, levels: str | None):
    """The checkpoint and the alphas `--levels` names (parsed here, once)."""
    from lcs import checkpoint
    from lcs.subspace.levels import level_alphas

    ckpt = checkpoint.load(checkpoint_path)
    return ckpt, level_alphas(levels, ckpt.model.cmap)


def _mcu_int8(ckpt, alphas: list[float], int8: bool | None, log) -> bool:
    """Whether the firmware runs the int8 kernels: as asked, or (None) wherever the model converts; a model the int8
    path refuses gets fp32 kernels with the reason in the log (an explicit --int8 refuses it instead)."""
    if int8 is False:
        return False
    from tvm_build.mcu.build_int8 import check_convertible

    try:
        check_convertible(ckpt, alphas)
    except ConfigError as exc:
        if int8:
            raise
        log(f"fp32 firmware: {str(exc).removeprefix('--int8: ')} (the int8 kernels cannot run it)")
        return False
    return True


def _build_mcu(ckpt, board, output: Path, alphas: list[float], accuracy: list[dict], log, int8: bool | None = False,
               int8_store: str = "auto") -> dict:
    """Microcontroller and host-sim boards: firmware built by tvm_build.mcu (TVM C kernels + lcs's static executor)."""
    import tempfile

    from lcs.atomic import atomic_path

    try:
        from tvm_build.mcu.build import build_firmware
    except ImportError as exc:
        raise ConfigError(f"microcontroller builds (target {board.name}) are not available in this lcs ({exc})") from None
    int8 = _mcu_int8(ckpt, alphas, int8, log)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lcs-mcu-") as scratch:
        log(f"building {'int8' if int8 else 'fp32'} firmware for {board.name} ({len(alphas)} levels)")
        if int8:  # accuracy: each int8 level measured with the integer reference, not the checkpoint's fp32 figures
            from tvm_build.mcu.build_int8 import build_int8_firmware

            try:
                result = build_int8_firmware(ckpt, board, alphas, scratch, store=int8_store)
            except DataError as exc:  # calibration reads the checkpoint's training data
                raise DataError(f"int8 firmware calibrates on the checkpoint's training data: {exc} (--fp32 builds "
                                f"without it)") from None
        else:
            result = build_firmware(ckpt, board, alphas, scratch, accuracy=accuracy)
        built = art.open_artifact(result.artifact, expect_target=board.name)  # refuse anything half-made
        with atomic_path(output) as tmp:
            shutil.copyfile(result.artifact, tmp)
            tmp.chmod(0o644)
    manifest = dict(built.manifest.raw)
    manifest["build_seconds"] = round(time.perf_counter() - started, 1)
    manifest["output"] = str(output)
    manifest["size"] = output.stat().st_size
    return manifest


class _Progress:
    """A rich progress bar (or nothing) with one `step(description)` call per unit of work."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.task = enabled, None, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("build", total=None)
        return self

    def total(self, n: int) -> None:
        if self.bar:
            self.bar.update(self.task, total=n)

    def step(self, description: str, advance: int = 1) -> None:
        if self.bar:
            self.bar.update(self.task, description=description, advance=advance)

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.__exit__(*exc)


def _build_linux(ckpt, board, output, alphas, strategy, tune, rpc, tracker, key, accuracy, threads, bar,
                 log) -> dict:
    import tvm

    from tvm_build import compile as tc
    from tvm_build import graph, schedules
    from tvm_build import target as tt
    from tvm_build import tune as tn
    from tvm_build.export import export_levels

    started = time.perf_counter()
    config = ckpt.config
    xs = graph.sample_inputs(config)
    bar.total(3 * len(alphas) + 2)
    target = tt.make_target(board, threads)
    runner = tn.rpc_runner(tracker, key) if (tune and tracker) else None
    chooser = None
    if strategy == "per-level" and config.subspace.family == "unstructured" and tt.is_host(board):
        from tvm_build.sparse import Chooser  # sparse kernels where timed faster: only a board timed here

        chooser = Chooser(target, v.planned_threads(target))
    exported = export_levels(ckpt, alphas, find_strategy(strategy), target, xs, accuracy, bar, sparse=chooser)
    modules, level_rows, members, reference = exported.modules, exported.rows, exported.members, exported.reference
    tuning_info = []
    with tc.scratch_dir() as scratch:
        scratch = Path(scratch)
        host_libs: dict[str, bytes] = {}
        module_targets = [target] * len(modules)  # a module tuned again for fewer threads gets its own
        if tune:
            bar.step(f"tuning {tune} trials x {len(modules)} module(s)", 0)
            shipped, info = tn.tune([m.relax for m in modules], target, tune, runner=runner, log=log)
            tuning_info.append(_tuning_row(modules, info, v.planned_threads(target)))
        else:
            shipped = [tc.fuse_kernels(m.relax, target) for m in modules]
        shipped = [schedules.apply(mod, target) for mod in shipped]  # what tuning left unscheduled
        executors: dict[str, dict] = {}  # module -> how it runs (static executor or Relax VM), for the manifest

        def compile_modules(indices) -> None:
            for i in indices:
                m = modules[i]
                bar.step(f"{m.name}: compile for {board.name}", 0)
                path = scratch / m.name.replace("/", "_")
                executors[m.name] = tc.build_library(shipped[i], module_targets[i], board, path)
                members[m.name] = path.read_bytes()
                if not (tt.is_host(board) or rpc or tracker):
                    host_path = scratch / ("host_" + path.name)
                    host = tt.host_target()
                    tc.build_library(tc.fuse_kernels(m.relax, host), host, targets.load("host"), host_path)
                    host_libs[m.name] = host_path.read_bytes()
                bar.step(f"{m.name}: compiled")

        compile_modules(range(len(modules)))
        members[art.REFERENCE_MEMBER] = art.npz_bytes(reference)

        manifest = art.new_manifest(
            kind="cpu", tvm_version=tvm.__version__, target=board.to_dict(), tvm_target=_jsonable(tt.target_dict(board)),
            strategy=strategy, config=config.to_dict(), compression_map=_map_dict(ckpt.model.cmap),
            input={"name": "x", "shape": list(xs.shape[1:]), "dtype": "float32"},
            output={"shape": list(reference[art.reference_key(0)].shape[1:]), "dtype": "float32"},
            modules={m.name: {"entry": "main", "layout": m.layout, "params": [p.to_dict() for p in m.params],
                              "extra_inputs": [{k: v for k, v in e.items() if k != "value"} for e in m.extra_inputs],
                              **executors[m.name]}
                     for m in modules},
            levels=level_rows, reference=art.REFERENCE_MEMBER,
            tuning=tuning_info or None)

        session = None
        if rpc or tracker:
            from lcs.transport.rpc import Endpoint, connect

            session = connect(Endpoint(rpc, tracker, key)).session
        where = ("host (same Relax module compiled for x86; run the board's libraries on the board to be sure)"
                 if host_libs else f"{board.name} over RPC" if session is not None else "host")
        timed = tt.is_host(board) or session is not None
        runtime, diffs = v.verify(manifest, members, host_libs, scratch, session, level_rows, bar)
        if timed:
            # a module whose levels all run on fewer threads than it was tuned for is tuned again for that count, until
            # none is left (each module's count only goes down): kernels planned for two threads lose a third of their
            # speed on one (small CNN width 0.25: 11 vs 7 us)
            while True:
                level_threads, by_threads = v.thread_counts(runtime, len(level_rows), threads)
                planned = [v.planned_threads(t) for t in module_targets]
                retune = v.modules_to_retune(modules, level_rows, level_threads, planned) if tune else {}
                if not retune:
                    break
                del runtime
                for count, indices in sorted(retune.items()):
                    bar.step(f"tuning {len(indices)} module(s) again for {count} thread(s)", 0)
                    fewer = tt.make_target(board, count)
                    again, info = tn.tune([modules[i].relax for i in indices], fewer, tune, runner=runner, log=log)
                    tuning_info.append(_tuning_row([modules[i] for i in indices], info, count))
                    for i, mod in zip(indices, again):
                        shipped[i], module_targets[i] = schedules.apply(mod, fewer), fewer
                    compile_modules(indices)
                    for i in indices:
                        manifest["modules"][modules[i].name].update(executors[modules[i].name])
                manifest["tuning"] = tuning_info
                runtime, diffs = v.verify(manifest, members, host_libs, scratch, session, level_rows, bar)
            for i, row in enumerate(level_rows):
                row["threads"] = level_threads[i]
                row["latency_ms"] = by_threads[level_threads[i] or min(by_threads)][i]
            counted = max((c for c in level_threads if c), default=None)
            manifest["runtime"] = {"threads": threads or counted,
                                   "chosen_by": "--threads" if threads else "fastest measured", "measured_on": where,
                                   "latency_ms_by_threads": {str(k): v for k, v in by_threads.items()}}
        elif threads:
            manifest["runtime"] = {"threads": threads, "chosen_by": "--threads"}
        for i, row in enumerate(level_rows):
            row["max_abs_diff"] = diffs[i]
        manifest["verification"] = {"atol": v.ATOL, "on": where, "samples": int(len(xs)), "max_abs_diff": max(diffs)}
        bar.step("verified", 0)
        del runtime
        art.write_artifact(output, manifest, members)
    manifest["build_seconds"] = round(time.perf_counter() - started, 1)
    manifest["output"] = str(output)
    manifest["size"] = output.stat().st_size
    return manifest


def _tuning_row(modules, info, threads: int) -> dict:
    return {"modules": [m.name for m in modules], "threads": threads, "trials_per_module": info.trials,
            "database": str(info.database), "reused": info.reused, "kernels": info.tasks,
            "seconds": round(info.seconds, 1), "tuning_seconds": info.tuning_seconds}


def _map_dict(cmap) -> dict:
    from lcs.subspace.levels import map_to_dict

    return map_to_dict(cmap)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


VerificationError = v.VerificationError

__all__ = ["build", "STRATEGIES", "VerificationError"]
