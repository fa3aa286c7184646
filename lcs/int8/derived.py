"""The derived weight store of an LCS+P int8 model: the point's int8 codes once, every level defined on them.

An LCS+P unstructured level is the one weight set under a magnitude mask. The derived store keeps the densest
level's quantized graph (its codes with per-output-channel scales, biases, requantization) and, per level, only:

- per output channel of every layer the level masks, an integer threshold t on the codes: the level keeps a
  weight iff |code| > t (t = 0: every code, the densest level). Chosen here so that each channel keeps as many
  nonzero codes as the level's own quantized graph has, as closely as the codes allow;
- per activation tensor an exponent k: the level's scale is the densest level's times 2^-k, the largest k whose
  scale still covers the level's own calibrated range less CLIP (a level whose range is 2 % over the densest
  level's would otherwise lose a whole bit to a 2 % clip it does not notice). A power of two keeps every
  requantization multiplier and turns the level's numbers into shifts of the stored ones:

      rq_level = (m, shift + k_out - k_in)     where shift = l - n (l = shift if > 0, else n = -shift)
      bias_level = bias << k_in                (k_in >= 0), else (bias + 2^(-k_in - 1)) >> -k_in

  and the residual add's and the pool's factors likewise; GroupNorm parameters are requantized per level and
  stored as they are (they are small).

The quantization family (LCS+P: one weight set on b-bit grids) derives its b-bit levels from the densest level's
codes instead of masking them. Per quantized layer the store keeps, once, K_c: channel c's largest |integer| on the
densest level's own grid (its codes are round(k x 127 / K_c) of those integers k), and per level P = 2^b - 1 and
D = 127 (2^b_dense - 1). On the b-bit grid a stored code c lies at c x K_c P / D, so with the fixed-point ratio
R_c = round(65536 K_c P / D) (<= 65536 as 255 P <= D; integer division):

      code_level = (c R_c + 2^15) >> 16                       (in [-127, 127]; no clamp to the grid's range: the
                                                              rare code one past it is kept)
      bias_level = (bias R_c + 2^15) >> 16                    (64-bit product)
      rq_level   = rq x 65536 / R_c: M' = round(M 2^16 / R_c) renormalized into [2^30, 2^31) (see `regrid_rq`)

then the activation exponents k as above. The level's weight scale is the stored one x 65536 / R_c per channel.

`derive_levels` returns those graphs (the integer reference the device must equal bit for bit: a level built
from the stored codes, thresholds and exponents) and the per-level plan the weight store is laid out from. A
level whose shifted numbers would not fit the kernels' 32-bit arithmetic takes the densest level's scales (k = 0
everywhere), which always fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from lcs.errors import LcsError
from lcs.int8.graph import Conv, Dense, Graph, GroupNorm, Pool, Requant, _acc_bound, _quantize_group_norm

THRESHOLD_MAX = 127  # t = 127 keeps no code (codes are in [-127, 127])
CLIP = 1 / 16  # the fraction of a level's calibrated range its power-of-two scale may clip


GRID_ONE = 1 << 16  # R_c's fixed point


class NotDerivable(LcsError):
    """The levels are not one stored weight set under masks or grids (the reason is the message)."""


@dataclass
class LevelPlan:
    thresholds: dict[int, np.ndarray]  # op index -> uint8 per output channel, for the ops this level masks
    k: dict[str, int]  # tensor -> exponent: the level's scale is the densest level's x 2^-k
    kept: dict[int, tuple[int, int]]  # op index -> (nonzero codes kept, nonzero codes the level's own graph has)
    # quantization family: op index -> (P, D) for the layers this level puts on its b-bit grid, and the
    # densest grid's K_c per channel of those layers (the same in every level)
    regrid: dict[int, tuple[int, int]] = field(default_factory=dict)
    grid_k: dict[int, np.ndarray] = field(default_factory=dict)


def shift_rq(r: Requant, d: int) -> Requant:
    """r x 2^d with the same multiplier (the device's rq_shifted)."""
    s = r.l - r.n + d
    if not -31 <= s <= 31:
        raise ValueError("shift out of range")
    return Requant(r.m, s, 0) if s > 0 else Requant(r.m, 0, -s)


def shift_bias(b: np.ndarray, k: int) -> np.ndarray:
    """The bias on an input scale 2^-k times the stored one (the device's bias derivation)."""
    b = np.asarray(b, np.int64)
    if k >= 0:
        return b << k
    return (b + (1 << (-k - 1))) >> -k


def regrid_ratio(k: np.ndarray, p: int, d: int) -> np.ndarray:
    """R_c = round(65536 K_c P / D) per channel, as the device divides (uint32, half up; at least 1)."""
    return np.maximum((np.asarray(k, np.int64) * p * GRID_ONE + d // 2) // d, 1)


def regrid_codes(codes: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """[channels, n] stored codes -> the level's codes: (c R_c + 2^15) >> 16 (within [-127, 127] as R_c <= 65536)."""
    c = np.asarray(codes, np.int64) * np.asarray(ratio, np.int64)[:, None]
    return ((c + (1 << 15)) >> 16).astype(np.int8)


def regrid_bias(b: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    return (np.asarray(b, np.int64) * np.asarray(ratio, np.int64) + (1 << 15)) >> 16


def regrid_rq(r: Requant, ratio: int) -> Requant:
    """r x 65536 / R (R in [1, 65536]): M' = round(M 2^16 / R) (>= M), rounded once to its top 31 bits (half up; a
    carry to 2^31 halves it), the shift moved by what was dropped (the device's q8_rq_over)."""
    x = ((r.m << 16) + ratio // 2) // ratio
    s = max(x.bit_length() - 31, 0)
    if s:
        x = (x + (1 << (s - 1))) >> s
    if x == 1 << 31:
        x, s = x >> 1, s + 1
    return shift_rq(Requant(x, r.l, r.n), s)


def _weighted(op) -> bool:
    return isinstance(op, (Conv, Dense))


def channel_view(op) -> np.ndarray:
    """A weighted op's codes as [output channel, its weights] (OHWI, depthwise [C, KH, KW, 1], dense [O, I])."""
    w = np.asarray(op.weight)
    return w.reshape(w.shape[0], -1)


def choose_thresholds(codes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row of `codes` ([channels, n] int8) the t in 0..127 whose count of |code| > t is nearest `target`
    (ties: the smaller t, keeping more)."""
    mag = np.abs(codes.astype(np.int64))
    hist = np.stack([np.bincount(row, minlength=THRESHOLD_MAX + 1) for row in mag])  # [C, 128]
    above = hist[:, ::-1].cumsum(axis=1)[:, ::-1] - hist  # above[c, t] = #{|code| > t}
    return np.argmin(np.abs(above - target[:, None]), axis=1).astype(np.uint8)  # argmin: first (smallest) t


def _level_k(dense: Graph, own: Graph) -> dict[str, int]:
    k = {}
    for name, t in dense.tensors.items():
        ratio = t.scale / own.tensors[name].scale
        need = own.tensors[name].scale * (1 - CLIP)
        k[name] = int(math.floor(math.log2(ratio))) + 1 if ratio > 0 else 0
        while t.scale * 2.0 ** -k[name] < need:  # cover the level's calibrated range, less CLIP
            k[name] -= 1
    return k


def _derive(dense: Graph, plan: LevelPlan) -> Graph:
    """The level's graph from the densest one's codes and the plan; raises ValueError/LcsError where a shifted
    number does not fit the kernels."""
    k = plan.k
    tensors = {n: replace(t, scale=t.scale * 2.0 ** -k[n]) for n, t in dense.tensors.items()}
    ops = []
    for i, op in enumerate(dense.ops):
        if isinstance(op, Pool):
            ops.append(replace(op, rq=shift_rq(op.rq, k[op.out] - k[op.inp])))
        elif isinstance(op, GroupNorm):
            gn = _quantize_group_norm(op, tensors[op.inp].shape, tensors[op.inp].scale, tensors[op.out].scale)
            if k[op.out]:  # the densest level's activation grid clamps its own scale's codes, not these
                gn = replace(gn, lo=-128, hi=127)
            ops.append(gn)
        else:
            w = np.asarray(op.weight)
            bias, rqs = np.asarray(op.bias, np.int64), list(op.rq)
            if i in plan.regrid:
                p, d = plan.regrid[i]
                ratio = regrid_ratio(plan.grid_k[i], p, d)
                w = regrid_codes(channel_view(op), ratio).reshape(w.shape)
                bias = regrid_bias(bias, ratio)
                rqs = [regrid_rq(r, int(ratio[c])) for c, r in enumerate(rqs)]
            if i in plan.thresholds:
                t = plan.thresholds[i].astype(np.int16)
                keep = np.abs(channel_view(op).astype(np.int16)) > t[:, None]
                w = np.where(keep.reshape(w.shape), w, 0).astype(np.int8)
            bias = shift_bias(bias, k[op.inp])
            if np.abs(bias).max(initial=0) >= 1 << 30:
                raise ValueError("bias")
            rqs = [shift_rq(r, k[op.out] - k[op.inp]) for r in rqs]
            top = max(r.l for r in rqs)
            if top and _acc_bound(w, bias) >> (31 - top):
                raise ValueError("accumulator")
            extra = {}
            if isinstance(op, Conv) and op.add is not None:
                extra["rq_add"] = shift_rq(op.rq_add, k[op.out] - k[op.add])
                if extra["rq_add"].l > 23:  # an int8 skip value shifted left must stay within int32
                    raise ValueError("residual")
            ops.append(replace(op, weight=w, bias=bias.astype(np.int32), rq=rqs, **extra))
    return Graph(tensors, ops, dense.input, dense.output, quantized=True)


def derive_levels(graphs: list[Graph], dense_index: int, grids: tuple[dict, list[dict]] | None = None
                  ) -> tuple[list[Graph], list[LevelPlan]]:
    """`graphs`: each level's own quantized graph (same network, LCS+P: one weight set under masks);
    `dense_index`: the densest level, whose codes the store keeps; `grids`: the quantization family's
    (K_c per op index, per level {op index: (P, D)}) from `quant_grids` (then no thresholds)."""
    dense = graphs[dense_index]
    names = [(type(op).__name__, op.inp, op.out) for op in dense.ops]
    out_graphs, plans = [], []
    for g in graphs:
        if [(type(op).__name__, op.inp, op.out) for op in g.ops] != names or g.tensors.keys() != dense.tensors.keys():
            raise NotDerivable("the levels are not one network")
        thresholds, kept = {}, {}
        for i, (op, own) in enumerate(zip(dense.ops, g.ops)):
            if not _weighted(op):
                continue
            if own.weight.shape != op.weight.shape:
                raise NotDerivable(f"{op.out}: the levels' weight shapes differ")
            if grids is not None:
                continue
            codes, mine = channel_view(op), channel_view(own)
            target = np.count_nonzero((mine != 0) & (codes != 0), axis=1)
            t = choose_thresholds(codes, target)
            if t.any():
                thresholds[i] = t
            got = int(np.count_nonzero(np.abs(codes.astype(np.int16)) > t[:, None].astype(np.int16)))
            kept[i] = (got, int(target.sum()))
        regrid = grids[1][len(plans)] if grids is not None else {}
        grid_k = {i: grids[0][i] for i in regrid} if grids is not None else {}
        plan = LevelPlan(thresholds, _level_k(dense, g), kept, regrid, grid_k)
        try:
            derived = _derive(dense, plan)
        except (ValueError, LcsError):  # a shifted number out of range: the densest level's scales always fit
            plan = LevelPlan(thresholds, {n: 0 for n in dense.tensors}, kept, regrid, grid_k)
            try:
                derived = _derive(dense, plan)
            except (ValueError, LcsError) as exc:  # only a regridded level can fail here
                raise NotDerivable(f"a b-bit level's numbers do not fit the kernels ({exc})") from None
        out_graphs.append(derived)
        plans.append(plan)
    return out_graphs, plans


def quant_grids(model, alphas: list[float], graphs: list[Graph], dense_index: int, example
                ) -> tuple[dict[int, np.ndarray], list[dict[int, tuple[int, int]]]]:
    """The quantization family's grid data for `derive_levels`, from the checkpoint's own b-bit grids
    (`level_weights`): K_c from the densest level's integers, per level (P, D) for every layer it quantizes."""
    from lcs.subspace.export import level_weights

    dense = graphs[dense_index]
    index = {op.out: i for i, op in enumerate(dense.ops) if _weighted(op)}

    def op_of(name: str) -> int:
        flat = name.replace(".", "_")
        for cand in (flat, flat + "_1"):  # a quantized input wraps the layer in (QuantizeInput, layer)
            if cand in index:
                return index[cand]
        raise NotDerivable(f"layer {name} has no op in the int8 graph")

    def grid(alpha) -> dict[int, tuple[int, np.ndarray, int]]:  # op index -> (bits, [channel, n] integers, zero)
        out = {}
        for e in level_weights(model, alpha, example):
            if e.bits is not None:
                k = e.codes.numpy().astype(np.int64).reshape(e.codes.shape[0], -1) - int(e.zero)
                out[op_of(e.name)] = (e.bits, k, int(e.zero))
        return out

    top = grid(alphas[dense_index])
    grid_k = {}
    for i, (_, k, _) in top.items():
        if dense.ops[i].weight.shape[0] != k.shape[0]:
            raise NotDerivable(f"{dense.ops[i].out}: the grid's channels differ from the graph's")
        grid_k[i] = np.clip(np.abs(k).max(axis=1), 1, 255).astype(np.uint8)  # |k| <= 2^8 - 1; 1: an all-zero row
    plans = []
    for li, a in enumerate(alphas):
        plan = {}
        for i, (bits, _, _) in (grid(a) if li != dense_index else {}).items():
            if i not in top or bits > top[i][0]:
                raise NotDerivable(f"{dense.ops[i].out}: a level quantizes it finer than the densest level")
            if bits == top[i][0]:  # the same grid of the same weights: the stored codes
                continue
            plan[i] = ((1 << bits) - 1, 127 * ((1 << top[i][0]) - 1))
        plans.append(plan)
    return grid_k, plans


def model_weights(graph: Graph) -> int:
    """Weights of one level's network (conv and dense weights): the denominator of a store's bytes per weight."""
    return sum(op.weight.size for op in graph.ops if _weighted(op))
