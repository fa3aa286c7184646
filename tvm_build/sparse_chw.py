"""The CHW stretch of a sparse level: its sparse 1x1 convolutions, depthwise convolutions and GroupNorms run
channels-first, with transposes only where the stretch meets the rest of the (channels-last) module.

In channels-last layout a CSR 1x1 kernel has to gather each block of pixels into a [Cin, pixels] tile and scatter
its outputs back (sparse.py); on layers of many pixels and few channels (mobilenet-v2's 1x1 convs at 16x16 and 32x32
pixels) those two transposes cost what the dense kernel's whole computation does, so they stayed dense. In CHW a
1x1 convolution is sparse weights x a dense [Cin, H*W] matrix: each nonzero is one broadcast multiply-add over a
vector of pixels, read and written contiguously, and consecutive layers pass their activations on untransposed.
The depthwise convolutions (a 3x3 stencil on each channel's plane, vectorized along a row) and the GroupNorms (each
group of channels one contiguous run, with the clip or residual add fused after it) between them run CHW too. This
is the layout of XNNPACK's sparse inference; these kernels are our own TIR.

A GroupNorm read its input twice (statistics, then apply). In the stretch the kernel producing a norm's input (a CSR
1x1 or depthwise conv, planes of STATS_MIN_PIXELS+) appends each channel's sum and sum of squares to its output
(stats_shape), computed on the plane it has just written, and the norm only applies; a clipped norm before a
depthwise conv is applied by that conv as it copies its planes (no norm kernel). mobilenet-v2 at 90 %, one thread,
bare-kernel minima on a loaded machine: norms 34 kernels / 52 us -> 20 / 29 us, depthwise convs 53 -> 61 us, all
kernels 204 -> 180 us.

`rewrite` builds the CHW variant of a level module; sparse.Chooser decides per layer which 1x1 convs run CSR in it
(bare-kernel timings against dense) and per level whether the CHW variant runs faster than the channels-last one
(whole-module timings), and records both.
"""

from __future__ import annotations

from tvm_build.compile import STACK, STACK_LOCALS
from tvm_build.sparse import PAIRED_ROW, Candidate, csr_name

TO_CHW, TO_HWC = (0, 3, 1, 2), (0, 2, 3, 1)
# producers make a GroupNorm's statistics from this many pixels a channel: below it, the per-channel reductions cost
# more than the norm's own statistics pass over the (L1-resident) values saves (8x8 pixels, 32 -> 192 channels: +0.8
# us in the 1x1 conv against -0.4 us in the norm)
STATS_MIN_PIXELS = 256
ELEMENTWISE = ("relax.clip", "relax.add", "relax.nn.relu")  # what runs in the stretch as Relax ops, any layout


def _divisor(n: int, options) -> int:
    return next((o for o in options if n % o == 0), 1)


