"""The TVM side of a build: board -> Target, torch.export -> Relax, compile, cross-compile, tune, time.

Facts this relies on (TVM 0.27, see the notes): targets are dicts or tags, never strings; host targets need "mcpu"
or LLVM emits baseline SSE2 code; MetaSchedule must tune the exact module that ships (weights as inputs); tuning databases are keyed by workload and
target.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcs.errors import ConfigError, LcsError
from lcs.runtime import filtered_tvm_logs
from tvm_build.static_plan import CodegenError


class ToolchainError(LcsError):
    """A cross compiler or TVM piece the build needs is not installed."""


def cache_dir() -> Path:
    return Path(os.environ.get("LCS_CACHE_DIR") or Path.home() / ".cache" / "lcs")


def target_dict(board) -> dict | str:
    """The board's TVM target, with the host CPU filled in for `cpu: native` boards."""
    from tvm.target import codegen

    spec = board.tvm_target
    if isinstance(spec, dict) and board.cpu == "native":
        spec = dict(spec)
        spec.setdefault("mcpu", codegen.llvm_get_system_cpu())
        spec.setdefault("num-cores", os.cpu_count() or 1)
    return spec


def make_target(board, threads: int | None = None):
    """The board's TVM target; `threads` plans the kernels' parallel loops for that many cores instead of all."""
    import tvm

    try:
        target = tvm.target.Target(target_dict(board))
        if threads:
            target = tvm.target.Target({**dict(target.export()), "num-cores": int(threads)})
        return target
    except Exception as exc:  # TVM raises ValueError/TVMError for bad target specs
        raise ConfigError(f"board {board.name}: TVM cannot build target {board.tvm_target!r}: {exc}") from None


def host_target():
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1})


def is_host(board) -> bool:
    return board.cross_compiler is None and board.kind == "linux"


def check_cross_compiler(board) -> None:
    if board.cross_compiler and shutil.which(board.cross_compiler) is None:
        raise ToolchainError(f"cross compiler {board.cross_compiler} for target {board.name} is not installed; "
                             f"install the Debian package {board.debian_package} "
                             f"(apt-get install {board.debian_package})")


def to_relax(net, args):
    """torch.export a plain network and import it into Relax: main(*args, *parameters)."""
    import torch
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad(), warnings.catch_warnings():
        # alpha-input layers receive alpha as a plain attribute set in forward (never a buffer: it is an input)
        warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
        ep = torch.export.export(net, tuple(args))
    mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, _ = detach_params(mod)
    return mod, ep


class ChannelsLast:
    """A per-level module rewritten to run its convolutions channels-last, with the weight-only work done at build time.

    NHWC activations with HWIO kernels put output channels innermost: every level width of the small CNN (4..64
    channels) fills whole vectors, and MetaSchedule finds fast kernels in far fewer trials (small CNN, 1 thread, 160
    trials: 0.057 ms vs 0.086 ms NCHW). Relax's ConvertLayout inserts the kernel transposes into the graph and
    LiftTransformParams moves every computation that depends on weights alone (those transposes, the classifier's)
    into a separate function, which the build runs once per level: the artifact stores the weights in the layout the
    kernels read, and no call pays for a transpose."""

    def __init__(self, mod, names: list[str]) -> None:
        import tvm
        from tvm import relax

        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        mod = _unit_permutes_as_reshapes(mod)
        mod = relax.transform.LiftTransformParams()(mod)
        if not any(gv.name_hint == "main_transform_params" for gv in mod.get_global_vars()):
            raise LcsError("TVM's LiftTransformParams made no weight transform; this TVM is not the pinned 0.27")
        transform = mod["main_transform_params"]
        self.main = tvm.IRModule({"main": mod["main"]})
        self.names, self.from_torch = _lifted_names(transform, names)
        self._source_names = list(names)
        with filtered_tvm_logs():
            executable = relax.build(tvm.IRModule({"transform": transform.with_attr("global_symbol", "transform")}),
                                     target=host_target())
        self._transform = relax.VirtualMachine(executable, tvm.cpu())["transform"]  # run once per level

    def weights(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One level's weights (torch names and layouts, export order) as the rewritten module takes them."""
        import tvm

        if list(arrays) != self._source_names:
            raise LcsError(f"weights do not match the exported parameters ({list(arrays)[:3]}... vs "
                           f"{self._source_names[:3]}...)")
        outputs = self._transform([tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu()) for a in arrays.values()])
        return {name: out.numpy() for name, out in zip(self.names, outputs)}


