"""Sparse kernels for unstructured levels: a 1x1 convolution whose weight is mostly zeros runs as a CSR kernel, where
the build measured it faster than the dense kernel on the target.

A per-level module runs its convolutions NHWC with HWIO weights (export.ChannelsLast), so a 1x1 convolution is
out[P, Cout] = x[P, Cin] @ w[Cin, Cout] over the P = H*W pixels. The CSR kernel (our TIR, below) keeps w by output
channel: `data` (the nonzeros), `indices` (their input channels, int32) and `indptr` (Cout + 1 row starts). It walks
pixels in blocks of B, transposes the block of x into a local [Cin, B] tile once, and accumulates every output
channel as B-wide vector FMAs over that channel's nonzeros only: its work follows the nonzeros, not Cin * Cout. Blocks
of 8+ pixels store 8 output channels at a time as channels-last rows (_out_block); layers with fewer pixel blocks than
threads (4x4 and 2x2 pixels: one block) split each block's output channels between tasks (_chunks).

Each candidate layer (1x1, stride 1, groups 1, density at most MAX_DENSITY) is timed both ways on this machine, dense
(the kernel the build ships for the same conv2d: schedules.py's default) and sparse, both as bare kernels compiled
for the target, in interleaved rounds, and runs sparse only where that was at least MARGIN faster. The choice and
both timings go into the manifest ("sparse_layers" of the level); a module with sparse layers takes the three CSR
arrays in place of that weight (params "<w>:csr.data", "<w>:csr.indices", "<w>:csr.indptr"), so each sparse level
has its own module. Boards that cannot be timed from the build (cross builds) keep dense kernels.

Channels-last costs the CSR kernel a transpose in and out, as much as dense's whole work on layers of many pixels and
few channels; sparse_chw.py runs a stretch of the network channels-first instead (CSR 1x1s, depthwise convs, norms).
Each layer is timed on that kernel too ("chw_us"), and the level as a whole module both ways, channels-last and
with CHW stretches from STRETCH_FROM pixels down: the fastest runs ("sparse_stretch" of the level).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcs.runtime import filtered_tvm_logs

MAX_DENSITY = 0.5  # a layer with more nonzeros than this is never tried sparse
MARGIN = 0.9  # sparse must take at most this share of the dense kernel's time
CSR_PARTS = ("data", "indices", "indptr")
ROUNDS = 3
PAIRED_ROW = 8  # nonzeros per output channel from which the CSR kernel keeps two partial sums
# timings of 1 ms each per round; the fastest counts: load from other work only ever adds time, and on a busy 2-core
# machine a two-thread kernel's mean over 5 ms came out 10-50x its quiet time (mobilenet-v2: 0.9 ms for a 7 us
# kernel), which picked kernels by noise
REPEATS = 5
# CHW stretches tried per level: from each of these pixel counts (H*W) down to the smallest layer
STRETCH_FROM = (1, 64)
LEVEL_MARGIN = 0.97  # a CHW stretch must take at most this share of the channels-last module's time
LEVEL_MS = 5  # each whole-level timing runs this long (a 90 %-sparse mobilenet-v2 level: ~0.2 ms a call)


def csr_name(weight: str, part: str) -> str:
    return f"{weight}:csr.{part}"


@dataclass(frozen=True)
class Candidate:
    weight: str  # the main parameter (HWIO, 1 x 1 x Cin x Cout)
    height: int
    width: int
    cin: int
    cout: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _block(pixels: int) -> int:
    return next(b for b in (16, 8, 4, 2, 1) if pixels % b == 0)


def _out_block(c: Candidate) -> int:
    """Output channels whose [channels, B pixels] tile is stored together, as B channels-last rows: vector stores in
    place of scattered scalar ones where blocks of 8+ pixels make the scatter the cost (8x8 pixels, 32 -> 192 channels
    at 90 %: 4.3 -> 3.1 us); a 4-pixel block's few scalar stores are cheaper than the tile's extra pass."""
    if _block(c.pixels) < 8:
        return 1
    return next(b for b in (8, 4, 1) if c.cout % b == 0)


def _chunks(c: Candidate, threads: int) -> int:
    """Output-channel chunks per pixel block: enough parallel tasks for `threads` when the layer has fewer pixel
    blocks than threads (4x4 and 2x2 pixels are one block: without this, such a layer runs on one thread)."""
    blocks = c.pixels // _block(c.pixels)
    return max(1, min(-(-threads // blocks), c.cout // _out_block(c)))


def csr_kernel(c: Candidate, nnz: int, threads: int = 1):
    """The TIR CSR kernel of one layer: out = conv2d_1x1(x, w) with w as (data, indices, indptr) by output channel.
    `threads`: the thread count it is planned for (its parallel tasks: pixel blocks x output-channel chunks)."""
    from tvm.script import tirx as T

    P, Cin, Cout, H, W = c.pixels, c.cin, c.cout, c.height, c.width
    B = _block(P)
    blocks = P // B
    nnz = max(nnz, 1)  # a layer of zeros still passes one (unread) element: no zero-size buffers
    paired = nnz >= PAIRED_ROW * Cout  # rows long enough for two partial sums to pay (a few nonzeros: slower)
    # output channels stored together as B channels-last rows; not after paired rows (4x4 pixels, 96 -> 576 channels:
    # 3.4 -> 4.0 us)
    OB = 1 if paired else _out_block(c)
    chunks = _chunks(c, threads)
    per_chunk = -(-(Cout // OB) // chunks)  # output-channel blocks per task

    @T.macro
    def block_outputs(tile, tbase, pb, first, acc, acc2, otile, data, indices, indptr, out):
        # output-channel blocks first .. first + per_chunk of pixel block pb, from its [Cin, B] tile at tbase
        for k in range(per_chunk):  # from 0: a loop from a task-dependent start gave the second task wrong sums
            ob = first + k
            if ob < Cout // OB:
                for oo in range(OB):
                    for lane in T.vectorized(B):
                        acc[lane] = T.float32(0)
                    if paired:
                        for lane in T.vectorized(B):
                            acc2[lane] = T.float32(0)
                        # two partial sums over alternate nonzeros: one chain of dependent adds waits out the add's
                        # latency on every nonzero (2x2 pixels, 960 -> 160 channels at 90 %: 8.9 -> 5.5 us)
                        for jj in range((indptr[ob * OB + oo + 1] - indptr[ob * OB + oo]) // 2):
                            for lane in T.vectorized(B):
                                acc[lane] = acc[lane] + data[indptr[ob * OB + oo] + 2 * jj] \
                                    * tile[tbase + indices[indptr[ob * OB + oo] + 2 * jj] * B + lane]
                                acc2[lane] = acc2[lane] + data[indptr[ob * OB + oo] + 2 * jj + 1] \
                                    * tile[tbase + indices[indptr[ob * OB + oo] + 2 * jj + 1] * B + lane]
                        if (indptr[ob * OB + oo + 1] - indptr[ob * OB + oo]) % 2 == 1:
                            for lane in T.vectorized(B):
                                acc[lane] = acc[lane] + data[indptr[ob * OB + oo + 1] - 1] \
                                    * tile[tbase + indices[indptr[ob * OB + oo + 1] - 1] * B + lane]
                        for lane in T.vectorized(B):
                            otile[oo * B + lane] = acc[lane] + acc2[lane]
                    else:
                        for j in range(indptr[ob * OB + oo], indptr[ob * OB + oo + 1]):
                            for lane in T.vectorized(B):
                                acc[lane] = acc[lane] + data[j] * tile[tbase + indices[j] * B + lane]
                        for lane in T.vectorized(B):
                            otile[oo * B + lane] = acc[lane]
                # channels-last rows of OB channels: one vector store per pixel, not OB * B scalar stores
                for lane in T.unroll(B):
                    for oo in T.vectorized(OB):
                        out[(pb * B + lane) * Cout + ob * OB + oo] = otile[oo * B + lane]

    @T.prim_func(private=True)
    def kernel(x4: T.Buffer((1, H, W, Cin), "float32"), data: T.Buffer((nnz,), "float32"),
               indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((Cout + 1,), "int32"),
               out4: T.Buffer((1, H, W, Cout), "float32")):
        # our own loops, already scheduled: MetaSchedule and the fuser leave it alone (opaque)
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        x = T.decl_buffer((P * Cin,), "float32", data=x4.data)
        out = T.decl_buffer((P * Cout,), "float32", data=out4.data)
        if chunks == 1:
            for pb in T.parallel(blocks):
                tile = T.alloc_buffer((Cin * B,), "float32", scope="local")
                acc = T.alloc_buffer((B,), "float32", scope="local")
                acc2 = T.alloc_buffer((B,), "float32", scope="local")
                otile = T.alloc_buffer((OB * B,), "float32", scope="local")
                for i in range(Cin):
                    for lane in T.vectorized(B):
                        tile[i * B + lane] = x[(pb * B + lane) * Cin + i]
                block_outputs(tile, 0, pb, 0, acc, acc2, otile, data, indices, indptr, out)
        else:
            # a block's output channels split between tasks: its tile is made once, before them (made per task, it
            # cost one thread 0.4-1.7 us more on 4x4 and 2x2 layers of many input channels)
            shared = T.alloc_buffer((P * Cin,), "float32")
            for pb, i in T.grid(blocks, Cin):
                for lane in T.vectorized(B):
                    shared[(pb * Cin + i) * B + lane] = x[(pb * B + lane) * Cin + i]
            for task in T.parallel(blocks * chunks):
                acc = T.alloc_buffer((B,), "float32", scope="local")
                acc2 = T.alloc_buffer((B,), "float32", scope="local")
                otile = T.alloc_buffer((OB * B,), "float32", scope="local")
                block_outputs(shared, task // chunks * Cin * B, task // chunks, task % chunks * per_chunk, acc,
                              acc2, otile, data, indices, indptr, out)

    return kernel


def to_csr(w_hwio: np.ndarray) -> dict[str, np.ndarray]:
    """A 1 x 1 x Cin x Cout weight as CSR rows by output channel."""
    w = np.ascontiguousarray(w_hwio.reshape(w_hwio.shape[2], w_hwio.shape[3]).T)  # [Cout, Cin]
    nonzero = w != 0
    indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))]).astype(np.int32)
    data, indices = w[nonzero].astype(np.float32), np.nonzero(nonzero)[1].astype(np.int32)
    if data.size == 0:  # see csr_kernel: one unread element
        data, indices = np.zeros(1, np.float32), np.zeros(1, np.int32)
    return {"data": data, "indices": indices, "indptr": indptr}


def _param_names(main, names: list[str]) -> dict:
    """main's weight parameters (after x) -> the names of the arrays they take, by position (Relax's own var names
    are the lifted transform's, e.g. lv7)."""
    params = list(main.params)[1:]
    if len(params) != len(names):
        raise ValueError(f"main takes {len(params)} weights, {len(names)} names given")
    return dict(zip(params, names))


