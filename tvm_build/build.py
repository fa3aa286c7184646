"""`lcs build`: checkpoint -> one verified artifact for one board.

    board ──► checkpoint ──► levels ──► torch network per level (graph.py) ──► Relax ──► tvm.compile (+ tuning)
          ──► shared libraries + weights (.npz) + reference I/O ──► verified with lcs.runtime ──► .lcsa (artifact.py)

Strategies:
  per-level         one module per distinct level graph (structured widths change shapes; quantized levels bake their
                    activation grid in). Levels whose graphs are identical (e.g. all unstructured sparsity levels)
                    share one compiled module and differ only in their fp32 weight file. Convolutions run
                    channels-last (NHWC), weights stored in the layout the kernels read (compile.ChannelsLast).
  weights-as-input  one module for every level; level-dependent values are run-time inputs: weights (int8 codes +
                    scale/zero for quantized layers, dequantized in the graph), activation grids, norm statistics.
                    Unstructured and quantization families; structured width needs per-level.
  alpha-input       one module whose only level input is alpha: w(alpha) = (1 - alpha) w0 + alpha w1 is blended in the
                    graph (tvm_build/alpha_graph.py). Lines (LCS+L) whose compression does not depend on a
                    data-dependent choice inside the graph; see alpha_graph for what it supports.

Executor: each module's library holds its kernels and lcs's static executor (cpu_executor.py: C calling the kernels
in a fixed order from a memory plan made here, no Relax VM; ~2.5 us less per call of a small network), or, for a graph
that is not a plain list of kernels, a Relax VM program. The manifest says which ("executor") and why not static.

Verification: every level's compiled output is compared with torch on sample inputs (max abs diff <= 1e-4) through
`lcs.runtime` itself before the artifact is written: on the board over RPC when --rpc/--tracker is given, on this
machine when the board is the host, else with the same Relax module compiled for the host (the qemu test runs the
real cross-compiled libraries).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import targets
from lcs import artifact as art
from lcs.errors import ConfigError, LcsError
from lcs.evaluate import accuracy_at, accuracy_table

STRATEGIES = ("per-level", "weights-as-input", "alpha-input")
ATOL = 1e-4
TIMING_ROUNDS = 3  # of every level at every thread count, interleaved


class VerificationError(LcsError):
    """Compiled outputs differ from torch."""


@dataclass
class CompiledModule:
    name: str  # member name, e.g. lib/module0.so
    relax: object
    params: list  # ParamSpec
    extra_inputs: list = field(default_factory=list)
    layout: str = "NCHW"  # of the convolutions' activations (weights are stored in the layout the kernels read)


def load_board(name: str):
    try:
        return targets.load(name)
    except targets.UnknownTarget as exc:
        raise ConfigError(str(exc)) from None


def build(checkpoint_path: str | Path, target: str, output: str | Path, *, levels: str | None = None,
          strategy: str = "per-level", tune: int = 0, rpc: str | None = None, tracker: str | None = None,
          key: str | None = None, eval_results: str | Path | None = None, progress: bool = True,
          threads: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Build and write the artifact; returns a summary (the manifest plus timings).

    `threads` (CPU boards): the thread count the model runs on. Kernels are planned and tuned for it and lcs.runtime
    never uses more; without it the kernels are planned for every core and the build records the fastest count it
    can measure."""
    log = log or (lambda msg: None)
    output = Path(output)
    board = load_board(target)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
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
    if board.kind in ("mcu", "sim"):
        if threads is not None:
            raise ConfigError(f"--threads is for CPU boards; {board.name} runs the model on its one core")
        if strategy != "per-level" or tune:
            raise ConfigError(f"target {board.name} is a {board.kind} board: its firmware has one strategy (all "
                              f"levels, switched on the device) and no MetaSchedule tuning; drop --strategy/--tune")
        ckpt, alphas = _checkpoint_and_levels(checkpoint_path, levels)
        return _build_mcu(ckpt, board, output, alphas, accuracy_table(ckpt.metrics, eval_results), log)
    from tvm_build import compile as tc

    try:
        import tvm  # noqa: F401
    except ImportError:
        raise tc.ToolchainError("Apache TVM is not installed: pip install 'lcs[tvm]' (apache-tvm==0.27.0.post1)") \
            from None
    tc.check_cross_compiler(board)
    if tune and not (tc.is_host(board) or rpc or tracker):
        raise ConfigError(f"tuning for {board.name} needs the board: give --tracker host:port --key K "
                          f"(timings on this machine say nothing about a {board.cpu})")
    if tune and rpc:
        raise ConfigError("remote tuning goes through TVM's tracker (MetaSchedule's RPCRunner): use --tracker "
                          "host:port --key K; --rpc host:port is enough for verification and timing")

    ckpt, alphas = _checkpoint_and_levels(checkpoint_path, levels)
    if strategy != "per-level" and ckpt.config.subspace.family == "structured":
        raise ConfigError(f"strategy {strategy} needs every level to have the same weight shapes; structured width "
                          f"changes them: use --strategy per-level")
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


