"""The integer reference: exactly the arithmetic the int8 C kernels (firmware_host/src/kernels_int8.c) do,
in numpy, with no torch.

A network is a `Graph`: tensors in HWC layout and a list of ops (`Conv`, `Pool`, `Dense`) in run order. The
same graph runs in float (`run_float`, for calibration and for checking a conversion) and, once `quantize`d,
in integers (`run_int`).

Number format (one rule for every tensor): int8, symmetric, zero point 0, one scale per tensor. A tensor
after a ReLU uses only [0, 127] (ReLU and the clamp are one `usat #7` on the device). Weights are int8 with
one scale per output channel (symmetric, [-127, 127]); biases int32 on the accumulator's scale
(input scale x weight scale). Accumulation in int32.

Requantization of an int32 `x` by a real factor r > 0, stored as (M, l, n) with M in [2^30, 2^31):

    t = ((x << l) * M + 2^31) >> 32          (64-bit product, arithmetic shift: ARM `smmulr`)
    y = (t + 2^(n-1)) >> n   if n > 0, else t
    r = M * 2^(l - 32 - n)

A conv's output is clamp(rq(acc[c], M[c], l[c], n[c]) [+ rq(skip, Ms, ls, ns)], lo, 127), lo = 0 with a
ReLU and -128 without: the residual add and ReLU are fused into the conv that precedes them (an add that follows
no conv, e.g. after a GroupNorm, is an `Add` op with the same epilogue; only the CPU kernels run it). The global
average pool is rq(sum over H x W, M, l, n) clamped to [-128, 127]; the dense layer is a 1x1 conv.

GroupNorm (int8 in, int8 out, ReLU fused) uses the statistics of the sample itself, in integers. Per group of
N = H x W x C/G < 2^17 values x: S = sum x, Q = sum x^2 (int32), V = N Q - S^2 (= N^2 var, int64), U = V + E with
E = max(1, round(eps N^2 / s_in^2)) fixed at build time. Normalised to U4 = U << 2k, k = (62 - bitlen(U)) // 2
(U4 in [2^60, 2^62)), r = isqrt(U4) (floor, in [2^30, 2^31)) and R = (2^61 - 1) // r: 1/sqrt(U) = R 2^(k - 61)
to 2^-30. Per channel c the build stores gamma_c / s_out = g_c 2^(e_c - 31) (|g_c| in [2^30, 2^31) or 0, sign of
gamma, e_c <= 15) and b_c = round(2^16 beta_c / s_out); per (group, channel) m = (g_c R + 2^30) >> 31 and
sh = 61 - k - e_c (>= 16), and each value, first to 16 fraction bits, then rounded once with the shift added:

    t = ((N x - S) m) >> min(sh - 16, 63)          (64-bit product, arithmetic shift)
    y = clamp((t + b_c + 2^15) >> 16, lo, hi)

lo is -128 (0 with the ReLU) and hi 127, unless the level quantizes this activation on a b-bit grid (the
quantization family) that int8 holds: then the output uses that grid's scale and its codes' range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from lcs.errors import LcsError

Q_MAX = 127


@dataclass(frozen=True)
class Requant:
    """A real factor as integer multiplier M and shifts (see the module docstring)."""

    m: int
    l: int  # noqa: E741 (the left shift)
    n: int

    @classmethod
    def of(cls, r: float) -> "Requant":
        if not (r > 0 and math.isfinite(r)):
            raise LcsError(f"requantization factor {r!r} is not a positive number")
        mant, exp = math.frexp(r)  # r = mant * 2^exp, mant in [0.5, 1)
        m = int(round(mant * (1 << 31)))
        if m == 1 << 31:
            m, exp = 1 << 30, exp + 1
        shift = exp + 1  # r = m * 2^(shift - 32)
        if shift > 0:
            return cls(m, min(shift, 31), 0)
        if -shift > 31:  # factor below 2^-63: every output rounds to 0
            return cls(m, 0, 31)
        return cls(m, 0, -shift)

    @property
    def value(self) -> float:
        return self.m * 2.0 ** (self.l - 32 - self.n)


def requant(x: np.ndarray, m, l, n) -> np.ndarray:  # noqa: E741
    """rq(x) on int arrays; m, l, n broadcast against x (per-channel vectors on the last axis)."""
    x = np.asarray(x, dtype=np.int64)
    shifted = x << np.asarray(l, dtype=np.int64)
    if np.any(shifted != (shifted.astype(np.int32))):
        raise LcsError("requantization input overflows int32 after its left shift")
    t = (shifted * np.asarray(m, dtype=np.int64) + (1 << 31)) >> 32
    n = np.asarray(n, dtype=np.int64)
    rounding = np.where(n > 0, np.left_shift(1, np.maximum(n - 1, 0)), 0)
    return (t + rounding) >> n


def _rq_arrays(rqs: list[Requant]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r.m for r in rqs], np.int64), np.array([r.l for r in rqs], np.int64),
            np.array([r.n for r in rqs], np.int64))


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]  # HWC (or (C,) after the pool)
    scale: float = 0.0  # set by quantize


@dataclass
class Conv:
    """2-D convolution, HWC in and out, weights OHWI (depthwise: O = C, I = 1)."""

    inp: str
    out: str
    weight: np.ndarray  # float [O, KH, KW, I]; int8 after quantize
    bias: np.ndarray  # float [O]; int32 after quantize
    stride: int = 1
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (zero = the zero point)
    depthwise: bool = False
    relu: bool = False
    add: str | None = None  # a tensor of the output's shape added before the ReLU
    cap: float | None = None  # ReLU6: the float bound calibration sees (in integers the clamp at 127 holds it)
    wscale: np.ndarray | None = None  # per output channel
    rq: list[Requant] = field(default_factory=list)
    rq_add: Requant | None = None

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight.shape[1], self.weight.shape[2]


@dataclass
class Pool:
    """Global average pool: HWC -> C."""

    inp: str
    out: str
    rq: Requant | None = None


@dataclass
class Dense:
    inp: str
    out: str
    weight: np.ndarray  # [O, I]
    bias: np.ndarray
    wscale: np.ndarray | None = None
    rq: list[Requant] = field(default_factory=list)


@dataclass
class GroupNorm:
    """Per-sample GroupNorm over HWC groups of C/G consecutive channels, affine, ReLU fused (see the module
    docstring for the integer arithmetic)."""

    inp: str
    out: str
    groups: int
    gamma: np.ndarray  # float [C]
    beta: np.ndarray  # float [C]
    eps: float = 1e-5
    relu: bool = False
    cap: float | None = None  # as Conv.cap
    grid: tuple[float, int, int] | None = None  # a level's activation grid on the output: (scale, lo, hi) codes
    lo: int = -128  # clamps: a grid's codes
    hi: int = Q_MAX
    # set by quantize
    e: int = 0  # E, the eps term in units of (s_in / N)^2
    g: np.ndarray | None = None  # int32 [C]
    ge: np.ndarray | None = None  # int [C], e_c
    b: np.ndarray | None = None  # int32 [C], beta / s_out with 16 fraction bits


@dataclass
class Add:
    """Sum of two tensors of one shape that no conv can take as its residual (e.g. after a GroupNorm): each operand
    requantized to the output scale, then the ReLU and clamp of a conv's residual epilogue."""

    inp: str
    add: str
    out: str
    relu: bool = False
    cap: float | None = None  # as Conv.cap
    rq: Requant | None = None
    rq_add: Requant | None = None


