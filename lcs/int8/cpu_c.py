"""One quantized level (`Graph`) as C for the CPU int8 kernels (firmware_host/src/cpu/q8_cpu.c): weights packed
in the layout the GEMM reads, a static arena planned by lifetime (emit_c.plan_arena), and the entry points
lcs.runtime calls through ctypes:

    float *lcs_input(void)    the float input, NCHW (as the fp32 levels take it)
    float *lcs_output(void)   the float output
    void lcs_park(void)       let the thread pool's workers sleep now (another library runs next)
    int lcs_run(int threads)  on `threads` threads (the caller and a pool of threads-1 workers of this library,
                              firmware_host/src/cpu/q8_pool.c; 0, or -1: a count outside [1, 64], -2: no thread);
                              quantize the input (float32 x * (1/s), round half to even, clamp: firmware_c's
                              device_input), run the layers, output = int8 x s in float32 (device_output)

so a level's outputs are `firmware_c.device_forward(graph, x)` bit for bit. The packing does not depend on the
instruction set: the same source compiles for AVX-512 VNNI, AVX2, NEON or plain C (q8_cpu.h picks by the compiler's
target flags)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lcs.errors import LcsError
from lcs.int8.emit_c import c_array, c_float, c_rq, plan_arena
from lcs.int8.graph import Add, Conv, Dense, Graph, GroupNorm, Pool, Requant

NR, KR = 16, 4  # q8_cpu.h: output channels per weight block, window values per step


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([values, np.zeros(n - len(values), values.dtype)])


def pack_gemm(w: np.ndarray) -> tuple[np.ndarray, int, int]:
    """[O, K] int8 weights -> ([ceil(O/16)][Kp/4][16][4] int8, K, Kp): zero beyond O and K."""
    o, k = w.shape
    kp, op = -(-k // KR) * KR, -(-o // NR) * NR
    if np.asarray(w).min(initial=0) < -127:  # NEON adds two products in int16 (q8_cpu.c): |w| <= 127 keeps it exact
        raise LcsError("int8 weights must lie in [-127, 127]")
    full = np.zeros((op, kp), np.int8)
    full[:o, :k] = w
    return full.reshape(op // NR, NR, kp // KR, KR).transpose(0, 2, 1, 3).copy(), k, kp


def conv_scratch(ic: int, oh: int, ow: int, kh: int, kw: int, stride: int) -> int:
    """A bound on q8c_conv_scratch (the padded input, shared) for every instruction set (q8_cpu.c's MR: 16-pixel
    tiles of int8, 8 of int16 or fewer)."""
    return (((oh - 1) * stride + kh) * ((ow + 14) * stride + kw) + 16) * ic * 2 + 64


def conv_local(kp: int) -> int:
    """A bound on q8c_conv_local (accumulators and gathered windows, per thread) for every instruction set."""
    return 16 * (kp + 64) + 2 * 16 * NR * 4 + 128


# dw_pairs' channel order within a block of 32: an int32 lane of _mm512_unpacklo/hi_epi16 of two taps' int16 values
# (per 128-bit lane k, channels 8k..8k+3, then 8k+4..8k+7)
DW_LO = [8 * k + i for k in range(4) for i in range(4)]
DW_HI = [8 * k + 4 + i for k in range(4) for i in range(4)]


def dw_pairs(w: np.ndarray) -> np.ndarray:
    """Depthwise weights [kh][kw][c] -> the AVX-512 VNNI kernel's [taps/2][c/32][lo, hi][16 channels][2 taps] int16:
    taps in pairs (a zero tap after an odd count), channels in blocks of 32 (zeros past c) in DW_LO / DW_HI order,
    so vpdpwssd adds both taps' products of 16 channels at once."""
    kh, kw, c = w.shape
    taps = np.asarray(w, np.int16).reshape(kh * kw, c)
    t2, c32 = -(-kh * kw // 2) * 2, -(-c // 32) * 32
    full = np.zeros((t2, c32), np.int16)
    full[:kh * kw, :c] = taps
    blocks = full.reshape(t2 // 2, 2, c32 // 32, 32)  # [pair][tap][block][channel]
    order = np.array([DW_LO, DW_HI])  # [lo/hi][16]
    return blocks[:, :, :, order].transpose(0, 2, 3, 4, 1).copy()  # [pair][block][lo/hi][16][tap]


def dw_order(values: np.ndarray, c: int) -> np.ndarray:
    """Per-channel values in dw_pairs' order: per block of 32, the DW_LO channels then the DW_HI ones."""
    c32 = -(-c // 32) * 32
    v = _pad(np.asarray(values, np.int64), c32).reshape(c32 // 32, 32)
    return v[:, DW_LO + DW_HI].reshape(-1)


def _arr(ctype: str, name: str, values) -> str:
    return c_array(ctype, name, values, per_line=32, align=64)  # 64: the AVX-512 kernels' aligned loads


def _rq_arrays(i: int, rqs: list[Requant], n: int) -> str:
    return "".join(_arr("int32_t", f"{f}{i}", _pad(np.array([getattr(r, f) for r in rqs], np.int64), n))
                   for f in ("m", "l", "n"))


def _padded_input(graph: Graph) -> Graph:
    """The graph with its input stored on a multiple of 4 channels (zero channels, zero weights) where only dense
    convs read it: a 3-channel stem then runs the taps GEMM over the padded input instead of gathering 27-value
    windows pixel by pixel (4x faster here). The same arithmetic: the added terms are 0 x 0."""
    t = graph.tensors
    h, w, c = t[graph.input].shape
    readers = [op for op in graph.ops if graph.input in (op.inp, getattr(op, "add", None))]
    if c % 4 == 0 or not all(isinstance(op, Conv) and not op.depthwise and op.inp == graph.input
                             and op.add != graph.input for op in readers):
        return graph
    cp = -(-c // 4) * 4
    ops = [replace(op, weight=np.concatenate([op.weight, np.zeros((*op.weight.shape[:3], cp - c), op.weight.dtype)],
                                             axis=3)) if op in readers else op for op in graph.ops]
    tensors = {**t, graph.input: replace(t[graph.input], shape=(h, w, cp))}
    return replace(graph, tensors=tensors, ops=ops)


def emit_cpu(graph: Graph, input_chw: tuple[int, int, int]) -> str:
    """C source of one level for firmware_host/src/cpu (see the module docstring)."""
    if not graph.quantized:
        raise LcsError("the graph is not quantized")
    t = graph.tensors
    if len(t[graph.output].shape) != 1:
        raise LcsError("int8 CPU levels end in a vector (a classifier's logits)")
    c_in, h_in, w_in = input_chw
    if tuple(t[graph.input].shape) != (h_in, w_in, c_in):
        raise LcsError(f"input shape {input_chw} does not match the graph's {t[graph.input].shape} (HWC)")
    graph = _padded_input(graph)
    t = graph.tensors
    c_store = t[graph.input].shape[2]  # channels of the stored input (c_in, or padded to 4)
    offsets, arena = plan_arena(graph)
    out = ["/* generated by lcs.int8.cpu_c: do not edit */", '#include "q8_cpu.h"', '#include "q8_pool.h"',
           "#include <math.h>", ""]
    calls, scratch, local = [], 64, 64
    for i, op in enumerate(graph.ops):
        src, dst = f"arena + {offsets[op.inp]}", f"arena + {offsets[op.out]}"
        if isinstance(op, Conv) and op.depthwise:
            ih, iw, c = t[op.inp].shape
            oh, ow, _ = t[op.out].shape
            kh, kw = op.kernel
            out.append(_arr("int8_t", f"w{i}", np.transpose(op.weight[..., 0], (1, 2, 0))))  # [kh][kw][c]
            out.append(_arr("int32_t", f"b{i}", op.bias) + _rq_arrays(i, op.rq, c))
            # the same in the VNNI kernel's paired layout (q8c_dw_t.pairs)
            out.append("#if Q8C_ISA == 1\n" + _arr("int16_t", f"wp{i}", dw_pairs(np.transpose(op.weight[..., 0], (1, 2, 0))))
                       + "".join(_arr("int32_t", f"{f}p{i}", dw_order(v, c)) for f, v in (
                           ("b", op.bias), ("m", [r.m for r in op.rq]), ("l", [r.l for r in op.rq]),
                           ("n", [r.n for r in op.rq])))
                       + f"#define PAIRS{i} {{wp{i}, bp{i}, {{mp{i}, lp{i}, np{i}}}}}\n#else\n#define PAIRS{i} {{0, 0, {{0, 0, 0}}}}\n#endif\n")
            skip = f"arena + {offsets[op.add]}" if op.add else "0"
            out.append(f"static const q8c_dw_t p{i} = {{{ih}, {iw}, {c}, {oh}, {ow}, {kh}, {kw}, {op.stride}, "
                       f"{op.pads[0]}, {op.pads[2]}, {int(op.relu)}, w{i}, b{i}, {{m{i}, l{i}, n{i}}}, {skip}, "
                       f"{c_rq(op.rq_add if op.add else None)}, PAIRS{i}}};\n")
            calls.append(f"q8c_dwconv(&p{i}, {src}, {dst}, scratch);")
            local = max(local, max(c * 4, ow * (kh * kw + 1) * 8) + 64)  # q8c_dw_local
        elif isinstance(op, (Conv, Dense)):
            if isinstance(op, Conv):
                ih, iw, ic = t[op.inp].shape
                oh, ow, oc = t[op.out].shape
                kh, kw = op.kernel
                stride, pt, pl, relu = op.stride, op.pads[0], op.pads[2], op.relu
                flat = op.weight.reshape(oc, -1)  # OHWI: the window's (ky, kx, c) order
            else:
                (ic,), (oc,) = t[op.inp].shape, t[op.out].shape
                ih = iw = oh = ow = kh = kw = stride = 1
                pt = pl = relu = 0
                flat = op.weight
            packed, k, kp = pack_gemm(np.asarray(flat))
            ocp = packed.shape[0] * NR
            bias = _pad(np.asarray(op.bias, np.int64), ocp)
            bias_u8 = bias - 128 * _pad(np.asarray(flat, np.int64).sum(axis=1), ocp)
            out.append(_arr("int8_t", f"w{i}", packed) + _arr("int32_t", f"b{i}", bias)
                       + _arr("int32_t", f"bu{i}", bias_u8) + _rq_arrays(i, op.rq, ocp))
            add = getattr(op, "add", None)
            skip = f"arena + {offsets[add]}" if add else "0"
            out.append(f"static const q8c_conv_t p{i} = {{{ih}, {iw}, {ic}, {oh}, {ow}, {oc}, {kh}, {kw}, {stride}, "
                       f"{pt}, {pl}, {k}, {kp}, {int(relu)}, w{i}, b{i}, bu{i}, {{m{i}, l{i}, n{i}}}, {skip}, "
                       f"{c_rq(op.rq_add if add else None)}}};\n")
            calls.append(f"q8c_conv(&p{i}, {src}, {dst}, scratch);")
            scratch = max(scratch, conv_scratch(ic, oh, ow, kh, kw, stride))
            local = max(local, conv_local(kp))
        elif isinstance(op, Pool):
            h, w, c = t[op.inp].shape
            r = op.rq
            out.append(f"static const q8_rq_t rq{i} = {c_rq(r)};\n")
            calls.append(f"q8c_avgpool({src}, {h * w}, {c}, &rq{i}, {dst}, scratch);")
            scratch = max(scratch, c * 4 + 64)
        elif isinstance(op, Add):
            out.append(f"static const q8_rq_t ra{i} = {c_rq(op.rq)}, rb{i} = {c_rq(op.rq_add)};\n")
            calls.append(f"q8c_add({int(np.prod(t[op.out].shape))}, {src}, arena + {offsets[op.add]}, ra{i}, rb{i}, "
                         f"{int(op.relu)}, {dst});")
        elif isinstance(op, GroupNorm):
            h, w, c = t[op.inp].shape
            out.append(_arr("int32_t", f"g{i}", op.g) + _arr("int8_t", f"ge{i}", op.ge) + _arr("int32_t", f"b{i}", op.b))
            out.append(f"static const q8_gn_t p{i} = {{{h * w}, {c}, {op.groups}, {int(op.relu)}, {op.lo}, {op.hi}, "
                       f"{op.e}LL, g{i}, ge{i}, b{i}}};\n")
            calls.append(f"q8c_groupnorm(&p{i}, {src}, {dst}, scratch);")
            scratch = max(scratch, c * 48 + 512)  # q8c_gn_scratch
        else:
            raise LcsError(f"{op.out}: no CPU int8 kernel for {type(op).__name__}")
    n_out = t[graph.output].shape[0]
    inv = np.float32(1.0) / np.float32(t[graph.input].scale)  # firmware_c.device_input's reciprocal
    head = [f"static int8_t arena[{max(arena, 4)}] __attribute__((aligned(64)));",
            f"static int64_t scratch[{-(-scratch // 8)}] __attribute__((aligned(64)));",
            f"static float in_buf[{c_in * h_in * w_in}] __attribute__((aligned(64)));",
            f"static float out_buf[{n_out}] __attribute__((aligned(64)));", ""]
    entry = [
        "float *lcs_input(void) { return in_buf; }",
        "float *lcs_output(void) { return out_buf; }",
        "void lcs_park(void) { q8p_park(); }",
        "int lcs_run(int threads) {",
        f"  const int32_t rc = q8p_start(threads, {local});",
        "  if (rc) return rc;",
        f"  int8_t *x = arena + {offsets[graph.input]};",
        f"  q8c_input(in_buf, {h_in * w_in}, {c_in}, {c_store}, {c_float(inv)}, x);  /* NCHW float -> HWC int8 */",
        *[f"  {c}" for c in calls],
        f"  const int8_t *y = arena + {offsets[graph.output]};",
        f"  const float s = {c_float(t[graph.output].scale)};",
        f"  for (int i = 0; i < {n_out}; i++) out_buf[i] = (float)y[i] * s;",
        "  return 0;",
        "}"]
    return "\n".join(out[:5] + head + out[5:] + entry) + "\n"