def _stats_macro(n: int):
    """A macro (buf, base, stats, at): the sum and the sum of squares of buf[base : base + n], stored at stats[at] and
    stats[at + 1]. Run by a producer on the channel plane it has just written (in L1), so that the GroupNorm after it
    reads its input once, not twice (statistics pass, then apply)."""
    from tvm.script import tirx as T

    V = _divisor(n, (64, 32, 16, 8, 4, 2))  # four vectors of sums, as the norm's own pass
    R = min(V, 16)
    halve = _halving_macro(R)

    @T.macro
    def stats_of(buf, base, stats, at):
        s = T.alloc_buffer((V,), "float32", scope="local", annotations=STACK)
        q = T.alloc_buffer((V,), "float32", scope="local", annotations=STACK)
        for lane in T.vectorized(V):
            s[lane] = T.float32(0)
            q[lane] = T.float32(0)
        for i in range(n // V):
            for lane in T.vectorized(V):
                s[lane] = s[lane] + buf[base + i * V + lane]
                q[lane] = q[lane] + buf[base + i * V + lane] * buf[base + i * V + lane]
        # vectors folded to one before the scalar sum: 64 dependent scalar adds per channel cost more than the plane
        for k in range(1, V // R):
            for lane in T.vectorized(R):
                s[lane] = s[lane] + s[k * R + lane]
                q[lane] = q[lane] + q[k * R + lane]
        halve(s, q)
        stats[at] = s[0]
        stats[at + 1] = q[0]

    return stats_of


def _halving_macro(R: int):
    """A macro (s, q): s[0] and q[0] become the sums of their first R lanes, by halving (log2 R vector adds: a chain
    of R scalar adds per channel cost more than the channel's plane at 8x8 pixels)."""
    from tvm.script import tirx as T

    @T.macro
    def halve(s, q):
        if R >= 16:
            for lane in T.vectorized(8):
                s[lane] = s[lane] + s[lane + 8]
                q[lane] = q[lane] + q[lane + 8]
        if R >= 8:
            for lane in T.vectorized(4):
                s[lane] = s[lane] + s[lane + 4]
                q[lane] = q[lane] + q[lane + 4]
        if R >= 4:
            for lane in T.vectorized(2):
                s[lane] = s[lane] + s[lane + 2]
                q[lane] = q[lane] + q[lane + 2]
        if R >= 2:
            s[0] = s[0] + s[1]
            q[0] = q[0] + q[1]

    return halve


def stats_shape(channels: int, pixels: int) -> list[int]:
    """A producer's output with statistics: its [channels, pixels] values, then (sum, sum of squares) per channel."""
    return [channels * pixels + 2 * channels]


def csr_chw_kernel(c: Candidate, nnz: int, stats: bool = False):
    """out[Cout, P] = W x[Cin, P] with W as CSR rows by output channel (sparse.to_csr), activations NCHW. Pixels in
    blocks of up to 64 (four 16-lane vectors of independent sums); tasks are pixel blocks x output-channel chunks.
    `stats`: the output is flat (stats_shape), each output channel's sum and sum of squares after its values."""
    from tvm.script import tirx as T

    P, Cin, Cout, H, W = c.pixels, c.cin, c.cout, c.height, c.width
    PB = _divisor(P, (64, 32, 16, 8, 4, 2))
    blocks = P // PB
    nnz = max(nnz, 1)
    # a block of one or two vectors waits out the add's latency on every nonzero: two sums over alternate nonzeros
    paired = PB <= 16 and nnz >= PAIRED_ROW * Cout

    @T.macro
    def row(x, data, indices, indptr, out, co, base):
        # output channel co over pixels base .. base + PB; buffers declared here, where they are used: one the planner
        # moves loses its annotation, and a scalar bound by name becomes a heap buffer too (TVM 0.27)
        acc = T.alloc_buffer((PB,), "float32", scope="local", annotations=STACK)
        acc2 = T.alloc_buffer((PB,), "float32", scope="local", annotations=STACK)
        for lane in T.vectorized(PB):
            acc[lane] = T.float32(0)
        if paired:
            for lane in T.vectorized(PB):
                acc2[lane] = T.float32(0)
            for jj in range((indptr[co + 1] - indptr[co]) // 2):
                for lane in T.vectorized(PB):
                    acc[lane] = acc[lane] + data[indptr[co] + 2 * jj] \
                        * x[indices[indptr[co] + 2 * jj] * P + base + lane]
                    acc2[lane] = acc2[lane] + data[indptr[co] + 2 * jj + 1] \
                        * x[indices[indptr[co] + 2 * jj + 1] * P + base + lane]
            if (indptr[co + 1] - indptr[co]) % 2 == 1:
                for lane in T.vectorized(PB):
                    acc[lane] = acc[lane] + data[indptr[co + 1] - 1] * x[indices[indptr[co + 1] - 1] * P + base + lane]
            for lane in T.vectorized(PB):
                out[co * P + base + lane] = acc[lane] + acc2[lane]
        else:
            for j in range(indptr[co], indptr[co + 1]):
                for lane in T.vectorized(PB):
                    acc[lane] = acc[lane] + data[j] * x[indices[j] * P + base + lane]
            for lane in T.vectorized(PB):
                out[co * P + base + lane] = acc[lane]

    @T.prim_func(private=True)
    def kernel(x4: T.Buffer((1, Cin, H, W), "float32"), data: T.Buffer((nnz,), "float32"),
               indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((Cout + 1,), "int32"),
               out4: T.Buffer((1, Cout, H, W), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, STACK_LOCALS: True})
        x = T.decl_buffer((Cin * P,), "float32", data=x4.data)
        out = T.decl_buffer((Cout * P,), "float32", data=out4.data)
        # output channels outermost (and split between threads): each writes its row of pixels in order (pixel blocks
        # outermost wrote 96 rows 4 KB apart in turn, all on the same cache sets: 32x32 pixels, 16 -> 96 channels at
        # 90 %, 14 -> 5 us)
        for co in T.parallel(Cout):
            for pb in range(blocks):
                row(x, data, indices, indptr, out, co, pb * PB)

    stats_of = _stats_macro(P)

    @T.prim_func(private=True)
    def with_stats(x4: T.Buffer((1, Cin, H, W), "float32"), data: T.Buffer((nnz,), "float32"),
                   indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((Cout + 1,), "int32"),
                   out: T.Buffer((Cout * P + 2 * Cout,), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, STACK_LOCALS: True})
        x = T.decl_buffer((Cin * P,), "float32", data=x4.data)
        for co in T.parallel(Cout):
            for pb in range(blocks):
                row(x, data, indices, indptr, out, co, pb * PB)
            stats_of(out, co * P, out, Cout * P + 2 * co)

    return with_stats if stats else kernel


def _group_stats_macro(C: int, groups: int, P: int, eps: float, from_stats: bool = True):
    """A macro (x, XS, g, gst): group g's mean and 1 / std into gst[0], gst[1]. `from_stats`: from the per-channel
    sums and sums of squares its producer stored at x[XS:] (stats_shape), a contiguous run of 2 * C / groups values
    summed as vectors (sums on even lanes, squares on odd); else from the group's values x[g * n : (g + 1) * n]."""
    from tvm.script import tirx as T

    cg = C // groups
    V = _divisor(2 * cg, (16, 8, 4, 2)) if from_stats else _divisor(cg * P, (64, 32, 16, 8, 4, 2))
    R = min(V, 16)
    halve = _halving_macro(R)
    n = cg * P

    @T.macro
    def group_stats(x, XS, g, gst):
        v = T.alloc_buffer((V,), "float32", scope="local", annotations=STACK)
        q = T.alloc_buffer((V,), "float32", scope="local", annotations=STACK)
        tot = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
        for lane in T.vectorized(V):
            v[lane] = T.float32(0)
            q[lane] = T.float32(0)
        if from_stats:
            for i in range(2 * cg // V):
                for lane in T.vectorized(V):
                    v[lane] = v[lane] + x[XS + 2 * g * cg + i * V + lane]
            tot[0] = T.float32(0)
            tot[1] = T.float32(0)
            for h in range(V // 2):
                tot[0] = tot[0] + v[2 * h]
                tot[1] = tot[1] + v[2 * h + 1]
        else:
            for i in range(n // V):
                for lane in T.vectorized(V):
                    v[lane] = v[lane] + x[g * n + i * V + lane]
                    q[lane] = q[lane] + x[g * n + i * V + lane] * x[g * n + i * V + lane]
            for k in range(1, V // R):
                for lane in T.vectorized(R):
                    v[lane] = v[lane] + v[k * R + lane]
                    q[lane] = q[lane] + q[k * R + lane]
            halve(v, q)
            tot[0] = v[0]
            tot[1] = q[0]
        gst[0] = tot[0] / T.float32(n)
        gst[1] = T.rsqrt(tot[1] / T.float32(n) - gst[0] * gst[0] + T.float32(eps))

    return group_stats


def depthwise_chw_kernel(H: int, W: int, C: int, stride: int, norm: tuple | None = None, stats: bool = False):
    """A 3x3 depthwise convolution, padding 1, NCHW activations, HWIO weights (3, 3, 1, C) as the channels-last module
    keeps them. Per channel (parallel): the plane copied into a zero-bordered local one, then each output row as
    vectors of nine multiply-adds with the taps in registers. Stride 2 on rows of 16+ pixels computes every column
    of the rows it needs (contiguous vectors) and keeps the even ones (read with a stride of 2, each vector load
    became 16 scalar ones: 32x32 pixels, 96 channels, 21 -> 6 us).

    `norm` = (groups, eps, lo, hi, from_stats): the input is a GroupNorm's input (with its producer's statistics,
    stats_shape, when from_stats), and the kernel normalises and clips each value as it copies the plane, taking
    (x, gamma, beta, w): the norm kernel between them (a pass reading and one writing the largest tensors of the
    network) is gone. Channels are then taken group by group, each group's statistics made once. `stats`: the output is
    flat, with each channel's statistics after it (stats_shape), for the GroupNorm after it."""
    from tvm.script import tirx as T

    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    Hp, Wp = H + 2, W + 2
    s = stride
    split = stride == 2 and W >= 16  # below that the strided reads cost less than the extra work
    P, M = H * W, W + 1  # a small plane (stride 1) as one vector, planes apart by margins of zeros
    XS, OS = C * P, C * Ho * Wo  # where the statistics start in a flat input / output
    groups, eps, lo, hi, from_stats = norm if norm is not None else (1, 0.0, 0.0, 0.0, False)
    cg = C // groups
    group_stats = _group_stats_macro(C, groups, P, eps, from_stats)
    # tasks: groups of channels when the norm is fused in (its statistics once per group), else channels
    tasks, per_task = (groups, cg) if norm is not None else (C, 1)
    out_stats = _stats_macro(Ho * Wo)

    def val(x, idx, ab):
        # an input value as the depthwise conv sees it: normalised and clipped when the norm is fused in
        if norm is None:
            return x[idx]
        return T.max(T.min(x[idx] * ab[0] + ab[1], T.float32(hi)), T.float32(lo))

    @T.macro
    def channel_norm(x, gamma, beta, c, first, gst, ab):
        # channel c's scale and shift; its group's statistics only when it starts a group (or the task)
        if norm is not None:
            if first or c % cg == 0:
                group_stats(x, XS, c // cg, gst)
            ab[0] = gamma[c] * gst[1]
            ab[1] = beta[c] - gst[0] * ab[0]

    @T.macro
    def load_plane(x, w, c, pad, taps, ab):
        # channel c's nine taps, and its plane inside a zero border one pixel wide
        for t in T.unroll(9):
            taps[t] = w[t * C + c]
        for j in T.vectorized(Wp):
            pad[j] = T.float32(0)
            pad[(Hp - 1) * Wp + j] = T.float32(0)
        for i in range(H):
            pad[(i + 1) * Wp] = T.float32(0)
            pad[(i + 1) * Wp + Wp - 1] = T.float32(0)
            for j in T.vectorized(W):
                pad[(i + 1) * Wp + 1 + j] = val(x, (c * H + i) * W + j, ab)

    @T.macro
    def row_body(x, w, out, gamma, beta):
        for task in T.parallel(tasks):
            gst = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            ab = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            for ci in range(per_task):
                pad = T.alloc_buffer((Hp * Wp,), "float32", scope="local", annotations=STACK)
                taps = T.alloc_buffer((9,), "float32", scope="local", annotations=STACK)
                channel_norm(x, gamma, beta, (task * per_task + ci), ci == 0, gst, ab)
                load_plane(x, w, (task * per_task + ci), pad, taps, ab)
                for oh in range(Ho):
                    for ow in T.vectorized(Wo):
                        out[((task * per_task + ci) * Ho + oh) * Wo + ow] = \
                            taps[0] * pad[(oh * s) * Wp + ow * s] + taps[1] * pad[(oh * s) * Wp + ow * s + 1] \
                            + taps[2] * pad[(oh * s) * Wp + ow * s + 2] \
                            + taps[3] * pad[(oh * s + 1) * Wp + ow * s] \
                            + taps[4] * pad[(oh * s + 1) * Wp + ow * s + 1] \
                            + taps[5] * pad[(oh * s + 1) * Wp + ow * s + 2] \
                            + taps[6] * pad[(oh * s + 2) * Wp + ow * s] \
                            + taps[7] * pad[(oh * s + 2) * Wp + ow * s + 1] \
                            + taps[8] * pad[(oh * s + 2) * Wp + ow * s + 2]
                if stats:
                    out_stats(out, (task * per_task + ci) * Ho * Wo, out, OS + 2 * (task * per_task + ci))

    @T.macro
    def compress_body(x, w, out, gamma, beta):
        for task in T.parallel(tasks):
            gst = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            ab = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            for ci in range(per_task):
                pad = T.alloc_buffer((Hp * Wp,), "float32", scope="local", annotations=STACK)
                row = T.alloc_buffer((W,), "float32", scope="local", annotations=STACK)
                taps = T.alloc_buffer((9,), "float32", scope="local", annotations=STACK)
                channel_norm(x, gamma, beta, (task * per_task + ci), ci == 0, gst, ab)
                load_plane(x, w, (task * per_task + ci), pad, taps, ab)
                for oh in range(Ho):
                    for j in T.vectorized(W):
                        row[j] = taps[0] * pad[(2 * oh) * Wp + j] + taps[1] * pad[(2 * oh) * Wp + j + 1] \
                            + taps[2] * pad[(2 * oh) * Wp + j + 2] \
                            + taps[3] * pad[(2 * oh + 1) * Wp + j] + taps[4] * pad[(2 * oh + 1) * Wp + j + 1] \
                            + taps[5] * pad[(2 * oh + 1) * Wp + j + 2] \
                            + taps[6] * pad[(2 * oh + 2) * Wp + j] + taps[7] * pad[(2 * oh + 2) * Wp + j + 1] \
                            + taps[8] * pad[(2 * oh + 2) * Wp + j + 2]
                    for ow in range(Wo):
                        out[((task * per_task + ci) * Ho + oh) * Wo + ow] = row[2 * ow]
                if stats:
                    out_stats(out, (task * per_task + ci) * Ho * Wo, out, OS + 2 * (task * per_task + ci))

    # planes copied together, then computed (a few KB of stack)
    K = next(k for k in (32, 16, 8, 4, 2, 1) if C % k == 0 and k * (P + W + 1) <= 4096)
    S = P + M

    V = min(P, 16)  # pixels per vector: whole rows (V % W == 0), so a lane's column is lane % W

    def tap(flat, k, i, p, dh, dw):
        v = flat[M + k * S + i * V + p + dh * W + dw]
        return v if dw == 0 else T.Select(T.truncmod(p, W) + dw >= 0, T.Select(T.truncmod(p, W) + dw < W, v,
                                                                                   T.float32(0)), T.float32(0))

    @T.macro
    def flat_body(x, w, out, gamma, beta):
        for g in T.parallel(C // K):
            # rows above and below read the margins; a tap past the left or right edge is masked to zero. All K
            # planes are copied before any is read: a plane read right after its store waited on store forwarding
            # (unaligned loads across one vector store), 3-4x the arithmetic (4x4 pixels, 576 channels: 7.5 -> 2.5 us)
            flat = T.alloc_buffer((M + K * S,), "float32", scope="local", annotations=STACK)
            gst = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            ab = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            for j in T.vectorized(M + K * S):
                flat[j] = T.float32(0)
            for k in range(K):
                channel_norm(x, gamma, beta, g * K + k, k == 0, gst, ab)
                for p in T.vectorized(P):
                    flat[M + k * S + p] = val(x, (g * K + k) * P + p, ab)
            for k, i in T.grid(K, P // V):
                for p in T.vectorized(V):
                    out[(g * K + k) * P + i * V + p] = \
                        w[0 * C + g * K + k] * tap(flat, k, i, p, -1, -1) \
                        + w[1 * C + g * K + k] * tap(flat, k, i, p, -1, 0) \
                        + w[2 * C + g * K + k] * tap(flat, k, i, p, -1, 1) \
                        + w[3 * C + g * K + k] * tap(flat, k, i, p, 0, -1) \
                        + w[4 * C + g * K + k] * tap(flat, k, i, p, 0, 0) \
                        + w[5 * C + g * K + k] * tap(flat, k, i, p, 0, 1) \
                        + w[6 * C + g * K + k] * tap(flat, k, i, p, 1, -1) \
                        + w[7 * C + g * K + k] * tap(flat, k, i, p, 1, 0) \
                        + w[8 * C + g * K + k] * tap(flat, k, i, p, 1, 1)
            if stats:
                for k in range(K):
                    out_stats(out, (g * K + k) * P, out, OS + 2 * (g * K + k))

    if stride == 1 and (P <= 16 or P <= 64 and P % 16 == 0 and 16 % W == 0):  # 16x16: rows were as fast
        body = flat_body
    else:
        body = compress_body if split else row_body
    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, STACK_LOCALS: True}
    XN, ON = XS + (2 * C if from_stats else 0), OS + (2 * C if stats else 0)
    XSHAPE = (XN,) if from_stats else (1, C, H, W)

    # the four signatures: the input plain or with statistics (and the norm's weights), the output likewise
    @T.prim_func(private=True)
    def plain(x4: T.Buffer((1, C, H, W), "float32"), w4: T.Buffer((3, 3, 1, C), "float32"),
              out4: T.Buffer((1, C, Ho, Wo), "float32")):
        T.func_attr(attrs)
        x = T.decl_buffer((XN,), "float32", data=x4.data)
        w = T.decl_buffer((9 * C,), "float32", data=w4.data)
        out = T.decl_buffer((ON,), "float32", data=out4.data)
        body(x, w, out, w, w)

    @T.prim_func(private=True)
    def with_stats(x4: T.Buffer((1, C, H, W), "float32"), w4: T.Buffer((3, 3, 1, C), "float32"),
                   out: T.Buffer((ON,), "float32")):
        T.func_attr(attrs)
        x = T.decl_buffer((XN,), "float32", data=x4.data)
        w = T.decl_buffer((9 * C,), "float32", data=w4.data)
        body(x, w, out, w, w)

    @T.prim_func(private=True)
    def normed(x4: T.Buffer(XSHAPE, "float32"), gamma: T.Buffer((C,), "float32"), beta: T.Buffer((C,), "float32"),
               w4: T.Buffer((3, 3, 1, C), "float32"), out4: T.Buffer((1, C, Ho, Wo), "float32")):
        T.func_attr(attrs)
        x = T.decl_buffer((XN,), "float32", data=x4.data)
        w = T.decl_buffer((9 * C,), "float32", data=w4.data)
        out = T.decl_buffer((ON,), "float32", data=out4.data)
        body(x, w, out, gamma, beta)

    @T.prim_func(private=True)
    def normed_with_stats(x4: T.Buffer(XSHAPE, "float32"), gamma: T.Buffer((C,), "float32"),
                          beta: T.Buffer((C,), "float32"), w4: T.Buffer((3, 3, 1, C), "float32"),
                          out: T.Buffer((ON,), "float32")):
        T.func_attr(attrs)
        x = T.decl_buffer((XN,), "float32", data=x4.data)
        w = T.decl_buffer((9 * C,), "float32", data=w4.data)
        body(x, w, out, gamma, beta)

    return {(False, False): plain, (False, True): with_stats, (True, False): normed,
            (True, True): normed_with_stats}[(norm is not None, stats)]


def conv3x3_chw_kernel(H: int, W: int, cin: int, cout: int):
    """A dense 3x3 convolution, stride 1, padding 1, of few input channels (a stem), NCHW activations, HWIO weights:
    it reads the network's NCHW input as it comes, so the stretch can start at the stem without a transpose (a
    32x32 x 32-channel one cost 15 us, half again the stem's own time). The bordered input planes are made once
    per call; blocks of output channels in parallel, each output row as vectors."""
    from tvm.script import tirx as T

    Hp, Wp = H + 2, W + 2
    CB = _divisor(cout, (8, 4, 2))  # output channels per task: each load of the input serves all of them

    @T.prim_func(private=True)
    def kernel(x4: T.Buffer((1, cin, H, W), "float32"), w4: T.Buffer((3, 3, cin, cout), "float32"),
               out4: T.Buffer((1, cout, H, W), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, STACK_LOCALS: True})
        x = T.decl_buffer((cin * H * W,), "float32", data=x4.data)
        w = T.decl_buffer((9 * cin * cout,), "float32", data=w4.data)
        out = T.decl_buffer((cout * H * W,), "float32", data=out4.data)
        pad = T.alloc_buffer((cin * Hp * Wp,), "float32")
        for ci in range(cin):
            for j in T.vectorized(Wp):
                pad[ci * Hp * Wp + j] = T.float32(0)
                pad[ci * Hp * Wp + (Hp - 1) * Wp + j] = T.float32(0)
            for i in range(H):
                pad[ci * Hp * Wp + (i + 1) * Wp] = T.float32(0)
                pad[ci * Hp * Wp + (i + 1) * Wp + Wp - 1] = T.float32(0)
                for j in T.vectorized(W):
                    pad[ci * Hp * Wp + (i + 1) * Wp + 1 + j] = x[(ci * H + i) * W + j]
        for cb in T.parallel(cout // CB):
            acc = T.alloc_buffer((CB * W,), "float32", scope="local", annotations=STACK)
            for oh in range(H):
                for c in T.unroll(CB):
                    for j in T.vectorized(W):
                        acc[c * W + j] = T.float32(0)
                for ci, kh, kw in T.grid(cin, 3, 3):
                    for c in T.unroll(CB):
                        for j in T.vectorized(W):
                            acc[c * W + j] = acc[c * W + j] + w[((kh * 3 + kw) * cin + ci) * cout + cb * CB + c] \
                                * pad[ci * Hp * Wp + (oh + kh) * Wp + j + kw]
                for c in T.unroll(CB):
                    for j in T.vectorized(W):
                        out[((cb * CB + c) * H + oh) * W + j] = acc[c * W + j]

    return kernel


def group_norm_chw_kernel(H: int, W: int, C: int, groups: int, eps: float, epilogue: tuple = ("none",),
                          stats: bool = False):
    """GroupNorm of NCHW activations: each group is one contiguous run of C/groups planes. Per group (parallel):
    vector sums and sums of squares over the run, then out = x * a + b per channel (a = weight / std, b = bias -
    mean * a) with the epilogue applied before the one store: ("none",), ("clip", lo, hi) or ("add",) (a residual
    input between bias and out). Same statistics as the legalized kernel (E[x^2] - E[x]^2); the normalised value
    rounds differently (x * a + b, not (x - mean) * a + bias). `stats`: x is flat with its producer's per-channel
    statistics after it (stats_shape): one pass, the apply."""
    from tvm.script import tirx as T

    P = H * W
    cg = C // groups
    n = cg * P
    # four vectors of sums: one chain of dependent adds waited out each add (32x32 pixels, 96 channels: 9.4 -> 5.7 us)
    V = _divisor(n, (64, 32, 16, 8, 4, 2))
    PV = _divisor(P, (16, 8, 4, 2))
    kind = epilogue[0]
    lo, hi = (float(epilogue[1]), float(epilogue[2])) if kind == "clip" else (0.0, 0.0)

    group_stats = _group_stats_macro(C, groups, P, eps)
    XN = C * P + (2 * C if stats else 0)
    XSHAPE = (XN,) if stats else (1, C, H, W)

    def after(v, r):
        if kind == "clip":
            return T.max(T.min(v, T.float32(hi)), T.float32(lo))
        if kind == "add":
            return v + r
        return v

    @T.macro
    def body(x, weight, bias, res, out):
        for g in T.parallel(groups):
            s = T.alloc_buffer((V,), "float32", scope="local", annotations=STACK)
            q = T.alloc_buffer((V,), "float32", scope="local", annotations=STACK)
            stat = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            scale = T.alloc_buffer((2,), "float32", scope="local", annotations=STACK)
            if stats:
                group_stats(x, C * P, g, stat)
            else:
                for lane in T.vectorized(V):
                    s[lane] = T.float32(0)
                    q[lane] = T.float32(0)
                for i in range(n // V):
                    for lane in T.vectorized(V):
                        s[lane] = s[lane] + x[g * n + i * V + lane]
                        q[lane] = q[lane] + x[g * n + i * V + lane] * x[g * n + i * V + lane]
                stat[0] = T.float32(0)
                stat[1] = T.float32(0)
                for lane in range(V):
                    stat[0] = stat[0] + s[lane]
                    stat[1] = stat[1] + q[lane]
                # mean and 1 / std folded into one multiply-add per element
                stat[1] = T.rsqrt(stat[1] / T.float32(n) - stat[0] / T.float32(n) * (stat[0] / T.float32(n))
                                  + T.float32(eps))
                stat[0] = stat[0] / T.float32(n)
            for k in range(cg):
                scale[0] = weight[g * cg + k] * stat[1]
                scale[1] = bias[g * cg + k] - stat[0] * scale[0]
                for i in range(P // PV):
                    for lane in T.vectorized(PV):
                        out[(g * cg + k) * P + i * PV + lane] = after(
                            x[(g * cg + k) * P + i * PV + lane] * scale[0] + scale[1],
                            res[(g * cg + k) * P + i * PV + lane])

    @T.prim_func(private=True)
    def kernel(x4: T.Buffer(XSHAPE, "float32"), weight: T.Buffer((C,), "float32"),
               bias: T.Buffer((C,), "float32"), out4: T.Buffer((1, C, H, W), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, STACK_LOCALS: True})
        x = T.decl_buffer((XN,), "float32", data=x4.data)
        out = T.decl_buffer((C * P,), "float32", data=out4.data)
        body(x, weight, bias, x, out)  # no residual: `after` ignores its second value

    @T.prim_func(private=True)
    def with_residual(x4: T.Buffer(XSHAPE, "float32"), weight: T.Buffer((C,), "float32"),
                      bias: T.Buffer((C,), "float32"), res4: T.Buffer((1, C, H, W), "float32"),
                      out4: T.Buffer((1, C, H, W), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8, STACK_LOCALS: True})
        x = T.decl_buffer((XN,), "float32", data=x4.data)
        res = T.decl_buffer((C * P,), "float32", data=res4.data)
        out = T.decl_buffer((C * P,), "float32", data=out4.data)
        body(x, weight, bias, res, out)

    return with_residual if kind == "add" else kernel


# -- the CHW variant of a level module -------------------------------------------------------------------------------

def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _shape(expr) -> list[int] | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    try:
        return [int(d) for d in shape.values]
    except Exception:  # noqa: BLE001 -- not a tensor of known shape
        return None


def _op(expr) -> str | None:
    from tvm import relax

    return getattr(expr.op, "name", None) if isinstance(expr, relax.Call) else None


def _depthwise(call) -> tuple[int, int, int, int] | None:
    """(H, W, C, stride) of a 3x3 depthwise NHWC/HWIO convolution with padding 1, else None."""
    a = call.attrs
    x, w = _shape(call.args[0]), _shape(call.args[1])
    if x is None or w is None or len(x) != 4 or x[0] != 1:
        return None
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NHWC", "HWIO", "NHWC") \
            or int(a.groups) != x[3] or w != [3, 3, 1, x[3]] or _ints(a.padding) != [1, 1, 1, 1] \
            or _ints(a.dilation) != [1, 1] or _ints(a.strides) not in ([1, 1], [2, 2]) \
            or str(call.ty.dtype) != "float32":
        return None
    return x[1], x[2], x[3], _ints(a.strides)[0]


def _stem(call) -> tuple[int, int, int, int] | None:
    """(H, W, Cin, Cout) of a dense 3x3 NHWC/HWIO convolution, stride 1, padding 1, of at most 8 input channels."""
    a = call.attrs
    x, w = _shape(call.args[0]), _shape(call.args[1])
    if x is None or w is None or len(x) != 4 or x[0] != 1 or x[3] > 8:
        return None
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NHWC", "HWIO", "NHWC") \
            or int(a.groups) != 1 or w[:3] != [3, 3, x[3]] or _ints(a.padding) != [1, 1, 1, 1] \
            or _ints(a.dilation) != [1, 1] or _ints(a.strides) != [1, 1] or str(call.ty.dtype) != "float32":
        return None
    return x[1], x[2], x[3], w[3]


def _group_norm(call) -> tuple[int, int, int, int, float] | None:
    """(H, W, C, groups, eps) of an NHWC GroupNorm with weight and bias, else None."""
    a = call.attrs
    x = _shape(call.args[0])
    if x is None or len(x) != 4 or x[0] != 1 or int(a.channel_axis) != 3 or _ints(a.axes) != [1, 2] \
            or not (bool(a.center) and bool(a.scale)) or x[3] % int(a.num_groups) \
            or str(call.ty.dtype) != "float32":
        return None
    return x[1], x[2], x[3], int(a.num_groups), float(a.epsilon)


def rewrite(mod, names: list[str], hwc: dict, chw: dict, min_pixels: int, threads: int = 1):
    """`mod` (a channels-last level module) with a CHW stretch: the 1x1 convs in `chw` ({weight: (Candidate, nnz)})
    run csr_chw_kernel, and the depthwise convs, stems (conv3x3_chw_kernel) and GroupNorms of at least `min_pixels`
    pixels (with a clip or residual add that is their one use) run CHW too, as do ELEMENTWISE ops of CHW values; a
    value crosses between layouts by a transpose, made once, where a consumer needs the other layout. The 1x1 convs
    in `hwc` run sparse.csr_kernel (outside the stretch). `main` takes the CSR arrays in place of every sparse weight,
    at its place in the parameter order."""
    import tvm
    from tvm import relax

    from tvm_build import sparse

    main = mod["main"]
    by_var = sparse._param_names(main, names)
    chosen = {**hwc, **chw}
    new_vars = {name: [relax.Var(csr_name(name, part), relax.TensorType([n], dtype))
                       for part, n, dtype in (("data", max(nnz, 1), "float32"), ("indices", max(nnz, 1), "int32"),
                                              ("indptr", c.cout + 1, "int32"))]
                for name, (c, nnz) in chosen.items()}
    params = [main.params[0]]
    for v in list(main.params)[1:]:
        params += new_vars.get(by_var[v], [v])
    bindings = [b for block in main.body.blocks for b in block.bindings]
    uses: dict = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses[v] = uses.get(v, 0) + 1
    for v in relax.analysis.free_vars(main.body.body):
        uses[v] = uses.get(v, 0) + 1
    producer = {b.var: b.value for b in bindings}

    bb = relax.BlockBuilder()
    env: dict = {}  # old var -> its value in the old layout (new var)
    in_chw: dict = {}  # old var -> its value as NCHW (new var), for values of the stretch
    fused: set = set()  # bindings folded into the norm before them
    with_stats: dict = {}  # old var -> its NCHW value with per-channel statistics after it (stats_shape)
    deferred: dict = {}  # old var (a clipped norm) -> what the depthwise conv reading it needs to normalise itself

    def hwc_of(v):
        if v not in env:
            env[v] = bb.emit(relax.op.permute_dims(in_chw[v], TO_HWC))
        return env[v]

    def chw_of(v):
        if v not in in_chw:
            in_chw[v] = bb.emit(relax.op.permute_dims(env[v], TO_CHW))
        return in_chw[v]

    def call(kernel, name, args, shape):
        gv = bb.add_func(kernel, name)
        return bb.emit(relax.call_tir(gv, args, relax.TensorType(shape, "float32")))

    def single_consumer(v):
        """The binding (var, value) that is v's only use, if v has one use."""
        if uses.get(v, 0) != 1:
            return None
        for b in bindings:
            if any(u.same_as(v) for u in relax.analysis.free_vars(b.value)):
                return b.var, b.value
        return None

    def norm_next(v):
        """Whether v's one use is a GroupNorm the stretch runs: v's producer then makes the norm's statistics."""
        nxt = single_consumer(v)
        if nxt is None or _op(nxt[1]) != "relax.nn.group_norm" or not nxt[1].args[0].same_as(v):
            return False
        shape = _group_norm(nxt[1])
        return shape is not None and shape[0] * shape[1] >= max(min_pixels, STATS_MIN_PIXELS)

    def norm_into(dw):
        """Whether a depthwise conv (_depthwise) normalises its input itself. Not on planes under 4x4 (2x2 pixels, 960
        channels: 4.1 us against 2.5 + 0.9 for the conv and the norm kernel) nor with strided rows (8x8, stride 2:
        2.4 against 1.1 + 1.05): its tasks are then groups, and the per-channel work of those two shows."""
        return dw is not None and dw[0] * dw[1] >= max(min_pixels, 16) and (dw[3] == 1 or dw[1] >= 16)

    def substitute(e):
        if isinstance(e, relax.Var):
            return hwc_of(e)
        if isinstance(e, relax.Tuple):
            return relax.Tuple([substitute(f) for f in e.fields])
        if isinstance(e, relax.Call):
            return relax.Call(e.op, [substitute(a) for a in e.args], e.attrs, e.ty_args)
        if isinstance(e, relax.TupleGetItem):
            return relax.TupleGetItem(substitute(e.tuple_value), e.index)
        return e

    for p in params:
        env[p] = p
    attrs = {k: v for k, v in main.attrs.items()} if main.attrs is not None else None
    with bb.function("main", params, attrs=attrs, pure=main.is_pure):
        with bb.dataflow():
            for b in bindings:
                v, e = b.var, b.value
                if v in fused:
                    continue
                op = _op(e)
                args = [a for a in (e.args if op else []) if isinstance(a, relax.Var)]
                done = False
                if op == "relax.nn.conv2d" and e.args[1] in by_var and by_var[e.args[1]] in chosen:
                    name = by_var[e.args[1]]
                    c, nnz = chosen[name]
                    if name in chw and norm_next(v):
                        with_stats[v] = call(csr_chw_kernel(c, nnz, stats=True),
                                             f"sparse_chw_conv1x1_{c.cin}_{c.cout}_{nnz}_stats",
                                             [chw_of(e.args[0]), *new_vars[name]], stats_shape(c.cout, c.pixels))
                    elif name in chw:
                        in_chw[v] = call(csr_chw_kernel(c, nnz), f"sparse_chw_conv1x1_{c.cin}_{c.cout}_{nnz}",
                                         [chw_of(e.args[0]), *new_vars[name]], [1, c.cout, c.height, c.width])
                    else:
                        env[v] = call(sparse.csr_kernel(c, nnz, threads), f"sparse_conv1x1_{c.cin}_{c.cout}_{nnz}",
                                      [env[e.args[0]], *new_vars[name]], [1, c.height, c.width, c.cout])
                    done = True
                elif op == "relax.nn.conv2d" and _stem(e) and _stem(e)[0] * _stem(e)[1] >= min_pixels \
                        and e.args[0] in in_chw:
                    H, W, ci, co = _stem(e)
                    in_chw[v] = call(conv3x3_chw_kernel(H, W, ci, co), f"conv3x3_chw_{H}x{W}_{ci}_{co}",
                                     [in_chw[e.args[0]], env[e.args[1]]], [1, co, H, W])
                    done = True
                elif op == "relax.nn.conv2d" and _depthwise(e) and _depthwise(e)[0] * _depthwise(e)[1] >= min_pixels:
                    H, W, C, s = _depthwise(e)
                    out = _shape(e)
                    norm, stats = deferred.get(e.args[0]), norm_next(v)
                    name = f"depthwise_chw_{H}x{W}_{C}_s{s}" + ("_normed" if norm else "") \
                        + ("s" if norm and norm[-1] else "") + ("_stats" if stats else "")
                    kernel = depthwise_chw_kernel(H, W, C, s, norm[3:] if norm else None, stats)
                    inputs = [*norm[:3], env[e.args[1]]] if norm else [chw_of(e.args[0]), env[e.args[1]]]
                    if stats:
                        with_stats[v] = call(kernel, name, inputs, stats_shape(C, out[1] * out[2]))
                    else:
                        in_chw[v] = call(kernel, name, inputs, [1, C, out[1], out[2]])
                    done = True
                elif op == "relax.nn.group_norm" and _group_norm(e) \
                        and _group_norm(e)[0] * _group_norm(e)[1] >= min_pixels:
                    H, W, C, groups, eps = _group_norm(e)
                    epilogue, extra, target = ("none",), [], v
                    after = single_consumer(v)
                    if after is not None and _op(after[1]) == "relax.clip":
                        lo, hi = (float(getattr(x.value, "value", x.value)) for x in after[1].args[1:3])
                        epilogue, target = ("clip", lo, hi), after[0]
                    elif after is not None and _op(after[1]) == "relax.add" and all(
                            _shape(a) == _shape(e) for a in after[1].args):
                        other = [a for a in after[1].args if not a.same_as(v)]
                        if len(other) == 1 and isinstance(other[0], relax.Var):
                            epilogue, target, extra = ("add",), after[0], [chw_of(other[0])]
                    kind = "_".join(str(p) for p in epilogue).replace(".", "p").replace("-", "m")
                    stats = e.args[0] in with_stats
                    consumer = single_consumer(target) if epilogue[0] == "clip" else None
                    if consumer is not None and _op(consumer[1]) == "relax.nn.conv2d" \
                            and consumer[1].args[0].same_as(target) and norm_into(_depthwise(consumer[1])):
                        # the depthwise conv after it normalises as it reads: no norm kernel
                        deferred[target] = (with_stats[e.args[0]] if stats else chw_of(e.args[0]), env[e.args[1]],
                                            env[e.args[2]], groups, eps, *epilogue[1:], stats)
                    else:
                        x = with_stats[e.args[0]] if stats else chw_of(e.args[0])
                        in_chw[target] = call(group_norm_chw_kernel(H, W, C, groups, eps, epilogue, stats),
                                              f"group_norm_chw_{H}x{W}_{C}_{kind}" + ("_stats" if stats else ""),
                                              [x, env[e.args[1]], env[e.args[2]], *extra], [1, C, H, W])
                    if target is not v:
                        fused.add(target)
                    done = True
                elif op in ELEMENTWISE and any(a in in_chw for a in args) \
                        and _shape(e) is not None and len(_shape(e)) == 4 \
                        and all(_shape(a) == _shape(e) for a in args):
                    new_args = [chw_of(a) if isinstance(a, relax.Var) else a for a in e.args]
                    in_chw[v] = bb.emit(relax.Call(e.op, new_args, e.attrs, e.ty_args))
                    done = True
                elif op == "relax.permute_dims" and args and args[0] in in_chw and e.attrs.axes is not None \
                        and tuple(_ints(e.attrs.axes)) == TO_CHW:
                    env[v] = in_chw[args[0]]  # the NCHW value the graph asks for is the stretch's own
                    done = True
                elif op == "relax.permute_dims" and args and e.attrs.axes is not None \
                        and tuple(_ints(e.attrs.axes)) == TO_HWC and _shape(args[0]) and len(_shape(args[0])) == 4:
                    in_chw[v] = env[args[0]]  # the network's NCHW input, made channels-last: the stretch reads it as is
                if not done:
                    env[v] = bb.emit(substitute(e))
            result = main.body.body
            out = bb.emit_output(hwc_of(result) if isinstance(result, relax.Var) else result)
        bb.emit_func_output(out)
    built = bb.get()
    return relax.transform.DeadCodeElimination()(tvm.IRModule(built.functions, attrs=mod.attrs))