def _unit_permutes_as_reshapes(mod):
    """Rewrite transposes that only move axes of extent 1 (NHWC (1,1,1,C) -> NCHW (1,C,1,1) before a flatten, which
    ConvertLayout leaves at the classifier) as reshapes: Relax runs a reshape as a view, with no kernel launch or
    allocation (a transpose costs one of each: one of the eleven kernels of the width-0.25 small CNN)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = getattr(call.op, "name", None)
            if op == "relax.reshape":  # a reshape of a reshape (the rewritten transpose's consumer) is one reshape
                source = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
                if isinstance(source, relax.Call) and getattr(source.op, "name", None) == "relax.reshape":
                    return relax.op.reshape(source.args[0], call.args[1])
                return call
            shape = getattr(call.args[0].ty, "shape", None) if call.args else None
            if op != "relax.permute_dims" or not isinstance(shape, relax.ShapeExpr):
                return call
            dims = [d.value if isinstance(d, tvm.tirx.IntImm) else None for d in shape.values]
            axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(len(dims)))[::-1]
            moved = [a for a in axes if dims[a] != 1]
            if None in dims or moved != sorted(moved):
                return call
            return relax.op.reshape(call.args[0], [dims[a] for a in axes])

    out = tvm.IRModule(attrs=mod.attrs)
    for gv, func in mod.functions.items():
        out[gv] = Rewriter(mod).visit_expr(func) if isinstance(func, relax.Function) else func
    return relax.transform.DeadCodeElimination()(out)  # the reshapes now unused


def _lifted_names(transform, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Names for the outputs of a lifted weight transform, and how each was computed from torch's parameter: an output
    made from a single weight keeps that weight's name (`features.1.0.weight`, "permute_dims(2,3,1,0)")."""
    from tvm import relax

    (params_tuple,) = transform.params
    source: dict = {}  # var -> (index of the one weight it comes from, or None; the operations since)
    tuples: dict = {}
    for block in transform.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.TupleGetItem) and value.tuple_value.same_as(params_tuple):
                source[binding.var] = (value.index, "")
            elif isinstance(value, relax.Call):
                inputs = {source[v][0] for v in relax.analysis.free_vars(value) if v in source}
                op = getattr(value.op, "name", "op").rsplit(".", 1)[-1]
                if op == "permute_dims" and value.attrs.axes is not None:
                    op += "(" + ",".join(str(int(a)) for a in value.attrs.axes) + ")"
                before = source[value.args[0]][1] if value.args and value.args[0] in source else ""
                source[binding.var] = (inputs.pop() if len(inputs) == 1 else None, f"{before} {op}".strip())
            elif isinstance(value, relax.Tuple):
                tuples[binding.var] = value.fields
    returned = transform.body.body  # the tuple the function returns, bound in its dataflow block or written inline
    outputs = list(returned.fields if isinstance(returned, relax.Tuple) else tuples[returned])
    out, how = [], {}
    for field in outputs:
        index, ops = source.get(field, (None, "computed"))
        name = names[index] if index is not None else f"lifted{len(out)}"
        if name in out:
            name = f"{name}.{len(out)}"
        out.append(name)
        if ops:
            how[name] = ops
    return out, how


def module_key(mod, target) -> str:
    """A key for a module's structure on a target (weights are inputs, so they do not enter it)."""
    import tvm

    text = mod.script(show_meta=False) + json.dumps(str(target.export()))
    return hashlib.sha256(text.encode() + tvm.__version__.encode()).hexdigest()[:20]