Op = Conv | Pool | Dense | GroupNorm | Add


@dataclass
class Graph:
    tensors: dict[str, Tensor]
    ops: list[Op]
    input: str
    output: str
    quantized: bool = False

    def macs(self) -> int:
        total = 0
        for op in self.ops:
            if isinstance(op, Conv):
                oh, ow, oc = self.tensors[op.out].shape
                total += oh * ow * oc * int(np.prod(op.weight.shape[1:]))
            elif isinstance(op, Dense):
                total += op.weight.size
        return total

    def params(self) -> int:
        return sum(op.weight.size + op.bias.size for op in self.ops if isinstance(op, (Conv, Dense)))

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float NHWC images -> int8 on the input's grid (round half to even)."""
        return np.clip(np.rint(x / self.tensors[self.input].scale), -128, 127).astype(np.int8)


def conv_out_hw(h: int, w: int, op: Conv) -> tuple[int, int]:
    kh, kw = op.kernel
    t, b, le, r = op.pads
    return (h + t + b - kh) // op.stride + 1, (w + le + r - kw) // op.stride + 1


def _patches(x: np.ndarray, op: Conv) -> np.ndarray:
    """NHWC -> N, OH, OW, KH, KW, C windows (zero padded)."""
    t, b, le, r = op.pads
    x = np.pad(x, ((0, 0), (t, b), (le, r), (0, 0)))
    kh, kw = op.kernel
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N, OH', OW', C, KH, KW
    win = win[:, :: op.stride, :: op.stride]
    return np.moveaxis(win, 3, 5)


def _conv_acc(x: np.ndarray, op: Conv, dtype) -> np.ndarray:
    p = _patches(x.astype(dtype), op)
    w = op.weight.astype(dtype)
    if op.depthwise:
        return np.einsum("nhwijc,cij->nhwc", p, w[..., 0], optimize=True)
    n, oh, ow = p.shape[:3]
    return (p.reshape(n * oh * ow, -1) @ w.reshape(w.shape[0], -1).T).reshape(n, oh, ow, -1)


