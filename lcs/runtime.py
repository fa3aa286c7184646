"""Run an artifact on a device with nothing but numpy and the TVM runtime (no torch, no Relax compiler).

    TVM_USE_RUNTIME_LIB=1 python -m lcs.runtime model.lcsa --level 0 --check

On a device set TVM_USE_RUNTIME_LIB=1 so that `import tvm` loads only libtvm_runtime (the module never sets it itself:
in a build process the full compiler is already loaded). Every compiled library of the artifact is loaded once and every
level's weights are uploaded once. An int8 level (`lcs build --int8`, tvm_build/cpu_int8.py) is a plain C library with
its weights inside and a thread pool of its own, called through ctypes with the level's thread count. A library built
with lcs's static executor (tvm_build/cpu_executor.py) is called through ctypes: one C call per inference on buffers the
library owns; others run on TVM's Relax VM. `set_level` points the level's library at its weights (a pointer table; a
library shared by several levels is rebound) and resizes TVM's thread pool when the level runs on another thread count
(recorded per level by `lcs build`), so switching levels costs no reload. With `session=` (a TVM RPC session) the
libraries and weights go to the remote device instead.

This module imports neither torch nor tvm_build (the device has neither); it needs the `tvm` package only when a
Runtime is created.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from lcs.artifact import FLOAT_ATOL, Artifact, ArtifactError, Level, TensorSpec, level_atol, open_artifact
from lcs.errors import LcsError

# (file, message) pairs TVM logs that mean nothing to a user: one line per constant whenever a VM executable is
# saved or loaded, one per gather kernel while MetaSchedule builds candidates, one per tuning database opened.
NOISE = (("executable.cc", "Scope Saving"), ("executable.cc", "Scope Loaded"),
         ("transform.h", "Fast mode segfaults when there are out-of-bounds indices"),
         ("meta_schedule.cc", "Creating JSONDatabase"))


@contextlib.contextmanager
def filtered_tvm_logs():
    """Drop TVM's executable.cc save/load chatter from stderr (written by C++, so filter at the fd level)."""
    fd = 2  # C++ writes to the process's fd 2, whatever sys.stderr is
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no stderr at all
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(where in line and what in line for where, what in NOISE)]
            if kept:
                os.write(fd, "".join(kept).encode())


class RunError(LcsError):
    """The artifact cannot run here (wrong architecture, missing TVM runtime, bad input)."""


def default_thread_pool_size() -> None:
    """Size TVM's thread pool explicitly (TVM_NUM_THREADS) unless the user did (TVM_NUM_THREADS or OMP_NUM_THREADS).

    Without either variable TVM asks the C library for the CPU count on every parallel kernel launch, and glibc reads
    /sys/devices/system/cpu/online each time: the width-0.25 small CNN took 95 us a call instead of 9 us here. TVM
    would also size the pool at half the logical CPUs on x86; this gives it every CPU the process may run on, and the
    levels pick how many they use (measured by `lcs build`). Call it before TVM's pool starts: TVM sizes the pool
    once, at its first parallel kernel."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(usable_cpus())


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _import_tvm():
    default_thread_pool_size()
    try:
        import tvm
        from tvm.runtime.vm import VirtualMachine
    except ImportError as exc:
        raise RunError(f"the TVM runtime is not installed ({exc}); pip install apache-tvm==0.27.0.post1") from None
    return tvm, VirtualMachine


def aligned_copy(array: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of `array` whose data starts on an `align`-byte boundary (TVM kernels assume 64)."""
    array = np.asarray(array)
    raw = np.empty(array.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


class _StaticLibrary:
    """A library with lcs's static executor (tvm_build/cpu_executor.py), called through ctypes: a call is one C
    function on buffers the library owns, with no TVM packed call and no tensor conversion. The library must already
    be loaded by TVM (which fills in its runtime hooks: thread pool, workspace); dlopen hands ctypes the same copy."""

    def __init__(self, path: Path, input_spec: dict, output_spec: dict) -> None:
        lib = ctypes.CDLL(str(path))
        for name in ("lcs_input", "lcs_output"):
            getattr(lib, name).restype = ctypes.c_void_p
        lib.lcs_bind.argtypes = [ctypes.c_void_p]
        # lcs_threads: the library's own pool for parallel loops; artifacts built before it have lcs_serial only
        self._own_pool = hasattr(lib, "lcs_threads")
        if self._own_pool:
            lib.lcs_threads.argtypes = [ctypes.c_int]
            lib.lcs_park.restype = None
        else:
            lib.lcs_serial.argtypes = [ctypes.c_int]
            lib.lcs_serial.restype = None
        self._lib = lib
        self._run = lib.lcs_run
        self.input = self._view(lib.lcs_input(), input_spec)
        self.output = self._view(lib.lcs_output(), output_spec)

    @staticmethod
    def _view(address: int, spec: dict) -> np.ndarray:
        dtype, shape = np.dtype(spec.dtype), spec.shape
        buffer = (ctypes.c_char * (int(np.prod(shape)) * dtype.itemsize)).from_address(address)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    @staticmethod
    def pointers(arrays: list[np.ndarray]):
        return (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])

    def bind(self, pointers) -> None:
        if self._lib.lcs_bind(pointers):
            raise RunError("the static executor failed to set up a level's weights (a kernel raised)")

    def threads(self, count: int) -> None:
        """On one thread the kernels' parallel loops run inline, not through TVM's launcher (~100 ns a loop); on
        more, on the library's own pool (tvm_build/cpu_executor.py says why not TVM's)."""
        if not self._own_pool:
            self._lib.lcs_serial(1 if count == 1 else 0)
        elif self._lib.lcs_threads(int(count)):
            raise RunError(f"the static executor could not start {count} threads")

    def park(self) -> None:
        """Its pool's workers stop spinning (another library runs next)."""
        if self._own_pool:
            self._lib.lcs_park()

    def run(self) -> np.ndarray:
        code = self._run()
        if code:
            raise RunError(f"the static executor failed ({'no weights bound' if code == -2 else 'a kernel raised'})")
        return self.output.copy()  # the buffer is the library's, overwritten by the next call