def fuse_kernels(mod, target):
    """Legalize and fuse: `main` becomes a list of call_tir kernels (the form tuned, and the static executor's).
    Sorts and sampling are dispatched to the target's TIR first (TopK levels in the alpha-input graph sort), as the
    VM build does before it legalizes."""
    import tvm
    from tvm import relax

    with target:
        mod = tvm.transform.Sequential([relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()])(mod)
    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings(),
                                     relax.pipeline.zero_pipeline()])(mod)


# tasks that only move data (`transpose`, `fused_transpose1_reshape`); MetaSchedule's default schedule for them is
# already as good as it gets
LAYOUT_ONLY = {"reshape", "transpose"}
# trials per search round: the evolutionary search and the cost model run once per round (~1.5 s with the search
# below), so rounds must not be tiny, but the first round of every task is spent before the scheduler knows where
# time goes
TRIALS_PER_ROUND = 8


@dataclass
class Tuning:
    trials: int
    database: Path
    reused: bool
    seconds: float  # this call (next to nothing when the database is reused)
    tasks: int = 0  # kernels tuned
    tuning_seconds: float | None = None  # what making the database took


def _register_cpu_tensor_intrinsics() -> None:
    """Register only the CPU tensor intrinsics before MetaSchedule asks for all of them.

    MetaSchedule imports `tvm.s_tir.tensor_intrin`, whose __init__ parses every backend's intrinsics in TVMScript:
    45 s on this 2-core machine (27 s CUDA, 7 s ROCm, 3 s Hexagon), a sixth of the tuning budget. CPU schedules can
    only use the x86 and Arm ones, so the package is entered under its own name with just those two loaded."""
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name, "CPU tensor intrinsics only (registered by lcs for tuning)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = name
    sys.modules[name] = package
    importlib.import_module(f"{name}.x86")
    importlib.import_module(f"{name}.arm_cpu")


# a candidate LLVM has not compiled in this long is a failed trial (a rare schedule unrolls into a huge function and
# LLVM then takes many minutes over it); the others compile in 0.1-0.5 s
BUILD_TIMEOUT_S = 30