def run_float(graph: Graph, x: np.ndarray, *, keep: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Float forward of NHWC `x`; with keep=True every tensor by name (calibration)."""
    vals = {graph.input: np.asarray(x, np.float64)}
    for op in graph.ops:
        h = vals[op.inp]
        if isinstance(op, Conv):
            y = _conv_acc(h, op, np.float64) + op.bias
            if op.add is not None:
                y = y + vals[op.add]
        elif isinstance(op, Pool):
            y = h.mean(axis=(1, 2))
        elif isinstance(op, Add):
            y = h + vals[op.add]
        elif isinstance(op, GroupNorm):
            g = h.reshape(h.shape[:3] + (op.groups, -1))
            mu = g.mean(axis=(1, 2, 4), keepdims=True)
            var = g.var(axis=(1, 2, 4), keepdims=True)
            y = ((g - mu) / np.sqrt(var + op.eps)).reshape(h.shape) * op.gamma + op.beta
        else:
            y = h @ op.weight.T.astype(np.float64) + op.bias
        if getattr(op, "relu", False):
            y = np.maximum(y, 0)
            if getattr(op, "cap", None) is not None:
                y = np.minimum(y, op.cap)
        vals[op.out] = y
    return vals if keep else vals[graph.output]


def run_int(graph: Graph, xq: np.ndarray, *, keep: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Integer forward of int8 NHWC `xq`: bit-exact with the C kernels."""
    if not graph.quantized:
        raise LcsError("the graph is not quantized")
    vals = {graph.input: np.asarray(xq, np.int64)}
    for op in graph.ops:
        h = vals[op.inp]
        if isinstance(op, Conv):
            acc = _conv_acc(h, op, np.int64) + op.bias.astype(np.int64)
            y = requant(acc, *_rq_arrays(op.rq))
            if op.add is not None:
                y = y + requant(vals[op.add], op.rq_add.m, op.rq_add.l, op.rq_add.n)
            y = np.clip(y, 0 if op.relu else -128, Q_MAX)
        elif isinstance(op, Pool):
            y = np.clip(requant(h.sum(axis=(1, 2)), op.rq.m, op.rq.l, op.rq.n), -128, Q_MAX)
        elif isinstance(op, GroupNorm):
            y = group_norm_int(h, op)
        elif isinstance(op, Add):
            y = requant(h, op.rq.m, op.rq.l, op.rq.n) + requant(vals[op.add], op.rq_add.m, op.rq_add.l, op.rq_add.n)
            y = np.clip(y, 0 if op.relu else -128, Q_MAX)
        else:
            acc = h @ op.weight.T.astype(np.int64) + op.bias.astype(np.int64)
            y = np.clip(requant(acc, *_rq_arrays(op.rq)), -128, Q_MAX)
        vals[op.out] = y
    if keep:
        return {k: v.astype(np.int8) for k, v in vals.items()}
    return vals[graph.output].astype(np.int8)


def isqrt64(u: np.ndarray) -> np.ndarray:
    """floor(sqrt(u)) of int64 values in [0, 2^62), exactly (float estimate, then integer correction)."""
    u = np.asarray(u, np.int64)
    r = np.sqrt(u.astype(np.float64)).astype(np.int64)
    for _ in range(3):
        r = np.where(r * r > u, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= u, r + 1, r)
    return r


def _bitlen(u: np.ndarray) -> np.ndarray:
    out = np.zeros(u.shape, np.int64)
    v = u.copy()
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << s)
        out += np.where(big, s, 0)
        v = np.where(big, v >> s, v)
    return out + (v > 0)


def group_norm_int(h: np.ndarray, op: GroupNorm) -> np.ndarray:
    """The integer GroupNorm of int8 NHWC `h` (module docstring), ReLU fused; int64 values in [lo, 127]."""
    n_img, hh, ww, c = h.shape
    cg = c // op.groups
    n = hh * ww * cg
    x = np.asarray(h, np.int64).reshape(n_img, hh * ww, op.groups, cg)
    s = x.sum(axis=(1, 3))  # [n_img, G]
    q = (x * x).sum(axis=(1, 3))
    u = n * q - s * s + op.e
    k = (62 - _bitlen(u)) // 2
    r = isqrt64(u << (2 * k))
    recip = ((1 << 61) - 1) // r
    g = np.asarray(op.g, np.int64).reshape(op.groups, cg)
    m = (g[None] * recip[..., None] + (1 << 30)) >> 31  # [n_img, G, cg]
    sh = 61 - k[..., None] - np.asarray(op.ge, np.int64).reshape(op.groups, cg)[None]
    d = n * x - s[:, None, :, None]  # [n_img, HW, G, cg]
    t = (d * m[:, None]) >> np.minimum(sh - 16, 63)[:, None]
    y = (t + np.asarray(op.b, np.int64).reshape(op.groups, cg) + (1 << 15)) >> 16
    return np.clip(y.reshape(n_img, hh, ww, c), max(op.lo, 0) if op.relu else op.lo, op.hi)