def candidates(mod, names: list[str]) -> dict[str, Candidate]:
    """The 1x1 NHWC/HWIO convolutions of `main` (stride 1, no padding, groups 1) whose weight is a parameter, by
    the weight's name (`names`: main's weights in order)."""
    from tvm import relax

    main = mod["main"]
    params = _param_names(main, names)
    found: dict[str, Candidate] = {}

    @relax.expr_functor.visitor
    class Finder(relax.PyExprVisitor):
        def visit_call_(self, call):
            if getattr(call.op, "name", None) == "relax.nn.conv2d" and call.args[1] in params:
                a = call.attrs
                x_shape = [int(d) for d in call.args[0].ty.shape.values]
                w_shape = [int(d) for d in call.args[1].ty.shape.values]
                plain = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) == ("NHWC", "HWIO", "NHWC") \
                    and [int(s) for s in a.strides] == [1, 1] and [int(p) for p in a.padding] == [0, 0, 0, 0] \
                    and [int(d) for d in a.dilation] == [1, 1] and int(a.groups) == 1 and w_shape[:2] == [1, 1] \
                    and x_shape[0] == 1 and str(call.args[0].ty.dtype) == "float32" \
                    and str(call.ty.dtype) == "float32"
                name = params[call.args[1]]
                if plain and name not in found:
                    found[name] = Candidate(name, x_shape[1], x_shape[2], w_shape[2], w_shape[3])
            super().visit_call_(call)

    Finder().visit_expr(main)
    return found