class _Int8Library:
    """An int8 level (tvm_build/cpu_int8.py): a plain C library with its weights inside, called through ctypes
    (lcs_run(threads) on its own float input and output buffers; the library's own pool runs threads - 1 workers)."""

    MAX_THREADS = 64  # firmware_host/src/cpu/q8_pool.h

    def __init__(self, path: Path, input_spec, output_spec) -> None:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:  # another architecture
            raise RunError(f"cannot load an int8 level here: {str(exc).strip().splitlines()[-1]}") from None
        for name in ("lcs_input", "lcs_output"):
            getattr(lib, name).restype = ctypes.c_void_p
        lib.lcs_run.argtypes = [ctypes.c_int]
        lib.lcs_park.restype = None
        self._lib, self._run = lib, lib.lcs_run
        self._threads = 1
        self.input = _StaticLibrary._view(lib.lcs_input(), input_spec)
        self.output = _StaticLibrary._view(lib.lcs_output(), output_spec)

    def threads(self, count: int) -> None:
        """Run on `count` threads from the next call (the pool grows on that call); at most MAX_THREADS."""
        self._threads = max(1, min(int(count), self.MAX_THREADS))

    def park(self) -> None:
        """Let the pool's workers sleep now instead of spinning for the next call (another library runs next)."""
        self._lib.lcs_park()

    def run(self) -> np.ndarray:
        code = self._run(self._threads)
        if code:
            raise RunError(f"the int8 level failed ({'no thread could be started' if code == -2 else code})")
        return self.output.copy()


class _Level:
    """What one level needs to run: its weights bound where its module reads them, and a call on its input."""

    def __init__(self, module: str, call, input_host, bind=None, timed=None) -> None:
        self.module = module
        self.call = call  # () -> output (numpy), reading the input from `input_host` (or the shared RPC input)
        self.input_host = input_host  # numpy view of the input buffer the call reads (None over RPC)
        self.bind = bind  # () -> None: make these weights the module's (static executor); None for the VM
        self.timed = timed  # (module, function name, arguments after the input) for TVM's time_evaluator


