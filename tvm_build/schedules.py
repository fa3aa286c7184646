"""Default CPU schedules for kernels nobody tuned: NHWC convolutions (dense and depthwise) and matmuls as register
tiles, written once here, so an untuned build (and every kernel a short tuning run left untouched) is not TVM's
unscheduled loop nest.

Legalized kernels are plain loop nests (8-60x slower than ONNX Runtime on the model zoo, issue 16). Every
convolution of a per-level module is NHWC with HWIO weights (export.ChannelsLast), so its output channels are
innermost and contiguous, and so are the weights' output channels: the schedule keeps a tile of TILE_PIXELS output
pixels (up to a whole row) x 1-4 vectors of output channels in registers (the cache-write block), runs the reduction
(kh, kw, cin) around it with the weight loaded as vectors and each input value broadcast, and writes the tile once.
The tile loops are ordered so that the smaller operand is the one read again for every tile (channel tiles outside
when the weights outweigh the input: resnet18's 512-channel convs at 4x4 pixels, 4.5x faster than pixel tiles
outside) and all of them run in parallel together. The same shape of schedule fits a depthwise convolution (no cin
loop) and a matmul/dense (pixels = rows). A kernel the rule does not recognise, or on which a schedule step fails, keeps its default loops; blocks after
the main one (bias, norm, clip fused into the kernel) get their innermost loop vectorized and outer loop parallel.
GroupNorm kernels are not scheduled but replaced by our own two-pass loops (group_norm_kernel): their legalized form
reshapes to 5-D and back and makes four passes, half of a 90 %-sparse mobilenet-v2 level's time. What the fuser put
after the norm (ReLU, ReLU6's clip, a residual add) is rebuilt from its TIR as the kernel's epilogue.
"""

from __future__ import annotations

import os

DATA_PAR, REDUCE = 0, 2  # IterVar kinds
TILE_PIXELS = 8  # output pixels (w) per register tile; with 2 vectors of channels: 16 accumulators (resnet8 convs 1.5x faster than 4)


def _divisor(n: int, options) -> int:
    return next((o for o in options if n % o == 0), 1)


def _vector_lanes(target) -> int:
    """fp32 lanes of the target's vectors (AVX2: 8, NEON: 4; AVX-512 as AVX2: wider tiles gain little here)."""
    keys = [str(k) for k in target.keys]
    mattr = [str(a) for a in (target.attrs.get("mattr") or [])]
    mcpu = str(target.attrs.get("mcpu") or "")
    if "arm_cpu" in keys or any("neon" in a for a in mattr) or "aarch64" in str(target.attrs.get("mtriple") or ""):
        return 4
    return 8 if mcpu not in ("", "generic") or any("avx" in a for a in mattr) else 4