class Chooser:
    """Per level: which candidate layers run sparse, and in which layout, by timing on this machine, or none.

    Per layer, bare kernels: dense, the channels-last CSR kernel and the CHW one (sparse_chw.py). Per level, whole
    modules: the channels-last one (each layer's faster kernel) against CHW stretches (sparse_chw.rewrite) from
    each of STRETCH_FROM pixels down, each layer inside a stretch on the CHW kernel where that timed faster than
    dense; the fastest module runs, recorded as the level's "sparse_stretch"."""

    def __init__(self, target, threads: int) -> None:
        self.target, self.threads = target, threads
        self._dense_us: dict[tuple, float] = {}  # dense kernels do not depend on the weights: timed once per shape

    def __call__(self, mod, arrays: dict[str, np.ndarray], from_torch: dict[str, str]):
        """(module, weights, from_torch, sparse_layers records, sparse_stretch record or None) for one level;
        unchanged when nothing is faster."""
        found = candidates(mod, list(arrays))
        tried = {}
        for name, c in found.items():
            w = arrays[name]
            density = float(np.count_nonzero(w)) / w.size
            if density <= MAX_DENSITY:
                tried[name] = (c, to_csr(w), density)
        if not tried:
            return mod, arrays, from_torch, [], None
        layers = {n: (c, csr) for n, (c, csr, _) in tried.items()}
        # chosen by one-thread timings: the fastest of a few 1 ms runs finds a quiet moment of one core on a busy
        # machine, two threads need both cores quiet at once (mobilenet-v2 at load 8 on 2 cores: two-thread timings
        # picked a 1.5x slower CSR kernel and left 2x faster ones dense). Both kernels split their work the same way
        # between threads (pixel blocks, or output channels), so the planned count's timings are recorded only.
        measured = self._measure(layers, sorted({1, self.threads}))
        timings, planned = measured[1], measured[self.threads] if self.threads > 1 else {}
        records, hwc, chw_ok = [], {}, {}
        for name, (c, csr, density) in tried.items():
            dense_us, sparse_us, chw_us = timings[name]
            nnz = int(np.count_nonzero(arrays[name]))
            if sparse_us <= MARGIN * dense_us:
                hwc[name] = (c, nnz)
            if chw_us <= MARGIN * dense_us:
                chw_ok[name] = (c, nnz)
            records.append({"weight": name, "kernel": "csr" if name in hwc else "dense", "density": round(density, 4),
                            "shape": [c.height, c.width, c.cin, c.cout], "dense_us": round(dense_us, 2),
                            "sparse_us": round(sparse_us, 2), "chw_us": round(chw_us, 2),
                            **({"at_threads": {str(self.threads): [round(t, 2) for t in planned[name]]}}
                               if name in planned else {})})
        names = list(arrays)
        variants = {"hwc": (hwc, {}, None)} if hwc else {}
        for start in STRETCH_FROM:
            chw = {n: v for n, v in chw_ok.items() if v[0].pixels >= start}
            if chw and all(variants.get(k, (None, None))[1] != chw for k in variants):
                variants[f"chw>={start}"] = ({n: v for n, v in hwc.items() if n not in chw}, chw, start)
        if not variants:
            return mod, arrays, from_torch, records, None
        from tvm_build import sparse_chw

        modules = {k: sparse_chw.rewrite(mod, names, h, c, start if start is not None else 1 << 30, self.threads)
                   for k, (h, c, start) in variants.items()}
        weights = {k: self._csr_arrays(arrays, from_torch, {**h, **c}, tried) for k, (h, c, _) in variants.items()}
        level_us = self._time_levels(modules, {k: w[0] for k, w in weights.items()}) if len(variants) > 1 \
            else {k: None for k in variants}
        # the channels-last module unless a stretch is clearly faster (whole-module timings vary by a few %)
        best = min(level_us, key=lambda k: level_us[k] * (1.0 if k == "hwc" else 1 / LEVEL_MARGIN)) \
            if len(variants) > 1 else next(iter(variants))
        h, c, start = variants[best]
        for r in records:
            r["kernel"] = "csr_chw" if r["weight"] in c else "csr" if r["weight"] in h else "dense"
        stretch = {"layout": "chw" if c else "hwc", "from_pixels": start,
                   "level_us": {k: (round(v, 1) if v is not None else None) for k, v in level_us.items()}}
        out_arrays, how = weights[best]
        return modules[best], out_arrays, how, records, stretch

    @staticmethod
    def _csr_arrays(arrays, from_torch, chosen: dict, tried: dict):
        """The level's weights with every chosen layer's as its three CSR arrays (same place in the order)."""
        out_arrays: dict[str, np.ndarray] = {}
        how = dict(from_torch)
        for name, array in arrays.items():
            if name not in chosen:
                out_arrays[name] = array
                continue
            csr = tried[name][1]
            for part in CSR_PARTS:
                out_arrays[csr_name(name, part)] = csr[part]
                how[csr_name(name, part)] = f"{from_torch.get(name, '')} csr(by output channel).{part}".strip()
        return out_arrays, how

    def _time_levels(self, modules: dict, weights: dict) -> dict[str, float]:
        """{variant: us}: each module built as the build ships it (default schedules, static executor), bound to its
        weights and timed on one thread through lcs_forward, interleaved rounds, the fastest of each."""
        import tempfile
        from pathlib import Path

        import tvm

        import targets
        from tvm_build import schedules
        from tvm_build.compile import build_library, fuse_kernels
        from tvm_build.cpu_executor import ENTRY, SET_WEIGHTS

        dev = tvm.cpu()
        libs, args = {}, {}
        with tempfile.TemporaryDirectory(prefix="lcs-sparse-") as scratch:
            for k, mod in modules.items():
                path = Path(scratch) / f"{k.replace('>=', '_')}.so"
                with filtered_tvm_logs():
                    info = build_library(schedules.apply(fuse_kernels(mod, self.target), self.target), self.target,
                                         targets.load("host"), path)
                if info["executor"] != "static":
                    raise ValueError(f"a sparse level module did not plan as a static executor: {info}")
                libs[k] = tvm.runtime.load_module(str(path))
                x_spec = mod["main"].params[0].ty
                shape = [int(d) for d in x_spec.shape.values]
                x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32), dev)
                ret = [int(d) for d in mod["main"].ret_ty.shape.values]
                y = tvm.runtime.tensor(np.zeros(ret, np.float32), dev)
                bound = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in weights[k].values()]
                libs[k][SET_WEIGHTS](*bound)  # the executor keeps pointers to them: they live as long as it runs
                args[k] = (x, y, bound)
            pool = tvm.get_global_func("runtime.config_threadpool")
            pool(0, 1)
            try:
                runs: dict[str, list] = {k: [] for k in libs}
                for _ in range(ROUNDS):
                    for k, lib in libs.items():
                        timer = lib.time_evaluator(ENTRY, dev, number=1, repeat=REPEATS, min_repeat_ms=LEVEL_MS)
                        runs[k] += list(timer(*args[k][:2]).results)
            finally:
                pool(0, 0)
            del libs
        return {k: float(np.min(v)) * 1e6 for k, v in runs.items()}

    def _measure(self, layers: dict[str, tuple[Candidate, dict]],
                 counts: list[int]) -> dict[int, dict[str, tuple[float, float, float]]]:
        """{threads: {weight: (dense us, sparse us, chw us)}}: the three kernels of every layer timed on this machine
        on each count of threads (the kernels as built for the planned count), interleaved rounds, the fastest of
        each (REPEATS). All are timed as bare kernels of one library, compiled as the static executor compiles them
        (asserts off): a dense kernel called through the Relax VM paid ~1 us more per call, a fifth of a 4x4-pixel
        layer, which tilted the choice to sparse."""
        import tvm

        from tvm_build.compile import compile_kernels
        from tvm_build.sparse_chw import csr_chw_kernel

        dev = tvm.cpu()
        rng = np.random.default_rng(0)
        shapes = {self._key(c): c for c, _ in layers.values() if any(self._key(c, n) not in self._dense_us
                                                                      for n in counts)}
        funcs, args = {}, {}
        dense = _dense_kernels(list(shapes.values()), self.target)
        dense_of = {}
        for i, (key, c) in enumerate(shapes.items()):
            dense_of[key] = f"dense{i}"
            funcs[f"dense{i}"] = dense[i]
            args[f"dense{i}"] = [tvm.runtime.tensor(rng.standard_normal(s).astype(np.float32), dev)
                                 for s in ((1, c.height, c.width, c.cin), (1, 1, c.cin, c.cout),
                                           (1, c.height, c.width, c.cout))]
        for i, (name, (c, csr)) in enumerate(layers.items()):
            csr_args = [tvm.runtime.tensor(csr[p], dev) for p in CSR_PARTS]
            funcs[f"sparse{i}"] = csr_kernel(c, int(csr["data"].size), self.threads)
            args[f"sparse{i}"] = [tvm.runtime.tensor(rng.standard_normal((1, c.height, c.width, c.cin))
                                                     .astype(np.float32), dev), *csr_args,
                                  tvm.runtime.tensor(np.zeros((1, c.height, c.width, c.cout), np.float32), dev)]
            funcs[f"chw{i}"] = csr_chw_kernel(c, int(csr["data"].size))
            args[f"chw{i}"] = [tvm.runtime.tensor(rng.standard_normal((1, c.cin, c.height, c.width))
                                                  .astype(np.float32), dev), *csr_args,
                               tvm.runtime.tensor(np.zeros((1, c.cout, c.height, c.width), np.float32), dev)]
        with tvm.transform.PassContext(config={"tirx.disable_assert": True}), filtered_tvm_logs():
            lib = compile_kernels(tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in funcs.items()}),
                                  self.target).mod
        pool = tvm.get_global_func("runtime.config_threadpool")
        out = {}
        for threads in counts:
            pool(0, threads)
            try:
                runs: dict[str, list] = {k: [] for k in funcs}
                for _ in range(ROUNDS):
                    done = set()  # each dense shape once per round
                    for i, (name, (c, _)) in enumerate(layers.items()):
                        dense_k = dense_of.get(self._key(c))
                        for k in ([dense_k] if dense_k and dense_k not in done else []) + [f"sparse{i}", f"chw{i}"]:
                            timer = lib.time_evaluator(k, dev, number=1, repeat=REPEATS, min_repeat_ms=1)
                            runs[k] += list(timer(*args[k]).results)
                            done.add(k)
            finally:
                pool(0, 0)
            for key, k in dense_of.items():
                self._dense_us[(*key, threads)] = float(np.min(runs[k])) * 1e6
            out[threads] = {n: (self._dense_us[self._key(c, threads)], float(np.min(runs[f"sparse{i}"])) * 1e6,
                                float(np.min(runs[f"chw{i}"])) * 1e6)
                            for i, (n, (c, _)) in enumerate(layers.items())}
        return out

    @staticmethod
    def _key(c: Candidate, threads: int | None = None) -> tuple:
        shape = (c.height, c.width, c.cin, c.cout)
        return shape if threads is None else (*shape, threads)


