"""The int8 levels of one model as the firmware's model (firmware_host/src/lcs_model.h) for the kernels of
firmware_host/src/kernels_int8.c: `firmware_model(levels, ...)` returns the C source and the weight store.

Every number of every level lives in the weight store (the bank main.c keeps, uploads and checks by CRC):
per level an 8-byte header (float32 1/input scale, float32 output scale), then per layer its int8 weights
(dense window or sparse entries), int32 biases and requantization tables, each 4-byte aligned; identical
blocks are stored once. The code holds only geometry and offsets: a level switch selects a table, an
inference quantizes the float input (x * (1/s) in float32, round half to even, clamped to int8), runs the
level's layers on one shared arena and returns the int8 output times its scale as float32. `device_input`
and `device_output` are that arithmetic on the host, so the reference is bit-identical."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from lcs.errors import LcsError
from lcs.int8.emit_c import conv_window, plan_arena, sparse_entries
from lcs.int8.graph import Conv, Dense, Graph, GroupNorm, Pool, Requant, run_int

NONE = 0xFFFFFFFF
FAMILY_CODES = {"dense": 0, "unstructured": 1, "structured": 2, "quantization": 3}


def device_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Float NHWC input -> int8 as the firmware quantizes it (float32 multiply by the stored reciprocal)."""
    inv = np.float32(1.0) / np.float32(graph.tensors[graph.input].scale)
    q = np.rint(np.asarray(x, np.float32) * inv)
    return np.clip(q, -128, 127).astype(np.int8)


def device_output(graph: Graph, q: np.ndarray) -> np.ndarray:
    return np.asarray(q, np.float32) * np.float32(graph.tensors[graph.output].scale)


def device_forward(graph: Graph, x: np.ndarray) -> np.ndarray:
    """What the firmware answers for float NHWC `x`: the integer reference between the device's conversions."""
    return device_output(graph, run_int(graph, device_input(graph, x)))