class Runtime:
    """All levels of one artifact, resident; run any of them and switch without reloading."""

    def __init__(self, artifact: Artifact | str | Path, *, expect_target: str | None = None, session=None) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, expect_target)
        manifest = self.artifact.manifest
        if self.artifact.kind == "firmware":
            raise RunError(f"{self.artifact.path} is microcontroller firmware; deploy it with `lcs deploy`")
        tvm, VirtualMachine = _import_tvm()
        self._tvm = tvm
        self._session = session
        self.device = session.cpu() if session is not None else tvm.cpu()
        self.input_spec: TensorSpec = manifest.input
        self.output_spec: TensorSpec = manifest.output
        self._input_shape = self.input_spec.shape
        self._libs: dict[str, object] = {}
        self._scratch = tempfile.TemporaryDirectory(prefix="lcs-runtime-")
        for name, spec in manifest.modules.items():
            path = Path(self._scratch.name) / name.replace("/", "_")
            path.write_bytes(self.artifact.read(name))
            if spec.executor == "int8":  # plain C, no TVM in it: loaded by ctypes in _load_level
                if session is not None:
                    raise RunError(f"{self.artifact.path} has int8 levels (C libraries): run lcs.runtime on the "
                                   "board itself, not over RPC")
                self._libs[name] = (None, path)
                continue
            with filtered_tvm_logs():
                try:
                    if session is not None:
                        session.upload(str(path))
                        lib = session.load_module(path.name)
                    else:
                        lib = tvm.runtime.load_module(str(path))
                except Exception as exc:  # wrong architecture or a library the runtime cannot open
                    raise RunError(f"cannot load {name} from {self.artifact.path} here: "
                                        f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
            self._libs[name] = (lib, path)
        # the shared input: every VM level and every call over RPC read it
        self._input_host, self._input = self._input_buffer()
        self._vms: dict[str, object] = {}
        self._static: dict[str, _StaticLibrary] = {}
        self._bound: dict[str, int] = {}  # static module -> the level whose weights it holds
        self._int8: dict[str, _Int8Library] = {}
        self._levels = [self._load_level(level, VirtualMachine) for level in manifest.levels]
        # threads: the build measured each level at 1, 2, 4, ... threads and recorded the fewest within 3 % of its
        # fastest (tiny levels lose more to the pool's hand-offs than they gain). A switch resizes TVM's pool when
        # the next level wants another count (~2.6 us here, one round trip over RPC).
        # TVM's pool runs only VM levels and levels on a remote board: local static and int8 levels run their
        # libraries' own pools, and TVM's, once started, spins a worker (sched_yield) for ~0.1 s beside them
        self._tvm_pool = self._session is not None or bool(self._vms)
        self.pool_threads = self._pool_size()  # what the process gave TVM (TVM_NUM_THREADS)
        best = manifest.threads
        self._cap = min(best, self.pool_threads) if best else self.pool_threads  # never more than it was given
        self._level_threads = [level.threads for level in manifest.levels]
        self._threads_now = self.pool_threads
        for lib in (*self._static.values(), *self._int8.values()):
            lib.threads(self._threads_now)
        self.level = -1
        self.set_level(0)

    def _load_level(self, level: Level, VirtualMachine) -> _Level:
        tvm = self._tvm
        module = level.library
        if module is None:
            raise ArtifactError(f"{self.artifact.path}: level {level.index} names no library")
        spec = self.artifact.manifest.modules[module]
        weights = self.artifact.level_weights(level)
        arrays = []  # main(x, *extra_inputs, *params)
        for extra in spec.extra_inputs:  # e.g. alpha for the alpha-input strategy
            if extra["name"] not in level.inputs:
                raise ArtifactError(f"{self.artifact.path}: level {level.index} gives no value for {extra['name']}")
            arrays.append(np.asarray(level.inputs[extra["name"]], dtype=extra["dtype"]).reshape(extra["shape"]))
        for p in spec.params:
            if p["name"] not in weights:
                raise ArtifactError(f"{self.artifact.path}: level {level.index} lacks weight {p['name']}")
            array = np.require(weights[p["name"]], requirements="C")
            if list(array.shape) != list(p["shape"]) or str(array.dtype) != p["dtype"]:
                raise ArtifactError(f"{self.artifact.path}: weight {p['name']} of level {level.index} is "
                                    f"{array.shape} {array.dtype}, the module wants {p['shape']} {p['dtype']}")
            arrays.append(array)
        lib, path = self._libs[module]
        index = level.index
        if spec.executor == "int8":
            if module not in self._int8:
                self._int8[module] = _Int8Library(path, self.input_spec, self.output_spec)
            int8 = self._int8[module]
            return _Level(module, int8.run, int8.input)
        if spec.executor == "static":
            if self._session is None:  # ctypes straight into the library: no packed call, no tensor conversion
                if module not in self._static:
                    self._static[module] = _StaticLibrary(path, self.input_spec, self.output_spec)
                static = self._static[module]
                kept = [aligned_copy(a) for a in arrays]  # the library reads them in place
                pointers = static.pointers(kept)

                def bind(static=static, pointers=pointers, kept=kept):  # `kept` lives as long as the binding
                    static.bind(pointers)

                y = tvm.runtime.tensor(np.zeros(self.output_spec.shape, self.output_spec.dtype), self.device)
                return _Level(module, static.run, static.input, bind, (lib, "lcs_forward", [y]))
            args = [tvm.runtime.tensor(a, self.device) for a in arrays]
            set_weights, forward = lib["lcs_set_weights"], lib["lcs_forward"]
            y = tvm.runtime.tensor(np.zeros(self.output_spec.shape, self.output_spec.dtype), self.device)

            def remote_call(forward=forward, x=self._input, y=y):  # no reference to self: the session must close
                forward(x, y)                                         # when the Runtime goes, not at the next GC
                return y.numpy()

            return _Level(module, remote_call, None, lambda: set_weights(*args), (lib, "lcs_forward", [y]))
        if module not in self._vms:
            self._vms[module] = VirtualMachine(lib, self.device)
        vm = self._vms[module]
        args = [tvm.runtime.tensor(a, self.device) for a in arrays]
        if self._session is None:  # the VM keeps the arguments: a call converts none of them (0.3 us of 16 weights)
            vm.save_function("main", f"lcs_level{index}", self._input, *args)
            saved = vm.module[f"lcs_level{index}"]
            # the output's storage is the VM's to reuse
            return _Level(module, lambda: np.from_dlpack(saved()).copy(), self._input_host, timed=(vm, "main", args))
        main = functools.partial(vm["main"], self._input, *args)
        return _Level(module, lambda: main().numpy(), None, timed=(vm, "main", args))

    def _runtime_function(self, name: str):
        if self._session is not None:
            return self._session.get_function(name)
        return self._tvm.get_global_func(name)

    def _pool_size(self) -> int:
        """Threads TVM's pool was given (TVM_NUM_THREADS): reset it to all of them and ask (or, where TVM's pool
        runs nothing, read what default_thread_pool_size or the user set, as TVM would)."""
        if not self._tvm_pool:
            given = os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
            return max(1, int(given)) if given and given.strip().isdigit() else usable_cpus()
        self._runtime_function("runtime.config_threadpool")(0, 0)  # 0 threads: TVM's "use every worker"
        return int(self._runtime_function("runtime.NumThreads")())

    def threads(self) -> int:
        """Threads the next call uses (TVM's pool's count on the board, over RPC)."""
        if not self._tvm_pool:
            return self._threads_now
        return int(self._runtime_function("runtime.NumThreads")())

    def set_threads(self, count: int) -> None:
        """Use at most `count` threads from now on (each level uses up to its own count). TVM's pool is one per
        process: every Runtime in this process shares it."""
        if count < 1:
            raise RunError(f"threads must be >= 1, got {count}")
        self._cap = min(int(count), self.pool_threads)
        self._use_threads(self._wanted_threads(self.level))

    def _wanted_threads(self, index: int) -> int:
        return min(self._level_threads[index] or self._cap, self._cap)

    def _use_threads(self, count: int) -> None:
        if count != self._threads_now:
            if self._tvm_pool:
                self._runtime_function("runtime.config_threadpool")(0, count)  # mode 0: TVM's default affinity
            self._threads_now = count
            for lib in (*self._static.values(), *self._int8.values()):
                lib.threads(count)

    @property
    def levels(self) -> tuple[Level, ...]:
        return self.artifact.levels

    def set_level(self, index: int) -> None:
        if index != self.level:
            if not 0 <= index < len(self._levels):
                raise RunError(f"level {index} does not exist; this artifact has levels 0..{len(self._levels) - 1}")
            self._use_threads(self._wanted_threads(index))
            level = self._levels[index]
            previous = self._levels[self.level].module if self.level >= 0 else None
            if previous is not None and previous != level.module:  # its workers would spin beside the next
                for pools in (self._int8, self._static):
                    if previous in pools:
                        pools[previous].park()
            if level.bind is not None and self._bound.get(level.module) != index:  # levels sharing a library
                level.bind()
                self._bound[level.module] = index
            self.level = index

    def level_for_alpha(self, alpha: float) -> int:
        """The index of the artifact level whose alpha is closest to `alpha`."""
        return min(range(len(self.levels)), key=lambda i: abs(self.levels[i].alpha - alpha))

    def _input_buffer(self):
        """One input tensor for every VM call. Locally it is a zero-copy view of a 64-byte aligned numpy array (what
        DLPack import demands), so a call costs a numpy copy instead of a fresh TVM tensor (~15 us, more than the
        whole width-0.25 network); over RPC it is a tensor on the board that each call copies into."""
        shape, dtype = self.input_spec.shape, np.dtype(self.input_spec.dtype)
        if self._session is not None:
            return None, self._tvm.runtime.tensor(np.zeros(shape, dtype), self.device)
        host = aligned_copy(np.zeros(shape, dtype))
        return host, self._tvm.runtime.from_dlpack(host)

    def run(self, x: np.ndarray, level: int | None = None) -> np.ndarray:
        """Outputs of one call at `level` (default: the current one). Not thread-safe: calls share their input."""
        if level is not None and level != self.level:
            self.set_level(level)
        x = np.asarray(x)
        if x.shape != self._input_shape:
            raise RunError(f"input shape {list(x.shape)} does not match the artifact's {list(self.input_spec.shape)}")
        current = self._levels[self.level]
        host = current.input_host
        if host is None:
            self._input.copyfrom(np.ascontiguousarray(x, dtype=self.input_spec.dtype))
        elif x.dtype == host.dtype:
            host[...] = x  # half the time of np.copyto, which checks casting rules
        else:
            np.copyto(host, x, casting="same_kind")
        return current.call()

    def time(self, level: int, number: int = 10, repeat: int = 5, *, min_repeat_ms: int = 0,
             warmup: int = 0) -> float:
        """Median milliseconds of one call at `level`, timed on the device by TVM's time_evaluator: `repeat` means of
        `number` calls (each mean at least `min_repeat_ms` long), the first `warmup` of them dropped."""
        self.set_level(level)
        if self._levels[level].timed is None:  # an int8 level: no TVM function to time, so time the call itself
            import time

            call, runs = self._levels[level].call, []
            for _ in range(warmup * number):
                call()
            for _ in range(repeat):
                start, count = time.perf_counter(), 0
                while count < number or (time.perf_counter() - start) * 1e3 < min_repeat_ms:
                    call()
                    count += 1
                runs.append((time.perf_counter() - start) / count)
            return float(np.median(runs) * 1e3)
        module, name, args = self._levels[level].timed
        x = self._tvm.runtime.tensor(np.zeros(self.input_spec.shape, self.input_spec.dtype), self.device)
        timer = module.time_evaluator(name, self.device, number=number, repeat=repeat + warmup,
                                      min_repeat_ms=min_repeat_ms)
        return float(np.median(timer(x, *args).results[warmup:]) * 1e3)

    @property
    def executors(self) -> list[str]:
        """Per level: "static" (lcs's C executor, tvm_build/cpu_executor.py), "int8" (integer C kernels,
        tvm_build/cpu_int8.py) or "vm" (the Relax VM)."""
        return ["static" if lv.bind is not None else "int8" if lv.module in self._int8 else "vm" for lv in self._levels]

    def check(self) -> list[float]:
        """Max abs difference per level between this device's outputs and the reference outputs in the artifact."""
        ref = self.artifact.reference()
        diffs = []
        for i, level in enumerate(self.levels):
            got = np.stack([self.run(x, level=i) for x in ref["input"]])
            diffs.append(float(np.max(np.abs(got - self.artifact.expected(ref, level)))))
        return diffs


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lcs.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--target", default=None, help="refuse artifacts built for another board")
    parser.add_argument("--check", action="store_true", help="compare every level with the reference outputs")
    parser.add_argument("--verify-key", default=None, metavar="PUB",
                        help="ed25519 public key (PEM): refuse the artifact unless ARTIFACT.sig is its valid signature")
    args = parser.parse_args(argv)
    try:
        if args.verify_key is not None:
            from lcs.signing import verify_artifact  # cryptography only when asked for

            verify_artifact(args.artifact, args.verify_key)
        rt = Runtime(args.artifact, expect_target=args.target)
        if args.check:
            diffs = rt.check()
            base = FLOAT_ATOL if rt.artifact.manifest.atol is None else rt.artifact.manifest.atol
            bad = []
            for level, diff in zip(rt.levels, diffs):
                tolerance = level_atol(level.bits, base)
                print(f"level {level.index} alpha {level.alpha:.4f} {level.label}: max abs diff {diff:.3g} "
                      f"(tolerance {tolerance:g})")
                bad += [diff] if not diff <= tolerance else []
            if bad:
                print(f"error: outputs differ from the reference by up to {max(bad):.3g}", file=sys.stderr)
                return 1
        else:
            print(f"{len(rt.levels)} levels loaded")
    except LcsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
