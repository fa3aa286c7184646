"""`lcs build --int8` for linux boards: each level as an int8 shared library (no TVM in it), run by lcs.runtime
through ctypes like the static executor's libraries.

    checkpoint ──► level ──► int8 graph (lcs.int8.level: folded, calibrated on the checkpoint's training data)
               ──► C (lcs.int8.cpu_c: packed weights + entry points) + firmware_host/src/cpu kernels
               ──► gcc -O3 for the board's CPU ──► verified bit-exact against the integer reference ──► .lcsa

The outputs are the microcontroller path's integer reference between the same float conversions
(`firmware_c.device_forward`), so the reference outputs in the artifact are exact and verification asks for equality.
A board other than this machine is verified with the same C compiled for this machine (the kernels' arithmetic does
not depend on the instruction set); the qemu test runs the cross-compiled libraries themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from lcs import artifact as art
from lcs.errors import ConfigError, LcsError

CPU_SRC = Path(__file__).resolve().parents[1] / "firmware_host" / "src" / "cpu"
OPT = ["-O3", "-fPIC", "-shared", "-std=c11", "-pthread", "-fno-fast-math", "-fno-math-errno", "-DQ8_CPU", "-Wall",
       "-Werror=implicit-function-declaration"]


MAX_THREADS = 64  # q8_pool.h's Q8P_MAX_THREADS


class CompileError(LcsError):
    pass


def compiler_and_flags(board, host: bool) -> tuple[str, list[str]]:
    """The C compiler and target flags for `board`: this machine's own CPU (-march=native), or the board's cpu."""
    if host:
        return "gcc", ["-march=native"]
    cc = board.cross_compiler or "gcc"
    cpu = board.cpu
    return cc, ([f"-mcpu={cpu}"] if cpu and cpu != "native" else [])


def isa(cc: str, flags: list[str]) -> str:
    """The instruction set q8_cpu.h picks for these flags (its Q8C_ISA_NAME, read through the preprocessor)."""
    proc = subprocess.run([cc, *flags, "-E", "-P", "-I", str(CPU_SRC), "-x", "c", "-"],
                          input='#include "q8_cpu.h"\nQ8C_ISA_NAME\n', capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"{cc} cannot preprocess the int8 kernels: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1].strip('"')


def compile_level(source: str, cc: str, flags: list[str], out: Path, *, program: Path | None = None) -> Path:
    """Model C + kernels -> one shared library at `out` (or, with `program`: a static executable with that main)."""
    if shutil.which(cc) is None:
        raise ConfigError(f"C compiler {cc} not found")
    c_file = out.with_suffix(".c")
    c_file.write_text(source)
    kernels = [CPU_SRC / "q8_cpu.c", CPU_SRC / "q8_pool.c", CPU_SRC.parent / "kernels_int8.c"]
    opt = OPT if program is None else [o for o in OPT if o not in ("-shared", "-fPIC")] + ["-static", str(program)]
    cmd = [cc, *opt, *flags, "-I", str(CPU_SRC), str(c_file), *map(str, kernels), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"compiling an int8 level failed: {proc.stderr.strip()[-600:]}")
    return out


class Int8Lib:
    """A compiled level loaded here (ctypes): the build's own check and timing, no TVM."""

    def __init__(self, path: Path, n_in: int, n_out: int) -> None:
        import ctypes

        self.lib = ctypes.CDLL(str(path))
        for name in ("lcs_input", "lcs_output"):
            getattr(self.lib, name).restype = ctypes.c_void_p
        self.lib.lcs_run.argtypes = [ctypes.c_int]
        self.x = np.ctypeslib.as_array((ctypes.c_float * n_in).from_address(self.lib.lcs_input()))
        self.y = np.ctypeslib.as_array((ctypes.c_float * n_out).from_address(self.lib.lcs_output()))

    def run(self, threads: int) -> None:
        rc = self.lib.lcs_run(threads)
        if rc:
            raise LcsError(f"the int8 level cannot run on {threads} threads (code {rc})")

    def __call__(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        self.x[...] = np.asarray(x, np.float32).reshape(-1)
        self.run(threads)
        return self.y.copy()


# The timing of thread_counts, run in a fresh interpreter (python -I: ctypes only, no numpy, torch or TVM): in the
# build's own process torch's and TVM's pools may still spin, and TVM may have pinned the calling thread to one core
# (a child inherits that), which made 2 threads look no faster than 1 for levels that run 1.5x faster on 2
# (cpreresnet20). Argument: JSON [paths, counts, rounds]; prints JSON {count: [[ms per round] per library]}.
_TIMER = r"""
import ctypes, json, os, sys, time
paths, counts, rounds = json.loads(sys.argv[1])
try:  # every CPU the process may use (the kernel keeps those of its cpuset)
    os.sched_setaffinity(0, range(os.cpu_count()))
except (AttributeError, OSError):
    pass
libs = [ctypes.CDLL(p) for p in paths]
for lib in libs:
    lib.lcs_run.argtypes = [ctypes.c_int]
    lib.lcs_park.restype = None

def timed(run, n, seconds):  # median ms of one call over >= n calls and >= `seconds` (a call the OS preempted in
    times, t_end = [], time.perf_counter() + seconds  # the middle of a job does not count: load elsewhere)
    while len(times) < n or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        if run(n_threads):
            sys.exit(f"lcs_run({n_threads}) failed")
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]

out = {str(c): [[] for _ in libs] for c in counts}
for r in range(rounds):
    for n_threads in counts:
        for i, lib in enumerate(libs):
            # the first calls of a count after a pause run slow while the other cores wake up: calls first
            timed(lib.lcs_run, 5, 0.3 if r == 0 else 0.1)
            out[str(n_threads)][i].append(timed(lib.lcs_run, 20, 0.1))
            lib.lcs_park()  # its workers must not spin beside the next library's
print(json.dumps(out))
"""


def thread_counts(paths: list[Path], most: int) -> tuple[list[int], dict[int, list[float]]]:
    """Time every level's library at 1, 2, 4, ... up to `most` threads in a fresh process (rounds interleaved, each
    figure the fastest of its rounds, as tvm_build/verify.thread_counts): each level gets the fewest threads within
    3 % of its fastest."""
    import json
    import sys

    from tvm_build.verify import TIMING_ROUNDS

    counts = sorted({1, most, *(2 ** k for k in range(1, most.bit_length()) if 2 ** k < most)})
    proc = subprocess.run([sys.executable, "-I", "-c", _TIMER, json.dumps([[str(p) for p in paths], counts,
                                                                           TIMING_ROUNDS])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LcsError(f"timing the int8 levels failed: {proc.stderr.strip()[-300:]}")
    times = json.loads(proc.stdout)
    by_threads = {c: [round(min(rounds), 4) for rounds in times[str(c)]] for c in counts}
    return choose_threads(by_threads, len(paths)), by_threads


def choose_threads(by_threads: dict[int, list[float]], levels: int) -> list[int]:
    """Per level the fewest threads within 3 % of its fastest time."""
    chosen = []
    for i in range(levels):
        fastest = min(t[i] for t in by_threads.values())
        chosen.append(min(c for c, t in by_threads.items() if t[i] <= 1.03 * fastest))
    return chosen


def build_cpu_int8(ckpt, board, output: Path, alphas: list[float], host: bool, log, threads: int | None = None) -> dict:
    """`threads`: the most threads a level runs on (default: every CPU this process may use); on this machine each
    level is timed at 1, 2, 4, ... of them and runs on the fewest within 3 % of its fastest (recorded per level, and
    the most in the manifest's runtime.threads, as the fp32 builds do). Every level is verified on 1 thread and on the
    most."""
    import tempfile

    import torch

    from lcs.int8.cpu_c import emit_cpu
    from lcs.int8.firmware_c import device_forward
    from lcs.int8.level import int8_level, nhwc
    from lcs.subspace.levels import map_to_dict
    from tvm_build.graph import sample_inputs
    from tvm_build.mcu.build_int8 import ACCURACY_SAMPLES, CALIBRATION_SAMPLES, _accuracy, calibration_data, \
        check_convertible

    started = time.perf_counter()
    config, model, cmap = ckpt.config, ckpt.model.eval(), ckpt.model.cmap
    check_convertible(ckpt, alphas, adds=True)
    cc, flags = compiler_and_flags(board, host)
    if shutil.which(cc) is None:
        raise ConfigError(f"--int8 for {board.name} compiles with {cc}, which is not installed"
                          + (f" (apt install {board.debian_package})" if board.debian_package else ""))
    chosen = isa(cc, flags)
    try:
        images, calib_info, data = calibration_data(config, CALIBRATION_SAMPLES)
    except LcsError as exc:
        raise ConfigError(f"--int8 calibrates on the checkpoint's training data: {exc}") from None
    mc = config.model
    chw = (mc.in_channels, mc.image_size, mc.image_size)
    try:
        graphs = [int8_level(model, a, images, adds=True) for a in alphas]
    except LcsError as exc:
        raise ConfigError(f"--int8: {str(exc).removeprefix('int8: ')}") from None
    log(f"building int8 levels for {board.name} ({len(alphas)} levels, {chosen} kernels, {cc} {' '.join(flags)})")
    xs = sample_inputs(config)  # (samples, 1, C, H, W)
    reference = {"input": xs}
    members: dict[str, bytes] = {}
    level_rows, modules, diffs, libs = [], {}, [], []
    host_cc, host_flags = compiler_and_flags(board, True)
    most = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    most = min(most, MAX_THREADS)
    with tempfile.TemporaryDirectory(prefix="lcs-int8-") as scratch:
        scratch = Path(scratch)
        for i, (alpha, g) in enumerate(zip(alphas, graphs)):
            source = emit_cpu(g, chw)
            name = art.library_member(i)
            path = compile_level(source, cc, flags, scratch / f"level{i}.so")
            members[name] = path.read_bytes()
            expected = np.stack([device_forward(g, nhwc(torch.from_numpy(x))) for x in xs]).astype(np.float32)
            reference[art.reference_key(i)] = expected
            # verified here: the library itself on the host, else the same C for this machine
            check = path if host else compile_level(source, host_cc, host_flags, scratch / f"host{i}.so")
            lib = Int8Lib(check, int(np.prod(chw)), expected.shape[-1])
            diff = 0.0
            for count in sorted({1, max(2, most)}):  # the split must not change a bit (q8_pool.h)
                got = np.stack([lib(x, count).reshape(expected.shape[1:]) for x in xs])
                diff = max(diff, float(np.max(np.abs(got - expected))))
            if diff != 0.0:
                raise LcsError(f"int8 level {i} differs from the integer reference by {diff:.3g} (it must be exact)")
            lib.lib.lcs_park()
            libs.append(check)
            level = cmap.level(alpha)
            modules[name] = {"entry": "lcs_run", "layout": "NHWC", "params": [], "extra_inputs": [],
                             "executor": "int8", "isa": chosen}
            level_rows.append({"index": i, "alpha": alpha, "label": level.label(), "keep": level.keep,
                               "width": level.width, "bits": level.bits,
                               "accuracy": _accuracy(g, data, ACCURACY_SAMPLES), "latency_ms": None,
                               "threads": threads, "max_abs_diff": diff, "members": {"library": name}})
            diffs.append(diff)
        runtime = {"threads": threads, "chosen_by": "--threads"} if threads else None
        if host:  # timed here: each level's thread count from its own timings
            level_threads, by_threads = thread_counts(libs, most)
            for row, count in zip(level_rows, level_threads):
                row["threads"], row["latency_ms"] = count, by_threads[count][row["index"]]
            runtime = {"threads": threads or max(level_threads), "chosen_by": "--threads" if threads else "fastest measured",
                       "measured_on": "host", "latency_ms_by_threads": {str(k): v for k, v in by_threads.items()}}
        members[art.REFERENCE_MEMBER] = art.npz_bytes(reference)
        manifest = art.new_manifest(
            kind="cpu", tvm_version=None, target=board.to_dict(), strategy="per-level", config=config.to_dict(),
            compression_map=map_to_dict(cmap),
            input={"name": "x", "shape": list(xs.shape[1:]), "dtype": "float32"},
            output={"shape": list(reference[art.reference_key(0)].shape[1:]), "dtype": "float32"},
            modules=modules, levels=level_rows, reference=art.REFERENCE_MEMBER,
            precision="int8",
            int8={"isa": chosen, "compiler": [cc, *flags], "calibration": calib_info,
                  "accuracy_samples": min(ACCURACY_SAMPLES, len(data.test)) if data is not None else 0,
                  "arithmetic": "lcs/int8/graph.py (bit-exact with the integer reference)"},
            **({"runtime": runtime} if runtime else {}),
            verification={"atol": 0.0, "on": "host" if host else "host (the same C compiled for this machine)",
                          "samples": int(len(xs)), "max_abs_diff": max(diffs)})
        art.write_artifact(output, manifest, members)
    manifest["build_seconds"] = round(time.perf_counter() - started, 1)
    manifest["output"] = str(output)
    manifest["size"] = output.stat().st_size
    return manifest