def _pooled_builder():
    """A MetaSchedule builder on a pool of worker processes that lives as long as the tuning run: one per core, with
    a time limit per candidate. Returns (builder, pool to shut down).

    TVM's LocalBuilder starts a fresh pool for every batch of candidates (to dodge a leak in long sessions), and each
    new worker imports TVM and every tensor intrinsic again: ~45 s a batch here. These workers pay ~5 s once (CPU
    intrinsics only) and compile two candidates at a time; a worker stuck past BUILD_TIMEOUT_S is killed and
    replaced, and its candidate counts as a failed trial."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    def start_worker(root: str) -> None:  # pickled by value: the worker may not have lcs on its path
        import sys

        sys.path.insert(0, root)
        from tvm_build.compile import _register_cpu_tensor_intrinsics

        _register_cpu_tensor_intrinsics()

    def compile_candidate(mod, target) -> str:
        import warnings

        from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

        with warnings.catch_warnings():  # default_build still calls the deprecated tvm.build
            warnings.simplefilter("ignore", DeprecationWarning)
            return default_export(default_build(mod, target, None))

    pool = PopenPoolExecutor(max_workers=os.cpu_count() or 1, timeout=BUILD_TIMEOUT_S, initializer=start_worker,
                             initargs=(str(Path(__file__).resolve().parents[1]),))

    @derived_object
    class PooledBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            jobs = [(item.mod, item.target) for item in build_inputs]
            for done in pool.map_with_error_catching(lambda job: compile_candidate(*job), jobs):
                if done.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(done.value, None))
                elif done.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"compile timed out after {BUILD_TIMEOUT_S} s"))
                else:  # a candidate that does not compile is a failed trial, not a failed build
                    results.append(BuilderResult(None, f"{type(done.value).__name__}: {done.value}"))
            return results

    return PooledBuilder(), pool


def _layout_only(task_name: str) -> bool:
    parts = task_name.removeprefix("fused_").split("_")
    return all(part.rstrip("0123456789") in LAYOUT_ONLY for part in parts)


def _tasks_worth_tuning(modules, target) -> list[tuple[object, float]]:
    """The distinct compute tasks of all modules with their weights for the task scheduler, without layout copies.

    An identical kernel in two modules is tuned once. Small tasks are tuned too: a group norm does under 1 % of the
    small CNN's arithmetic, but left with its unscheduled loops it costs 5-10 us of a 60 us network (one round of
    trials brings it to 1-2 us). Each module's tasks are weighted by how much smaller the module is than the largest:
    a device switches between levels, so a microsecond saved on width 0.25 (14 us) is worth what five are on width
    1.0 (53 us), and the scheduler, which spends trials where weighted time goes, does not leave small levels on
    their first guesses."""
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    per_module = []
    for mod in modules:
        tasks = [t for t in extract_tasks(mod, target) if not _layout_only(t.task_name)]
        per_module.append((tasks, sum(estimate_tir_flops(t.dispatched[0]) * t.weight for t in tasks) or 1.0))
    largest = max((flops for _, flops in per_module), default=1.0)
    unique: dict[int, list] = {}
    for tasks, flops in per_module:
        for task in tasks:
            entry = unique.setdefault(tvm_ffi.structural_hash(task.dispatched[0]), [task, 0.0])
            entry[1] += task.weight * largest / flops
    return [(task, weight) for task, weight in unique.values()]


def tune(mods: list, target, trials: int, *, runner=None, log=None) -> tuple[list, Tuning]:
    """MetaSchedule-tune the modules that ship (weights as inputs) for `target`, `trials` trials per module, jointly:
    one task scheduler for all of them, which spends the trials where the time goes (gradient scheduler, rounds of
    TRIALS_PER_ROUND). Returns (modules with the schedules applied, Tuning).

    The database lives in ${LCS_CACHE_DIR:-~/.cache/lcs}/tune/<key of the module structures and target>; a later build
    of the same structures (any weights) on the same target with no more trials reuses it without tuning again."""
    import logging
    import time

    from tvm import relax

    _register_cpu_tensor_intrinsics()
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    prepared = [fuse_kernels(m, target) for m in mods]
    key = hashlib.sha256("".join(sorted(module_key(m, target) for m in prepared)).encode()).hexdigest()[:20]
    work = cache_dir() / "tune" / key
    done_file = work / "done.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    start = time.perf_counter()
    reused = done.get("trials", 0) >= trials
    count, took = done.get("tasks", 0), done.get("seconds")
    if not reused:
        work.mkdir(parents=True, exist_ok=True)
        chosen = _tasks_worth_tuning(prepared, target)
        count = len(chosen)
        if log:
            log(f"tuning {trials} trials x {len(mods)} module(s) over {count} kernels into {work}")
        # a small population and one evolution round: the search runs once per round of 8 trials and cost more
        # than building and measuring them (~5 s a round with 128 candidates and 2 evolution rounds, 201 of a 349 s
        # run; TVM's defaults are 512 and 4). With 64 and 1 the same 320 trials took 188 s, kernels as fast.
        search = ms.search_strategy.EvolutionarySearch(population_size=64, genetic_num_iters=1,
                                                       init_min_unmeasured=32)
        tasks, _ = extracted_tasks_to_tune_contexts([task for task, _ in chosen], str(work), strategy=search)
        weights = [weight for _, weight in chosen]
        quiet = logging.getLogger("tvm.s_tir.meta_schedule")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # the per-task logs stay in work/logs
        builder, pool = _pooled_builder()
        try:
            with filtered_tvm_logs():
                ms.tune.tune_tasks(
                    tasks=tasks, task_weights=weights, work_dir=str(work), max_trials_global=trials * len(mods),
                    max_trials_per_task=max(TRIALS_PER_ROUND, min(trials, 64)), num_trials_per_iter=TRIALS_PER_ROUND,
                    builder=builder, runner=runner or _local_runner(target))
        finally:
            pool.shutdown()
            quiet.setLevel(level)
        took = round(time.perf_counter() - start, 1)
        tmp = done_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"trials": trials, "modules": len(mods), "tasks": count, "seconds": took,
                                   "target": str(target.export())}))
        os.replace(tmp, done_file)
    with target:
        tuned = [relax.transform.MetaScheduleApplyDatabase(str(work))(m) for m in prepared]
    return tuned, Tuning(trials, work, reused, time.perf_counter() - start, count, took)


def _evaluator():
    from tvm.s_tir import meta_schedule as ms

    # 30 ms per measurement is hundreds of runs of a kernel of tens of microseconds (TVM's default is 100 ms)
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=30)


def _local_runner(target):
    """Measure candidates with as many threads as the target has cores: a schedule tuned on one thread loses to a
    parallel one on two and the other way round (small CNN: 0.072 vs 0.10 ms on one thread, 0.09 vs 0.065 ms on
    two), so tune the thread count that ships. TVM's pool reads TVM_NUM_THREADS when the worker starts (its default
    is half the logical CPUs), and LocalRunner starts its worker in its constructor."""
    from tvm.s_tir import meta_schedule as ms

    cores = int(target.attrs.get("num-cores") or 1)
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(cores)
    try:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=_evaluator())
    finally:
        if saved is None:
            del os.environ["TVM_NUM_THREADS"]
        else:
            os.environ["TVM_NUM_THREADS"] = saved


def rpc_runner(tracker: str, key: str):
    from tvm.s_tir import meta_schedule as ms

    from lcs.transport.rpc import parse_address

    host, port = parse_address(tracker, "--tracker")
    return ms.runner.RPCRunner(rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                                              session_timeout_sec=120),
                               evaluator_config=_evaluator())


def compile_module(mod, target):
    """The VM program compiled to machine code ("compiled" mode) rather than interpreted bytecode: 1 us less per
    call of the width-0.25 small CNN (12 -> 11 us), where the interpreter's ~30 bookkeeping calls show."""
    from tvm import relax

    return relax.build(mod, target=target, exec_mode="compiled")