def _extent(sch, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if hasattr(ext, "value") or isinstance(ext, int) else None


def _schedule_reduction(sch, block, lanes: int) -> bool:
    """Register-tile one reduction block whose iteration is (spatial..., reduce...) with the channel (last spatial)
    innermost in memory. Returns False (schedule untouched in spirit: caller discards) when it does not fit."""
    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or REDUCE not in kinds:
        return False
    first_reduce = kinds.index(REDUCE)
    if any(k != REDUCE for k in kinds[first_reduce:]) or any(k != DATA_PAR for k in kinds[:first_reduce]):
        return False
    spatial, reduce = loops[:first_reduce], loops[first_reduce:]
    extents = [_extent(sch, l) for l in loops]
    if None in extents or len(spatial) < 1:
        return False
    channels = extents[first_reduce - 1]
    pixels = extents[first_reduce - 2] if first_reduce >= 2 else 1
    tile, vec = _register_tile(pixels, channels, lanes)
    if vec < 2:
        return False
    c_o, c_i = sch.split(spatial[-1], [None, vec])
    if first_reduce >= 2:
        p_o, p_i = sch.split(spatial[-2], [None, tile])
        pixel_loops, inner = list(spatial[:-2]) + [p_o], [p_i, c_i]
    else:
        pixel_loops, inner = [], [c_i]
    # the tile loops' order decides which operand is read again from memory for every tile of the other: the
    # weights once per pixel tile (pixels outside) or the input once per channel tile (channels outside). Re-read
    # the smaller one, which stays in cache: the wide convs at 4x4/8x8 pixels have weights 10-100x their input, and
    # streaming 9 MB of weights per pixel tile ran them at a tenth of the other convs' speed (resnet18)
    if _channels_outside(stmt, stmt.iter_vars[first_reduce - 1].var):
        outer = [c_o] + pixel_loops
    else:
        outer = pixel_loops + [c_o]
    sch.reorder(*outer, *reduce, *inner)
    # parallel first: once the reduction is decomposed TIR no longer takes its block as a reduction under the loop.
    # All tile loops go to the thread pool together, so 16 pixels x 512 channels splits as well as 32x32 x 64
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if (_extent(sch, fused) or 1) > 1:
        sch.parallel(fused)
    acc = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(acc, fused)
    init = sch.decompose_reduction(block, reduce[0])
    # the tile: pixels unrolled, channels as vectors, in the accumulator and in its init and write-back
    # TIR refuses `vectorize` on a loop inside the reduction block; fully unrolled, LLVM's SLP vectorizer turns
    # the tile's contiguous channel FMAs into vector FMAs
    for loop in inner:
        sch.unroll(loop)
    for b in (init, acc):
        sch.vectorize(sch.get_loops(b)[-1])
    return True


ACCUMULATORS = 16  # vector registers a tile may hold (AVX2 has 16, AVX-512 and NEON 32: the rest hold operands)


def _register_tile(pixels: int, channels: int, lanes: int) -> tuple[int, int]:
    """(output pixels, output channels) of one register tile: the most pixels up to TILE_PIXELS that divide the row
    (a 4-wide row as one tile of 4, a 7-wide as 7), then as many channel vectors (up to 4) as keep the tile within
    ACCUMULATORS registers. Channels that no vector divides give (tile, 1) when there are many: not scheduled."""
    tile = max(d for d in range(1, min(pixels, TILE_PIXELS) + 1) if pixels % d == 0)
    for nvec in (4, 2, 1):
        if tile * nvec <= ACCUMULATORS and channels % (nvec * lanes) == 0:
            return tile, nvec * lanes
    if lanes > 2 and channels % (lanes // 2) == 0:
        return tile, lanes // 2
    # a few channels no vector divides (a classifier's 10 outputs): all of them as the tile, LLVM vectorizes what fits
    return tile, channels if channels <= 4 * lanes else 1


def _channels_outside(stmt, channel_var) -> bool:
    """Whether the channel tiles should be the outer loop: the buffers the block reads through the output channel
    (weights) are bigger than those it reads without it (the input)."""
    from tvm.tirx.analysis import undefined_vars

    def uses_channel(region) -> bool:
        return any(v.same_as(channel_var) for r in region.region for v in undefined_vars(r.min))

    def size(buf) -> int:
        n = 1
        for d in buf.shape:
            n *= int(d)
        return n * buf.dtype.bits // 8

    with_c = sum(size(r.source) for r in stmt.reads if uses_channel(r))
    without_c = sum(size(r.source) for r in stmt.reads if not uses_channel(r))
    return with_c > without_c


def _schedule_elementwise(sch, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    stmt = sch.get(block)
    if any(int(iv.iter_type) != DATA_PAR for iv in stmt.iter_vars) or len(loops) != len(stmt.iter_vars):
        return
    last = _extent(sch, loops[-1])
    if last and last % lanes == 0 and last > lanes:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)
    elif last and last <= 4 * lanes and last > 1:
        sch.vectorize(loops[-1])
    if len(loops) > 1 and (_extent(sch, loops[0]) or 1) > 1:
        sch.parallel(loops[0])
    elif len(loops) > 2:
        sch.parallel(sch.fuse(loops[0], loops[1]))


def schedule_func(func, lanes: int):
    """One PrimFunc with the default schedule, or the function unchanged when the rule does not apply."""
    import tvm
    from tvm.s_tir import Schedule

    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:  # tuned, or our own (sparse.py)
        return func
    norm = _group_norm_params(func)
    if norm is not None:
        return group_norm_kernel(*norm, lanes)
    try:
        sch = Schedule(tvm.IRModule({"main": func}))
        blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
    except Exception:  # noqa: BLE001 -- no schedulable blocks: keep it
        return func
    reductions = [b for b in blocks if any(int(iv.iter_type) == REDUCE for iv in sch.get(b).iter_vars)]
    if not reductions:
        return _schedule_injective(sch, blocks, lanes) or func
    if len(reductions) != 1:
        return func
    try:
        if not _schedule_reduction(sch, reductions[0], lanes):
            return func
        for b in blocks:
            if not b.same_as(reductions[0]):
                try:
                    _schedule_elementwise(sch, b, lanes)
                except Exception:  # noqa: BLE001 -- a side block keeps its loops
                    pass
    except Exception:  # noqa: BLE001 -- the rule did not fit this kernel: keep the default loops
        return func
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _schedule_injective(sch, blocks, lanes: int):
    """A kernel of data movement and elementwise math (e.g. ReLU6 that ConvertLayout left in NCHW between two
    transposes): every block but the last inlined into it (transpose -> clip -> transpose becomes one
    contiguous loop), then parallel + vectorized. None when nothing could be done."""
    changed = False
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
            changed = True
        except Exception:  # noqa: BLE001 -- a block that cannot be inlined keeps its own loops
            try:
                _schedule_elementwise(sch, b, lanes)
            except Exception:  # noqa: BLE001
                pass
    try:
        _schedule_elementwise(sch, blocks[-1], lanes)
        changed = True
    except Exception:  # noqa: BLE001
        pass
    return sch.mod["main"].with_attr("tirx.is_scheduled", True) if changed else None


_GROUP_NORM_BLOCKS = 6  # input reshape, statistics, weight and bias reshapes, normalise, output reshape
_EPILOGUE_OPS = ("Max", "Min", "Add", "Sub", "Mul")  # what an elementwise epilogue may compute (ReLU, ReLU6, residual)


def _group_norm_params(func):
    """(H, W, C, groups, eps, epilogue) of a legalized NHWC GroupNorm kernel (`group_norm`: x, weight, bias[,
    residual] -> out, with at most ReLU/clip/a residual add fused after it), else None. Its legalized loops read the
    input through a 5-D reshape and make four passes over it; group_norm_kernel replaces them with two. `epilogue`
    is None, or a function (normalised value, residual value) -> output value rebuilt from the fused blocks."""
    import tvm
    from tvm import tirx
    from tvm.s_tir import Schedule

    if len(func.params) not in (4, 5):
        return None
    try:
        sch = Schedule(tvm.IRModule({"main": func}))
        blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    except Exception:  # noqa: BLE001 -- not a block kernel
        return None
    norm, tail = blocks[:_GROUP_NORM_BLOCKS], blocks[_GROUP_NORM_BLOCKS:]
    named = {b.name_hint: b for b in norm}
    stats = [b for b in norm if len(b.writes) == 2 and any(int(iv.iter_type) == REDUCE for iv in b.iter_vars)]
    if len(norm) != _GROUP_NORM_BLOCKS or "T_group_norm" not in named or len(stats) != 1 \
            or not isinstance(named["T_group_norm"].body, tirx.BufferStore):
        return None
    # the kernel's own buffers: input (read by the first reshape), weight/bias (read by the small reshapes), output
    try:
        buffers = [norm[0].reads[0].source, named["T_reshape_1"].reads[0].source,
                   named["T_reshape_2"].reads[0].source, blocks[-1].writes[0].source]
        shapes = [[int(d) for d in b.shape] for b in buffers]
        groups = int(stats[0].writes[0].source.shape[-1])
    except Exception:  # noqa: BLE001 -- symbolic shapes, other block names
        return None
    if [len(sh) for sh in shapes] != [4, 1, 1, 4] or shapes[0] != shapes[3] or shapes[0][0] != 1 \
            or shapes[1] != [shapes[0][3]] or shapes[2] != shapes[1] \
            or any(str(b.dtype) != "float32" for b in buffers):
        return None
    # parameters in the order group_norm_kernel takes them: x, weight, bias, [residual,] out
    order = list(func.params)  # TVM 0.27: the parameters are the buffers
    residual = order[3] if len(order) == 5 else None
    if not all(a.same_as(b) for a, b in zip([buffers[0], buffers[1], buffers[2]], order[:3])) \
            or not buffers[3].same_as(order[-1]) \
            or (residual is not None and [int(d) for d in residual.shape] != shapes[0]):
        return None
    epilogue = _epilogue(tail, norm[-1].writes[0].source, residual)
    if tail and epilogue is None or residual is not None and not tail:
        return None
    eps = [e.args[0].b.value for e in _walk(named["T_group_norm"].body.value)
           if _is_call(e) and getattr(e.op, "name", "") == "tirx.rsqrt"
           and isinstance(e.args[0], tirx.Add) and isinstance(e.args[0].b, tirx.FloatImm)]
    if len(eps) != 1:
        return None
    _, H, W, C = shapes[0]
    if groups < 1 or C % groups:
        return None
    # channels last for real: the 5-D view is (1, H, W, groups, C / groups) and the statistics keep the group axis
    # (a norm over axis 1 of an NCHW tensor whose three extents happen to match has the same buffer shapes)
    from tvm.tirx.analysis import undefined_vars

    group_var = stats[0].iter_vars[1].var if len(stats[0].iter_vars) > 1 else None
    uses = [group_var is not None and any(v.same_as(group_var) for v in undefined_vars(r.min))
            for r in stats[0].reads[0].region]
    if [int(d) for d in norm[0].writes[0].source.shape] != [1, H, W, groups, C // groups] \
            or uses != [False, False, False, True, False]:
        return None
    return H, W, C, groups, float(eps[0]), epilogue


def _epilogue(tail, normalised, residual):
    """The elementwise blocks fused after a norm as one function (value, residual value) -> value, or None when one
    of them is more than pointwise Max/Min/Add/Sub/Mul of the previous block's value, the residual and constants."""
    from tvm import tirx

    if not tail:
        return None
    steps, prev = [], normalised
    for block in tail:
        body = block.body
        ivars = [iv.var for iv in block.iter_vars]
        if not isinstance(body, tirx.BufferStore) or len(block.writes) != 1 or not _same_vars(body.indices, ivars):
            return None
        step = _pointwise(body.value, ivars, prev, residual)
        if step is None:
            return None
        steps.append(step)
        prev = body.buffer
    return Epilogue(tuple(steps), residual is not None)


class Epilogue:
    """Elementwise steps fused after a norm, each (value, residual value) -> value; `residual`: the kernel takes a
    residual input (between bias and out)."""

    def __init__(self, steps: tuple, residual: bool) -> None:
        self.steps, self.residual = steps, residual

    def apply(self, value, res):
        for step in self.steps:
            value = step(value, res)
        return value


def _same_vars(indices, ivars) -> bool:
    return len(indices) == len(ivars) and all(i.same_as(v) for i, v in zip(indices, ivars))


def _pointwise(expr, ivars, prev, residual):
    from tvm import tirx

    if type(expr).__name__ in ("BufferLoad", "TensorLoad") and _same_vars(expr.indices, ivars):  # 0.27: TensorLoad
        source = expr.source if hasattr(expr, "source") else expr.buffer
        if source is not None and source.same_as(prev):
            return lambda v, r: v
        if residual is not None and source is not None and source.same_as(residual):
            return lambda v, r: r
        return None
    if isinstance(expr, tirx.FloatImm) and "float32" in str(expr.ty):
        c = float(expr.value)
        return lambda v, r: tirx.const(c, "float32")
    if type(expr).__name__ in _EPILOGUE_OPS:
        a, b = _pointwise(expr.a, ivars, prev, residual), _pointwise(expr.b, ivars, prev, residual)
        if a is None or b is None:
            return None
        op = type(expr)
        return lambda v, r: op(a(v, r), b(v, r))
    return None


def _is_call(e) -> bool:
    return hasattr(e, "op") and hasattr(e, "args")


def _walk(e):
    """Every node of a TIR expression (the operators a GroupNorm kernel's normalise step uses)."""
    yield e
    if _is_call(e):
        for arg in e.args:
            yield from _walk(arg)
    elif hasattr(e, "a") and hasattr(e, "b"):  # binary operators
        yield from _walk(e.a)
        yield from _walk(e.b)
    elif hasattr(e, "value") and not hasattr(e, "buffer") and not isinstance(e.value, (int, float)):  # casts
        yield from _walk(e.value)


def group_norm_kernel(H: int, W: int, C: int, groups: int, eps: float, epilogue, lanes: int):
    """NHWC GroupNorm in two passes: per-channel sums and sums of squares over the pixels (channels contiguous, as
    vectors), folded into per-group mean and 1/std, then out = (x - mean) * (weight / std) + bias, vectorized over
    channels and parallel over pixels, with the fused epilogue (ReLU, clip, residual add: an Epilogue) applied before
    the one store. Same statistics as the legalized kernel (E[x^2] - E[x]^2)."""
    from tvm.script import tirx as T

    P = H * W
    cg = C // groups
    V = _divisor(C, (2 * lanes, lanes, 4, 2))
    n = float(P * cg)
    # a tiny tensor gains nothing from the thread pool's wake-up (a few us): its pixels stay on one thread
    chunks = min(P, 16) if P * C >= 8192 else 1
    per = (P + chunks - 1) // chunks
    after = epilogue.apply if epilogue is not None else (lambda v, r: v)

    @T.macro
    def statistics(x, weight, mean, scale):
        s = T.alloc_buffer((C,), "float32")
        q = T.alloc_buffer((C,), "float32")
        acc = T.alloc_buffer((2,), "float32", scope="local")
        for co in range(C // V):
            for lane in T.vectorized(V):
                s[co * V + lane] = T.float32(0)
                q[co * V + lane] = T.float32(0)
        for p in range(P):
            for co in range(C // V):
                for lane in T.vectorized(V):
                    s[co * V + lane] = s[co * V + lane] + x[p * C + co * V + lane]
                    q[co * V + lane] = q[co * V + lane] + x[p * C + co * V + lane] * x[p * C + co * V + lane]
        for g in range(groups):
            acc[0] = T.float32(0)
            acc[1] = T.float32(0)
            for k in range(cg):
                acc[0] = acc[0] + s[g * cg + k]
                acc[1] = acc[1] + q[g * cg + k]
            for k in range(cg):
                mean[g * cg + k] = acc[0] / T.float32(n)
                scale[g * cg + k] = weight[g * cg + k] * T.rsqrt(
                    acc[1] / T.float32(n) - acc[0] / T.float32(n) * (acc[0] / T.float32(n)) + T.float32(eps))

    @T.macro
    def normalise(x, res, bias, mean, scale, out):
        for t in T.parallel(chunks):
            for i in range(per):
                if t * per + i < P:
                    for co in range(C // V):
                        for lane in T.vectorized(V):
                            out[(t * per + i) * C + co * V + lane] = after(
                                (x[(t * per + i) * C + co * V + lane] - mean[co * V + lane]) * scale[co * V + lane]
                                + bias[co * V + lane], res[(t * per + i) * C + co * V + lane])

    @T.prim_func(private=True)
    def kernel(x4: T.Buffer((1, H, W, C), "float32"), weight: T.Buffer((C,), "float32"),
               bias: T.Buffer((C,), "float32"), out4: T.Buffer((1, H, W, C), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        x = T.decl_buffer((P * C,), "float32", data=x4.data)
        out = T.decl_buffer((P * C,), "float32", data=out4.data)
        mean = T.alloc_buffer((C,), "float32")
        scale = T.alloc_buffer((C,), "float32")
        statistics(x, weight, mean, scale)
        normalise(x, x, bias, mean, scale, out)  # no residual: `after` ignores its second value

    @T.prim_func(private=True)
    def with_residual(x4: T.Buffer((1, H, W, C), "float32"), weight: T.Buffer((C,), "float32"),
                      bias: T.Buffer((C,), "float32"), res4: T.Buffer((1, H, W, C), "float32"),
                      out4: T.Buffer((1, H, W, C), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        x = T.decl_buffer((P * C,), "float32", data=x4.data)
        res = T.decl_buffer((P * C,), "float32", data=res4.data)
        out = T.decl_buffer((P * C,), "float32", data=out4.data)
        mean = T.alloc_buffer((C,), "float32")
        scale = T.alloc_buffer((C,), "float32")
        statistics(x, weight, mean, scale)
        normalise(x, res, bias, mean, scale, out)

    return with_residual if epilogue is not None and epilogue.residual else kernel


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def apply(mod, target):
    """Every unscheduled kernel of a fused Relax module with the default schedule (what MetaSchedule's database did
    not schedule stays as it was: tuned kernels carry tirx.is_scheduled)."""
    import tvm
    from tvm import tirx

    lanes = _vector_lanes(target)
    out = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            out[gv] = schedule_func(func, lanes)
        else:
            out[gv] = func
    return tvm.IRModule(out, attrs=mod.attrs)
