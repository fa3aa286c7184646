"""MetaSchedule tuning of the modules that ship: one task scheduler for all of them, a pooled builder, local or RPC
runners, and a database per (module structures, target) under ${LCS_CACHE_DIR:-~/.cache/lcs}/tune/."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lcs.runtime import filtered_tvm_logs
from tvm_build.compile import fuse_kernels, module_key


def cache_dir() -> Path:
    return Path(os.environ.get("LCS_CACHE_DIR") or Path.home() / ".cache" / "lcs")


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
        from tvm_build.tune import _register_cpu_tensor_intrinsics

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


def _own_kernel(task) -> bool:
    """A kernel lcs wrote already scheduled (sparse.py's CSR kernels: loops, no blocks for MetaSchedule to search)."""
    func = task.dispatched[0]["main"] if hasattr(task.dispatched[0], "functions") else task.dispatched[0]
    attrs = getattr(func, "attrs", None)
    return attrs is not None and "tirx.is_scheduled" in attrs


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
        tasks = [t for t in extract_tasks(mod, target) if not _layout_only(t.task_name) and not _own_kernel(t)]
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
        quiet = logging.getLogger("tvm.s_tir.meta_schedule")
        level = quiet.level
        # MetaSchedule's console handler writes to sys.stdout (its "Logging directory" line lands in front of
        # `lcs build --json`'s JSON): it takes the logger's level when the contexts are made, so WARNING goes first,
        # and anything it still prints goes to stderr; the per-task logs stay in work/logs
        quiet.setLevel(logging.WARNING)
        builder, pool = None, None
        try:
            with contextlib.redirect_stdout(sys.stderr):
                tasks, _ = extracted_tasks_to_tune_contexts([task for task, _ in chosen], str(work), strategy=search)
            weights = [weight for _, weight in chosen]
            builder, pool = _pooled_builder()
            with filtered_tvm_logs(), contextlib.redirect_stdout(sys.stderr):
                ms.tune.tune_tasks(
                    tasks=tasks, task_weights=weights, work_dir=str(work), max_trials_global=trials * len(mods),
                    max_trials_per_task=max(TRIALS_PER_ROUND, min(trials, 64)), num_trials_per_iter=TRIALS_PER_ROUND,
                    builder=builder, runner=runner or _local_runner(target))
        finally:
            if pool is not None:
                pool.shutdown()
            quiet.setLevel(level)
        took = round(time.perf_counter() - start, 1)
        tmp = done_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"trials": trials, "modules": len(mods), "tasks": count, "seconds": took,
                                   "target": str(target.export())}))
        os.replace(tmp, done_file)
    with target, filtered_tvm_logs():
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
