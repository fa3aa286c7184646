"""Default CPU schedules for kernels nobody tuned: NHWC convolutions (dense and depthwise) and matmuls as register
tiles, written once here, so an untuned build (and every kernel a short tuning run left untouched) is not TVM's
unscheduled loop nest.

Legalized kernels are plain loop nests (8-60x slower than ONNX Runtime on the model zoo, issue 16). Every
convolution of a per-level module is NHWC with HWIO weights (export.ChannelsLast), so its output channels are
innermost and contiguous, and so are the weights' output channels: the schedule keeps a tile of TILE_PIXELS output
pixels x VECTOR output channels in registers (the cache-write block), runs the reduction (kh, kw, cin) around it with
the weight loaded as one vector and each input value broadcast, and writes the tile once. The outer spatial loops
run in parallel. The same shape of schedule fits a depthwise convolution (no cin loop) and a matmul/dense (pixels =
rows). A kernel the rule does not recognise, or on which a schedule step fails, keeps its default loops; blocks after
the main one (bias, norm, clip fused into the kernel) get their innermost loop vectorized and outer loop parallel.
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
    vec = _divisor(channels, (2 * lanes, lanes, lanes // 2 if lanes > 1 else 1))
    if vec < 2:
        return False
    c_o, c_i = sch.split(spatial[-1], [None, vec])
    outer = list(spatial[:-1])
    if outer:
        pixels = extents[first_reduce - 2]
        tile = _divisor(pixels, (TILE_PIXELS, 2))
        p_o, p_i = sch.split(outer[-1], [None, tile])
        outer = outer[:-1] + [p_o]
        inner = [p_i, c_i]
    else:
        inner = [c_i]
    sch.reorder(*outer, c_o, *reduce, *inner)
    # parallel first: once the reduction is decomposed TIR no longer takes its block as a reduction under the loop
    big = [l for l in outer if (_extent(sch, l) or 1) > 1]
    if big:
        sch.parallel(sch.fuse(*big) if len(big) > 1 else big[0])
    acc = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(acc, c_o)
    init = sch.decompose_reduction(block, reduce[0])
    # the tile: pixels unrolled, channels as vectors, in the accumulator and in its init and write-back
    # TIR refuses `vectorize` on a loop inside the reduction block; fully unrolled, LLVM's SLP vectorizer turns
    # the tile's contiguous channel FMAs into vector FMAs
    for loop in inner:
        sch.unroll(loop)
    for b in (init, acc):
        sch.vectorize(sch.get_loops(b)[-1])
    return True


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