def _build_mcu(ckpt, board, output: Path, alphas: list[float], accuracy: list[dict], log) -> dict:
    """Microcontroller and host-sim boards: firmware built by tvm_build.mcu (TVM C kernels + lcs's static executor)."""
    import tempfile

    from lcs.atomic import atomic_path

    try:
        from tvm_build.mcu.build import build_firmware
    except ImportError as exc:
        raise ConfigError(f"microcontroller builds (target {board.name}) are not available in this lcs ({exc})") from None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lcs-mcu-") as scratch:
        log(f"building firmware for {board.name} ({len(alphas)} levels)")
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


def _networks(ckpt, alphas, strategy, example):
    """One torch network per level (with its parameter arrays in export order)."""
    from tvm_build import graph

    if strategy == "alpha-input":
        from tvm_build import alpha_graph

        return alpha_graph.networks(ckpt, alphas, example)
    make = graph.level_network if strategy == "per-level" else graph.weights_template
    return [make(ckpt.model, a, example) for a in alphas]


def _build_linux(ckpt, board, output, alphas, strategy, tune, rpc, tracker, key, accuracy, threads, bar,
                 log) -> dict:
    import torch
    import tvm

    from tvm_build import compile as tc
    from tvm_build import graph

    started = time.perf_counter()
    config = ckpt.config
    xs = graph.sample_inputs(config)
    example = torch.from_numpy(xs[0])
    bar.total(3 * len(alphas) + 2)
    bar.step("materializing levels", 0)
    nets = _networks(ckpt, alphas, strategy, example)
    bar.step("materialized levels")
    target = tc.make_target(board, threads)
    runner = tc.rpc_runner(tracker, key) if (tune and tracker) else None

    modules: list[CompiledModule] = []
    by_structure: dict[str, CompiledModule] = {}
    level_rows, members, reference = [], {}, {"input": xs}
    tuning_info = []
    exported: dict = {}
    for index, (alpha, net) in enumerate(zip(alphas, nets)):
        level = ckpt.model.cmap.level(alpha)
        bar.step(f"level {index}: export ({level.label()})")
        with torch.no_grad():
            reference[art.reference_key(index)] = np.stack([net(torch.from_numpy(x)).numpy() for x in xs])
        export_net = getattr(net, "export_net", net)  # alpha-input exports one net taking (x, alpha)
        arrays = graph.param_arrays(export_net)
        # identical network structure (e.g. every sparsity level): export once, reuse the Relax module
        shape_key = (repr(export_net), tuple(graph.param_specs(arrays)))
        if shape_key not in exported:
            args = net.export_args(example) if hasattr(net, "export_args") else (example,)
            mod, ep = tc.to_relax(export_net, args)
            order = graph.export_order(ep)
            # per-level modules take plain weights: their layouts can be chosen at build time (weights-as-input and
            # alpha-input weights are computed in the graph or by the host, in torch's layout)
            lifted = tc.ChannelsLast(mod, order) if strategy == "per-level" else None
            exported[shape_key] = (mod, order, lifted)
        mod, order, lifted = exported[shape_key]
        if sorted(order) != sorted(arrays):
            raise LcsError(f"level {index}: exported parameters do not match the network's ({len(order)} vs "
                           f"{len(arrays)})")
        arrays = {name: arrays[name] for name in order}
        if lifted is not None:
            mod, arrays = lifted.main, lifted.weights(arrays)
        specs = graph.param_specs(arrays, lifted.from_torch if lifted is not None else None)
        structure = tc.module_key(mod, target)
        if strategy != "per-level" and modules:
            graph.check_same_specs(modules[0].params, specs, f"strategy {strategy}")
            if structure not in by_structure:
                raise LcsError(f"strategy {strategy}: level {index} exports a different graph than level 0")
        compiled = by_structure.get(structure)
        if compiled is None:
            compiled = CompiledModule(art.library_member(len(modules)), mod, specs,
                                      getattr(net, "extra_inputs", []),
                                      "NHWC" if lifted is not None else "NCHW")
            modules.append(compiled)
            by_structure[structure] = compiled
        # alpha-input levels share the two endpoints; the level is only its alpha
        weights_name = art.ENDPOINTS_MEMBER if strategy == "alpha-input" else art.level_weights_member(index)
        extra_values = {e["name"]: e["value"] for e in getattr(net, "extra_inputs", [])}
        members[weights_name] = art.npz_bytes(arrays) if arrays else art.npz_bytes({})
        level_rows.append({
            "index": index, "alpha": float(alpha), "label": level.label(), "keep": level.keep,
            "width": level.width, "bits": level.bits, "accuracy": accuracy_at(accuracy, alpha),
            "latency_ms": None, "threads": None, "cycles": None, "max_abs_diff": None,
            "members": {"library": compiled.name, "weights": weights_name}, **extra_values})
        bar.step(f"level {index}: exported")

    with tc.scratch_dir() as scratch:
        scratch = Path(scratch)
        host_libs: dict[str, bytes] = {}
        module_targets = [target] * len(modules)  # a module tuned again for fewer threads gets its own
        if tune:
            bar.step(f"tuning {tune} trials x {len(modules)} module(s)", 0)
            shipped, info = tc.tune([m.relax for m in modules], target, tune, runner=runner, log=log)
            tuning_info.append(_tuning_row(modules, info, _planned_threads(target)))
        else:
            shipped = [tc.fuse_kernels(m.relax, target) for m in modules]
        executors: dict[str, dict] = {}  # module -> how it runs (static executor or Relax VM), for the manifest

        def compile_modules(indices) -> None:
            for i in indices:
                m = modules[i]
                bar.step(f"{m.name}: compile for {board.name}", 0)
                path = scratch / m.name.replace("/", "_")
                executors[m.name] = tc.build_library(shipped[i], module_targets[i], board, path)
                members[m.name] = path.read_bytes()
                if not (tc.is_host(board) or rpc or tracker):
                    host_path = scratch / ("host_" + path.name)
                    host = tc.host_target()
                    tc.build_library(tc.fuse_kernels(m.relax, host), host, targets.load("host"), host_path)
                    host_libs[m.name] = host_path.read_bytes()
                bar.step(f"{m.name}: compiled")

        compile_modules(range(len(modules)))
        members[art.REFERENCE_MEMBER] = art.npz_bytes(reference)

        manifest = art.new_manifest(
            kind="cpu", tvm_version=tvm.__version__, target=board.to_dict(), tvm_target=_jsonable(tc.target_dict(board)),
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
        timed = tc.is_host(board) or session is not None
        runtime, diffs = _verify(manifest, members, host_libs, scratch, session, level_rows, bar)
        if timed:
            # a module whose levels all run on fewer threads than it was tuned for is tuned again for that count, until
            # none is left (each module's count only goes down): kernels planned for two threads lose a third of their
            # speed on one (small CNN width 0.25: 11 vs 7 us)
            while True:
                level_threads, by_threads = _thread_counts(runtime, len(level_rows), threads)
                planned = [_planned_threads(t) for t in module_targets]
                retune = _modules_to_retune(modules, level_rows, level_threads, planned) if tune else {}
                if not retune:
                    break
                del runtime
                for count, indices in sorted(retune.items()):
                    bar.step(f"tuning {len(indices)} module(s) again for {count} thread(s)", 0)
                    fewer = tc.make_target(board, count)
                    again, info = tc.tune([modules[i].relax for i in indices], fewer, tune, runner=runner, log=log)
                    tuning_info.append(_tuning_row([modules[i] for i in indices], info, count))
                    for i, mod in zip(indices, again):
                        shipped[i], module_targets[i] = mod, fewer
                    compile_modules(indices)
                    for i in indices:
                        manifest["modules"][modules[i].name].update(executors[modules[i].name])
                manifest["tuning"] = tuning_info
                runtime, diffs = _verify(manifest, members, host_libs, scratch, session, level_rows, bar)
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
        manifest["verification"] = {"atol": ATOL, "on": where, "samples": int(len(xs)), "max_abs_diff": max(diffs)}
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


def _planned_threads(target) -> int:
    """The thread count a target's kernels are planned (and tuned) for."""
    return int(target.attrs.get("num-cores") or 1)


def _modules_to_retune(modules, level_rows, level_threads, tuned_threads) -> dict[int, list[int]]:
    """{thread count: indices of the modules to tune again for it}: modules whose levels all run on the same count,
    fewer threads than the kernels were planned for (a module shared by levels on different counts stays)."""
    retune: dict[int, list[int]] = {}
    for i, m in enumerate(modules):
        counts = {level_threads[r["index"]] for r in level_rows if r["members"]["library"] == m.name}
        count = counts.pop() if len(counts) == 1 else None
        if count is not None and count < tuned_threads[i]:
            retune.setdefault(count, []).append(i)
    return retune


def _verify(manifest, members, host_libs, scratch: Path, session, level_rows, bar):
    """Write a draft artifact and compare every level with torch through lcs.runtime (the libraries compiled for the
    host when the board's cannot run here); refuse with numbers when any level is off. Returns (runtime, diffs)."""
    from lcs.runtime import Runtime

    bar.step("verifying every level", 0)
    draft = scratch / "draft.lcsa"
    if host_libs:
        art.write_artifact(draft, dict(manifest, target=targets.load("host").to_dict()), {**members, **host_libs})
    else:
        art.write_artifact(draft, manifest, members)
    runtime = Runtime(draft, session=session)
    diffs = runtime.check()
    bad = [(i, d) for i, d in enumerate(diffs) if not d <= ATOL]
    if bad:
        detail = ", ".join(f"level {i} (alpha {level_rows[i]['alpha']:.4g}) {d:.3g}" for i, d in bad)
        raise VerificationError(f"compiled outputs differ from torch by more than {ATOL:g}: {detail}; "
                                f"no artifact written")
    return runtime, diffs


def _thread_counts(runtime, levels: int, threads: int | None) -> tuple[list[int | None], dict[int, list[float]]]:
    """Time every level at 1, 2, 4, ... threads up to `threads` (default: the size of TVM's pool, TVM_NUM_THREADS);
    each level gets the fewest threads within 3 % of its fastest (batch-1 kernels of a small level can lose more to
    the pool's hand-offs than they gain). With a single count measurable, levels get None: no evidence to pick with."""
    most = runtime.pool_threads
    if threads:
        most = min(threads, most)
    counts = sorted({1, most, *(2 ** k for k in range(1, most.bit_length()) if 2 ** k < most)})
    # rounds over the counts, each figure the fastest of its rounds: a burst of load elsewhere on the machine (a
    # shared 2-vCPU VM here once made 2 threads look 2x slow for seconds) must not decide a level's count; within a
    # round, timings are settled (multi-threaded calls take a few hundred ms after a pool resize to settle)
    rounds = []
    for _ in range(TIMING_ROUNDS):
        by_count = {}
        for count in counts:
            runtime.set_threads(count)
            by_count[count] = [runtime.time(i, number=1, repeat=3, min_repeat_ms=40, warmup=1)
                               for i in range(levels)]
        rounds.append(by_count)
    by_threads = {c: [min(r[c][i] for r in rounds) for i in range(levels)] for c in counts}
    runtime.set_threads(most)
    if len(counts) == 1:
        return [counts[0] if threads else None] * levels, by_threads
    chosen = []
    for i in range(levels):
        fastest = min(by_threads[c][i] for c in counts)
        chosen.append(min(c for c in counts if by_threads[c][i] <= 1.03 * fastest))
    return chosen, by_threads


def _map_dict(cmap) -> dict:
    from lcs.subspace.levels import map_to_dict

    return map_to_dict(cmap)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


__all__ = ["build", "STRATEGIES", "VerificationError"]