class _Store:
    """The weight store being laid out: 4-byte aligned blocks, identical blocks once."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.seen: dict[bytes, int] = {}
        self.weights = 0  # int8 weights (dense) or nonzeros (sparse) stored

    def put(self, blob: bytes) -> int:
        if blob in self.seen:
            return self.seen[blob]
        off = len(self.data)
        self.data += blob + b"\0" * (-len(blob) % 4)
        self.seen[blob] = off
        return off


def _rq_bytes(rqs: list[Requant]) -> bytes:
    return b"".join(struct.pack("<iBBxx", r.m, r.l, r.n) for r in rqs)


@dataclass
class FirmwareModel:
    source: str  # model_int8.c
    bank: bytes  # the weight store
    arena_bytes: int
    scratch_bytes: int
    payload_bytes: int  # main.c's receive buffer must hold this much: the float input, then the arena
    weights: int  # weights of every level (dense count) the store holds
    stored_weights: int  # weights (or sparse nonzeros) actually stored, after sharing identical blocks
    sparse_layers: list[list[str]]  # per level: the layers that run the sparse kernel

    @property
    def bytes_per_weight(self) -> float:
        return len(self.bank) / max(self.stored_weights, 1)


def _is_sparse(op: Conv, sparse_from: float | None) -> bool:
    return (not op.depthwise and sparse_from is not None
            and np.count_nonzero(op.weight) <= (1 - sparse_from) * op.weight.size)


def firmware_model(graphs: list[Graph], levels: list, family: str, default_level: int, *, dsp: bool,
                   sparse_from: float | None, upload_bank: bool,
                   input_chw: tuple[int, int, int] | None = None) -> FirmwareModel:
    """`graphs`: one quantized graph per level (same input and output shapes); `levels`: their `Level`s;
    `dsp`: the target compiles the kernels with the DSP extension (the store is checked against it at compile time);
    `sparse_from`: convs with at least this fraction of zero weights run the sparse kernel (None: never);
    `input_chw`: the wire input is NCHW floats of this shape (the firmware transposes to HWC while quantizing;
    None: the input already is HWC)."""
    if not graphs or len(graphs) != len(levels):
        raise LcsError("an int8 firmware needs one graph per level")
    in_len = {int(np.prod(g.tensors[g.input].shape)) for g in graphs}
    out_len = {int(np.prod(g.tensors[g.output].shape)) for g in graphs}
    if len(in_len) != 1 or len(out_len) != 1:
        raise LcsError("the int8 levels disagree on the input or output size")
    store = _Store()
    store.data += b"\0" * 8 * len(graphs)  # the level headers, written below (never shared)
    descs, funcs, sparse_layers = [], [], []
    arena = scratch = 0
    n_weights = 0
    head = bytearray()
    for li, g in enumerate(graphs):
        if not g.quantized:
            raise LcsError("the int8 firmware needs quantized graphs")
        inv = np.float32(1.0) / np.float32(g.tensors[g.input].scale)
        head += struct.pack("<ff", float(inv), float(np.float32(g.tensors[g.output].scale)))
        offsets, size = plan_arena(g)
        arena = max(arena, size)
        t = g.tensors
        body, sparse_here = [], []
        for i, op in enumerate(g.ops):
            src, dst = offsets[op.inp], offsets[op.out]
            if isinstance(op, Conv):
                ih, iw, ac = t[op.inp].shape
                oh, ow, oc = t[op.out].shape
                kh, kw = op.kernel
                col, window = conv_window(op, ac)
                n_weights += op.weight.size
                if _is_sparse(op, sparse_from):
                    entries, starts = sparse_entries(window)
                    w_off, nz_off, nzs_off = NONE, store.put(entries.astype("<u4").tobytes()), \
                        store.put(starts.astype("<u4").tobytes())
                    store.weights += len(entries)
                    sparse_here.append(op.out)
                else:
                    w_off, nz_off, nzs_off = store.put(np.ascontiguousarray(window, np.int8).tobytes()), NONE, NONE
                    store.weights += op.weight.size
                b_off = store.put(np.asarray(op.bias, "<i4").tobytes())
                rq_off = store.put(_rq_bytes(op.rq))
                add_off = store.put(_rq_bytes([op.rq_add])) if op.add else NONE
                skip = f"arena + {offsets[op.add]}" if op.add else "0"
                descs.append(f"  {{{{{ih}, {iw}, {ac}, {col}, {oh}, {ow}, {oc}, {kh}, {kw}, {op.stride}, {op.pads[0]}, "
                             f"{op.pads[2]}, {int(op.relu)}, {int(op.depthwise)}, 0, 0, 0, {skip}, {{0, 0, 0, {{0, 0}}}}, "
                             f"0, 0}}, {w_off}u, {b_off}u, {rq_off}u, {add_off}u, {nz_off}u, {nzs_off}u}},")
                scratch = max(scratch, (0 if op.depthwise else ((ow - 1) * op.stride + kw) * col * 2) + ow * oc * 4)
                body.append(f"  if (conv(&desc[{len(descs) - 1}], arena + {src}, arena + {dst})) return -1;")
            elif isinstance(op, Pool):
                h, w, c = t[op.inp].shape
                rq_off = store.put(_rq_bytes([op.rq]))
                body.append(f"  q8_avgpool(arena + {src}, {h * w}, {c}, (const q8_rq_t *)(const void *)(bank + {rq_off}u), "
                            f"arena + {dst});")
            elif isinstance(op, Dense):
                n_out, n_in = op.weight.shape
                n_weights += op.weight.size
                store.weights += op.weight.size
                w_off = store.put(np.ascontiguousarray(op.weight, np.int8).tobytes())
                b_off = store.put(np.asarray(op.bias, "<i4").tobytes())
                rq_off = store.put(_rq_bytes(op.rq))
                body.append(f"  q8_dense(arena + {src}, {n_in}, {n_out}, (const int8_t *)(bank + {w_off}u), "
                            f"(const int32_t *)(const void *)(bank + {b_off}u), "
                            f"(const q8_rq_t *)(const void *)(bank + {rq_off}u), arena + {dst});")
            elif isinstance(op, GroupNorm):
                h, w, c = t[op.inp].shape
                g_off = store.put(np.asarray(op.g, "<i4").tobytes())
                ge_off = store.put(np.asarray(op.ge, np.int8).tobytes())
                b_off = store.put(np.asarray(op.b, "<i4").tobytes())
                body.append(f"  {{ q8_gn_t p = {{{h * w}, {c}, {op.groups}, {int(op.relu)}, {op.lo}, {op.hi}, {op.e}LL, "
                            f"(const int32_t *)(const void *)(bank + {g_off}u), (const int8_t *)(bank + {ge_off}u), "
                            f"(const int32_t *)(const void *)(bank + {b_off}u)}}; q8_groupnorm(&p, arena + {src}, "
                            f"arena + {dst}); }}")
            else:
                raise LcsError(f"int8 firmware: no kernel for {type(op).__name__} ({op.out})")
        n_in = int(np.prod(t[g.input].shape))
        n_out = int(np.prod(t[g.output].shape))
        funcs.append((li, offsets[g.input], n_in, offsets[g.output], n_out, body))
        sparse_layers.append(sparse_here)
    store.data[:len(head)] = head
    bank = bytes(store.data)
    scratch = (scratch + 3) // 4 * 4
    n_in = in_len.pop()
    chw = input_chw or (1, 1, n_in)
    if int(np.prod(chw)) != n_in:
        raise LcsError(f"input shape {chw} does not hold the graphs' {n_in} input values")
    src = _source(funcs, descs, levels, family, default_level, bank, arena, scratch, dsp, upload_bank,
                  n_in, out_len.pop(), chw)
    stage = (n_in + 3) // 4 * 4
    return FirmwareModel(src, bank, arena, scratch, max(4 * n_in, stage + arena), n_weights, store.weights,
                         sparse_layers)


def _f32(v: float) -> str:
    return f"{float(np.float32(v)).hex()}f"


def _source(funcs, descs, levels, family, default_level, bank, arena, scratch, dsp, upload_bank, n_in, n_out,
            chw) -> str:
    c, hw = chw[0], chw[1] * chw[2]
    words = np.frombuffer(bank + b"\0" * (-len(bank) % 4), dtype="<u4")
    body = ",\n  ".join(", ".join(f"0x{w:08x}u" for w in words[i:i + 8]) for i in range(0, len(words), 8))
    out = ["/* generated by lcs.int8.firmware_c: the int8 levels of one model. Do not edit. */",
           "#include <stdint.h>", '#include "kernels_int8.h"', '#include "lcs_model.h"', "",
           "#if (defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP) != " + ("1" if dsp else "0"),
           '#error "the weight store was laid out for ' + ("a DSP" if dsp else "a non-DSP") + ' build of the kernels"',
           "#endif",
           "#ifndef LCS_STORE_A_ATTR", "#define LCS_STORE_A_ATTR", "#endif",
           "#ifndef LCS_STORE_B_ATTR", "#define LCS_STORE_B_ATTR", "#endif", "",
           f"const uint8_t lcs_family = {FAMILY_CODES[family]};",
           f"const uint8_t lcs_num_levels = {len(levels)};",
           f"const uint8_t lcs_default_level = {default_level};",
           "const lcs_level_t lcs_levels[] = {",
           *[f"  {{{_f32(lv.alpha)}, {float(lv.keep)!r}, {_f32(lv.width)}, {lv.bits or 0}}}," for lv in levels],
           "};",
           f"const uint32_t lcs_input_len = {n_in};", f"const uint32_t lcs_output_len = {n_out};",
           f"const uint32_t lcs_weight_bytes = {len(bank)};",
           "const uint8_t lcs_model_hash[16] = {"
           + ", ".join(str(b) for b in hashlib.sha256(bank + "\n".join(descs).encode()).digest()[:16]) + "};",
           f"LCS_STORE_A_ATTR uint32_t lcs_bank_a_words[{max(1, len(words))}] __attribute__((aligned(16))) = {{\n  {body}\n}};",
           (f"LCS_STORE_B_ATTR uint32_t lcs_bank_b_words[{max(1, len(words))}] __attribute__((aligned(16)));"
            if upload_bank else "uint32_t *const lcs_bank_b_words = 0;  /* no spare bank: uploads are refused */"),
           f"const uint8_t lcs_has_upload_bank = {int(upload_bank)};",
           "const char *lcs_last_error = \"\";", "int lcs_active_level;", "",
           "/* The arena shares main.c's receive buffer: an INFER payload (the float input) is quantized in place to",
           "   its first bytes (byte i after float i: never ahead of the reads), then moved to the arena behind them. */",
           f"#define STAGE {(n_in + 3) // 4 * 4}",
           "#define arena ((int8_t *)lcs_rx_buffer + STAGE)",
           f"static int16_t scratch[{max(scratch // 2, 2)}] __attribute__((aligned(4)));",
           "static const uint8_t *bank;", "",
           "/* a conv's geometry (pointers 0) and where its numbers sit in the store (0xFFFFFFFF: none) */",
           "typedef struct { q8_conv_t g; uint32_t w, b, rq, rq_add, nz, nzs; } desc_t;",
           f"static const desc_t desc[{max(len(descs), 1)}] = {{", *(descs or ["  {{0}}"]), "};", "",
           "#define AT(off, type) ((off) == 0xFFFFFFFFu ? 0 : (type)(const void *)(bank + (off)))",
           "static int conv(const desc_t *d, const int8_t *in, int8_t *out) {",
           "  q8_conv_t p = d->g;",
           "  p.w = AT(d->w, const int8_t *);",
           "  p.bias = AT(d->b, const int32_t *);",
           "  p.rq = AT(d->rq, const q8_rq_t *);",
           "  if (d->rq_add != 0xFFFFFFFFu) p.rq_add = *AT(d->rq_add, const q8_rq_t *);",
           "  p.nz = AT(d->nz, const uint32_t *);",
           "  p.nz_start = AT(d->nzs, const uint32_t *);",
           "  if (q8_conv_scratch(&p) > (int32_t)sizeof scratch) { lcs_last_error = \"scratch too small\"; return -1; }",
           "  q8_conv(&p, in, out, scratch);",
           "  return 0;",
           "}", ""]
    for li, in_off, _n_in, out_off, _n_out, lines in funcs:
        out += [f"static int run_{li}(void) {{", *lines, "  return 0;", "}", ""]
    out += [f"static int (*const run[])(void) = {{{', '.join(f'run_{f[0]}' for f in funcs)}}};",
            f"static const uint32_t in_off[] = {{{', '.join(str(f[1]) for f in funcs)}}};",
            f"static const uint32_t out_off[] = {{{', '.join(str(f[3]) for f in funcs)}}};", "",
            "void lcs_model_bind(const uint8_t *b) { bank = b; }", "",
            "/* a level's layers and numbers are all in place: switching is choosing the table */",
            "int lcs_set_level(int index, const uint8_t *b) {",
            "  if (index < 0 || index >= lcs_num_levels) return -1;",
            "  bank = b;",
            "  lcs_active_level = index;",
            "  return 0;",
            "}", "",
            "int lcs_model_run_switch(void) { return 0; }", "",
            "int lcs_model_infer(const float *input, float *output) {",
            "  int l = lcs_active_level;",
            "  const float *scales = (const float *)(const void *)bank + 2 * l;  /* 1 / input scale, output scale */",
            "  float inv = scales[0], s_out = scales[1];",
            "  int8_t *stage = (int8_t *)lcs_rx_buffer, *x = arena + in_off[l];",
            f"  for (uint32_t i = 0; i < {n_in}u; i++) {{",
            "    /* round half to even without libm: adding and removing 1.5 * 2^23 rounds in the default mode */",
            "    float v = input[i] * inv;",
            "    int32_t q;",
            "    if (!(v > -128.0f)) q = -128;",
            "    else if (v >= 127.0f) q = 127;",
            "    else { volatile float r = v + 12582912.0f; q = (int32_t)(r - 12582912.0f); }",
            "    stage[i] = (int8_t)q;",
            "  }",
            f"  for (uint32_t ch = 0; ch < {c}u; ch++)  /* NCHW -> HWC */",
            f"    for (uint32_t p = 0; p < {hw}u; p++) x[p * {c}u + ch] = stage[ch * {hw}u + p];",
            "  if (run[l]()) return -1;",
            "  const int8_t *y = arena + out_off[l];",
            "  for (uint32_t i = 0; i < lcs_output_len; i++) output[i] = (float)y[i] * s_out;",
            "  return 0;",
            "}", ""]
    return "\n".join(out)