def _dense_kernels(shapes: list[Candidate], target) -> list:
    """The dense kernel the build ships for each 1x1 convolution (fused, default schedule), as a PrimFunc
    (x, w, out)."""
    import tvm
    from tvm import relax

    if not shapes:
        return []
    from tvm_build.compile import fuse_kernels
    from tvm_build.schedules import apply as default_schedules

    bb = relax.BlockBuilder()
    for i, c in enumerate(shapes):
        x = relax.Var("x", relax.TensorType([1, c.height, c.width, c.cin], "float32"))
        w = relax.Var("w", relax.TensorType([1, 1, c.cin, c.cout], "float32"))
        with bb.function(f"dense{i}", [x, w]):
            with bb.dataflow():
                y = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="HWIO")))
            bb.emit_func_output(y)
    with filtered_tvm_logs():
        mod = default_schedules(fuse_kernels(bb.get(), target), target)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    out = []
    for i in range(len(shapes)):
        calls = [b.value for block in mod[f"dense{i}"].body.blocks for b in block.bindings
                 if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)]
        if len(calls) != 1:  # the conv alone fuses into one kernel; anything else is not what the build ships
            raise ValueError(f"a lone 1x1 convolution became {len(calls)} kernels")
        out.append(mod[calls[0].args[0]])
    return out