def _quantize_group_norm(op: GroupNorm, shape: tuple[int, ...], s_in: float, s_out: float) -> GroupNorm:
    hh, ww, c = shape
    n = hh * ww * (c // op.groups)
    if n >= 1 << 17:  # keeps Q = sum x^2 within int32
        raise LcsError(f"{op.out}: a group of {n} values is too large for the integer GroupNorm")
    g, ge = [], []
    for v in np.asarray(op.gamma, np.float64) / s_out:
        if v == 0:
            g.append(0)
            ge.append(0)
            continue
        mant, exp = math.frexp(abs(v))  # |v| = mant 2^exp, mant in [0.5, 1)
        m = int(round(mant * (1 << 31)))
        if m == 1 << 31:
            m, exp = 1 << 30, exp + 1
        if exp > 15:
            raise LcsError(f"{op.out}: GroupNorm scale gamma / s_out = {v:g} too large for the integer kernel")
        g.append(m if v > 0 else -m)
        ge.append(exp)
    e = max(1, int(round(op.eps * n * n / (s_in * s_in))))
    if e >= 1 << 40:
        raise LcsError(f"{op.out}: GroupNorm eps is too large against its input scale {s_in:g}")
    b = np.rint(np.asarray(op.beta, np.float64) / s_out * (1 << 16))
    if np.abs(b).max(initial=0) >= 1 << 31:
        raise LcsError(f"{op.out}: GroupNorm shift beta / s_out does not fit")
    return replace(op, e=e, g=np.array(g, np.int64), ge=np.array(ge, np.int64), b=b.astype(np.int64))


def _weights_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 (axis 0)."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(flat > 0, flat / Q_MAX, 1.0)
    q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -Q_MAX, Q_MAX).astype(np.int8)
    return q, scale


def _acc_bound(wq: np.ndarray, bq: np.ndarray) -> int:
    return int(np.abs(wq.reshape(wq.shape[0], -1).astype(np.int64)).sum(axis=1).max() * 128 + np.abs(bq).max())


def quantize(graph: Graph, calibration: np.ndarray) -> Graph:
    """A quantized copy of a float graph; activation scales from the max |value| of each tensor over the
    float forward of `calibration` (NHWC float)."""
    vals = run_float(graph, calibration, keep=True)
    tensors = {}
    for name, t in graph.tensors.items():
        peak = float(np.abs(vals[name]).max()) if vals[name].size else 0.0
        tensors[name] = replace(t, scale=(peak / Q_MAX) if peak > 0 else 1.0)
    for op in graph.ops:  # a level's own activation grid, where int8 holds it, replaces the calibrated scale
        if isinstance(op, GroupNorm) and op.grid and -128 <= op.grid[1] and op.grid[2] <= Q_MAX:
            tensors[op.out] = replace(tensors[op.out], scale=op.grid[0])
    ops: list[Op] = []
    for op in graph.ops:
        s_in, s_out = tensors[op.inp].scale, tensors[op.out].scale
        if isinstance(op, Pool):
            hw = int(np.prod(tensors[op.inp].shape[:2]))
            ops.append(replace(op, rq=Requant.of(s_in / (hw * s_out))))
            continue
        if isinstance(op, GroupNorm):
            op = _quantize_group_norm(op, tensors[op.inp].shape, s_in, s_out)
            if op.grid and -128 <= op.grid[1] and op.grid[2] <= Q_MAX:
                op = replace(op, lo=op.grid[1], hi=op.grid[2])
            ops.append(op)
            continue
        if isinstance(op, Add):
            ops.append(replace(op, rq=Requant.of(s_in / s_out), rq_add=Requant.of(tensors[op.add].scale / s_out)))
            continue
        wq, ws = _weights_int8(op.weight)
        bq = np.rint(op.bias / (s_in * ws)).astype(np.int64)
        if np.abs(bq).max(initial=0) >= 1 << 30:
            raise LcsError(f"bias of {op.out} does not fit int32 at scale {s_in:g}")
        rqs = [Requant.of(s_in * w / s_out) for w in ws]
        if any(r.l for r in rqs) and _acc_bound(wq, bq) >> (31 - max(r.l for r in rqs)):
            raise LcsError(f"{op.out}: output scale {s_out:g} too fine for a 32-bit requantization")
        extra = {}
        if isinstance(op, Conv) and op.add is not None:
            extra["rq_add"] = Requant.of(tensors[op.add].scale / s_out)
        ops.append(replace(op, weight=wq, bias=bq.astype(np.int32), wscale=ws, rq=rqs, **extra))
    return Graph(tensors, ops, graph.input, graph.output, quantized=True)