def build_library(mod, target, board, path: Path) -> dict:
    """Compile a fused module (`fuse_kernels`, or tuned) into the board's shared library at `path`: its kernels and
    the static executor (cpu_executor.py) when `main` is a flat list of kernels, else a Relax VM program. Returns
    the manifest's description of the module's executor."""
    import tvm

    from tvm_build import cpu_executor

    lowered = cpu_executor.kernel_module(mod)
    try:
        plan = cpu_executor.plan_module(lowered)
    except CodegenError as exc:
        export_library(compile_module(mod, target), board, path)
        return {"executor": "vm", "why_not_static": str(exc)}
    # the executor passes exactly the shapes the kernels were built for: their argument checks are dead code
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}), filtered_tvm_logs():
        kernels = tvm.compile(cpu_executor.kernels_of(lowered, plan), target=target)
    source = path.with_name(path.name + ".executor.c")
    source.write_text(cpu_executor.emit(plan))
    export_library(kernels, board, path, sources=[source])
    return {"executor": "static", "entry": cpu_executor.ENTRY, "kernels": len(plan.calls),
            "arena_bytes": plan.arena_bytes}


def tvm_include_dirs() -> list[str]:
    """Where TVM's C headers are (tvm/ffi/c_api.h, DLPack) for C compiled beside TVM kernels."""
    import tvm
    import tvm_ffi

    return [str(Path(tvm_ffi.__file__).parent / "include"), str(Path(tvm.__file__).parent / "include")]


def export_library(executable, board, path: Path, sources: list[Path] = ()) -> Path:
    """Write a compiled module as a shared library for the board (cross-linked when the board needs it), with the C
    `sources` compiled into it."""
    from tvm.support import cc

    options = [f"-I{d}" for d in tvm_include_dirs()] + ["-O2"] if sources else []
    fcompile = cc.cross_compiler(board.cross_compiler or cc.create_shared, options=options,
                                 add_files=[str(s) for s in sources])
    with filtered_tvm_logs():
        try:
            executable.export_library(str(path), fcompile=fcompile)
        except Exception as exc:  # a linker failure surfaces as a RuntimeError with the compiler's output
            raise ToolchainError(f"linking for {board.name} with {board.cross_compiler or 'the host compiler'} "
                                 f"failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
    return path


def scratch_dir():
    return tempfile.TemporaryDirectory(prefix="lcs-build-")
