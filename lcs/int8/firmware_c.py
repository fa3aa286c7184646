"""The int8 levels of one model as the firmware's model (firmware_host/src/lcs_model.h) for the kernels of
firmware_host/src/kernels_int8.c: `firmware_model(levels, ...)` returns the C source and the ready weight store,
`derived_firmware_model` the derived one (an LCS+P model's codes once, each level built in RAM at its switch; see
there and lcs/int8/derived.py). What follows is the ready store.

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
from dataclasses import dataclass, field

import numpy as np

from lcs.errors import LcsError
from lcs.int8.emit_c import c_float, conv_window, plan_arena, sparse_entries
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


def _groupnorm_call(op: GroupNorm, shape: tuple[int, int, int], store: _Store, src: int, dst: int) -> str:
    """The C call of one GroupNorm layer, its parameters put in the store (the same in every store mode)."""
    h, w, c = shape
    g_off = store.put(np.asarray(op.g, "<i4").tobytes())
    ge_off = store.put(np.asarray(op.ge, np.int8).tobytes())
    b_off = store.put(np.asarray(op.b, "<i4").tobytes())
    return (f"  {{ q8_gn_t p = {{{h * w}, {c}, {op.groups}, {int(op.relu)}, {op.lo}, {op.hi}, {op.e}LL, "
            f"(const int32_t *)(const void *)(bank + {g_off}u), (const int8_t *)(bank + {ge_off}u), "
            f"(const int32_t *)(const void *)(bank + {b_off}u)}}; q8_groupnorm(&p, arena + {src}, arena + {dst}); }}")


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
    store: str = "ready"  # "ready": every level's numbers stored as the kernels read them; "derived": see below
    model_weights: int = 0  # weights of the model's densest level (an LCS+P model's point)
    ram_buffer_bytes: int = 0  # derived store: RAM the largest level materializes in
    # derived store, per level: codes a switch scans for sparse entries, entries it writes, codes it copies masked;
    # the MACs its dense and sparse kernels run and the values its layers write
    level_work: list[dict] = field(default_factory=list)
    threshold_blocks: list[list[tuple[int, int]]] = field(default_factory=list)  # derived: per level (offset, bytes)

    @property
    def bytes_per_stored_entry(self) -> float:
        return len(self.bank) / max(self.stored_weights, 1)

    @property
    def bytes_per_model_weight(self) -> float:
        """The store (every level's numbers: codes, scales, biases, tables, thresholds) per weight of the model."""
        return len(self.bank) / max(self.model_weights, 1)


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
                body.append(_groupnorm_call(op, t[op.inp].shape, store, src, dst))
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
    from lcs.int8.derived import model_weights

    return FirmwareModel(src, bank, arena, scratch, max(4 * n_in, stage + arena), n_weights, store.weights,
                         sparse_layers, "ready", max(model_weights(g) for g in graphs))


def _ready_code(descs: list[str]) -> list[str]:
    """The ready store's conv glue: a conv's numbers are read from the store by offset."""
    return ["/* a conv's geometry (pointers 0) and where its numbers sit in the store (0xFFFFFFFF: none) */",
            "typedef struct { q8_conv_t g; uint32_t w, b, rq, rq_add, nz, nzs; } desc_t;",
            f"static const desc_t desc[{max(len(descs), 1)}] = {{", *(descs or ["  {{0}}"]), "};", "",
            AT_MACRO,
            "static int conv(const desc_t *d, const int8_t *in, int8_t *out) {",
            "  q8_conv_t p = d->g;",
            "  p.w = AT(d->w, const int8_t *);",
            "  p.bias = AT(d->b, const int32_t *);",
            "  p.rq = AT(d->rq, const q8_rq_t *);",
            "  if (d->rq_add != 0xFFFFFFFFu) p.rq_add = *AT(d->rq_add, const q8_rq_t *);",
            "  p.nz = AT(d->nz, const uint32_t *);",
            "  p.nz_start = AT(d->nzs, const uint32_t *);",
            SCRATCH_CHECK,
            "  q8_conv(&p, in, out, scratch);",
            "  return 0;",
            "}"]


AT_MACRO = "#define AT(off, type) ((off) == 0xFFFFFFFFu ? 0 : (type)(const void *)(bank + (off)))"
SCRATCH_CHECK = ("  if (q8_conv_scratch(&p) > (int32_t)sizeof scratch) { lcs_last_error = \"scratch too small\"; "
                 "return -1; }")
_READY_SWITCH = ["/* a level's layers and numbers are all in place: switching is choosing the table */",
                "int lcs_set_level(int index, const uint8_t *b) {",
                "  if (index < 0 || index >= lcs_num_levels) return -1;",
                "  bank = b;",
                "  lcs_active_level = index;",
                "  return 0;",
                "}", ""]

# derived store: how a level gets a layer's codes (the slot record's mode)
FROM_FLASH, MASKED, SPARSE, REGRID = 0, 1, 2, 3


def _rq_one(r: Requant) -> bytes:
    return _rq_bytes([r])


def derived_firmware_model(graphs: list[Graph], plans: list, dense_index: int, levels: list, family: str,
                           default_level: int, *, dsp: bool, sparse_from: float | None, upload_bank: bool,
                           input_chw: tuple[int, int, int] | None = None) -> FirmwareModel:
    """The derived store (lcs/int8/derived.py): `graphs` and `plans` from `derive_levels`. The store holds the
    densest level's codes, biases and requantization tables once and per level a slot table: per weighted layer
    and pool (int8 bias exponent, int8 requantization shift, int8 residual shift, uint8 mode, uint32 offset of
    the thresholds) plus the thresholds. A switch materializes the level in a RAM buffer (masked codes, or the
    sparse kernel's entries for convs the board runs sparse, and the shifted biases and tables); what a level
    leaves unchanged is read from flash. The buffer's size (the largest level) is `ram_buffer_bytes`."""
    from lcs.int8.derived import model_weights

    dense = graphs[dense_index]
    n_levels = len(graphs)
    in_len = int(np.prod(dense.tensors[dense.input].shape))
    out_len = int(np.prod(dense.tensors[dense.output].shape))
    store = _Store()
    store.data += b"\0" * 8 * n_levels
    head = bytearray()
    for g in graphs:
        inv = np.float32(1.0) / np.float32(g.tensors[g.input].scale)
        head += struct.pack("<ff", float(inv), float(np.float32(g.tensors[g.output].scale)))
    offsets, arena = plan_arena(dense)
    t = dense.tensors
    slots: dict[int, int] = {}  # op index -> slot
    descs, slot_geo = [], []  # C initializers; (kind, oc, win, depthwise) per slot
    for i, op in enumerate(dense.ops):
        if isinstance(op, Conv):
            ih, iw, ac = t[op.inp].shape
            oh, ow, oc = t[op.out].shape
            kh, kw = op.kernel
            col, window = conv_window(op, ac)
            w_off = store.put(np.ascontiguousarray(window, np.int8).tobytes())
            store.weights += op.weight.size
            add_off = store.put(_rq_one(op.rq_add)) if op.add else NONE
            skip = f"arena + {offsets[op.add]}" if op.add else "0"
            win = window.size // oc
            descs.append(f"  {{{{{ih}, {iw}, {ac}, {col}, {oh}, {ow}, {oc}, {kh}, {kw}, {op.stride}, {op.pads[0]}, "
                         f"{op.pads[2]}, {int(op.relu)}, {int(op.depthwise)}, 0, 0, 0, {skip}, {{0, 0, 0, {{0, 0}}}}, "
                         f"0, 0}}, {w_off}u, {store.put(np.asarray(op.bias, '<i4').tobytes())}u, "
                         f"{store.put(_rq_bytes(op.rq))}u, {add_off}u, {win}, 0}},")
            slot_geo.append(("conv", oc, win, op.depthwise))
        elif isinstance(op, Dense):
            n_out, n_in = op.weight.shape
            w_off = store.put(np.ascontiguousarray(op.weight, np.int8).tobytes())
            store.weights += op.weight.size
            descs.append(f"  {{{{1, 1, {n_in}, 0, 1, 1, {n_out}}}, {w_off}u, "
                         f"{store.put(np.asarray(op.bias, '<i4').tobytes())}u, {store.put(_rq_bytes(op.rq))}u, "
                         f"{NONE}u, {n_in}, 1}},")
            slot_geo.append(("dense", n_out, n_in, False))
        elif isinstance(op, Pool):
            descs.append(f"  {{{{0}}, {NONE}u, {NONE}u, {store.put(_rq_one(op.rq))}u, {NONE}u, 0, 2}},")
            slot_geo.append(("pool", 0, 0, False))
        else:
            continue
        slots[i] = len(descs) - 1
    # per level: thresholds, the slot table, and what the level's RAM buffer needs
    level_tab, sparse_layers, buffer_need, work, thr_blocks = [], [], [], [], []
    zeros: dict[int, int] = {}
    for g, plan in zip(graphs, plans):
        recs, need, sparse_here, blocks = bytearray(), 0, [], []
        counts = {"scanned": 0, "kept": 0, "masked": 0, "regridded": 0, "dense_macs": 0, "sparse_macs": 0,
                  "outputs": sum(int(np.prod(t[op.out].shape)) for op in g.ops)}
        for i, s_i in sorted(slots.items(), key=lambda kv: kv[1]):
            op, dop = g.ops[i], dense.ops[i]
            kind, oc, win, dw = slot_geo[s_i]
            if kind == "pool":
                recs += struct.pack("<bbbBI", 0, plan.k[op.out] - plan.k[op.inp], 0, FROM_FLASH, NONE)
                continue
            mode, thr_off = FROM_FLASH, NONE
            pixels = int(np.prod(t[op.out].shape[:-1])) if kind == "conv" else 1
            kb = plan.k[op.inp]  # the level's exponents: its input's, its output's over its input's, the residual's
            kr = plan.k[op.out] - plan.k[op.inp]
            ka = plan.k[op.out] - plan.k[op.add] if isinstance(op, Conv) and op.add else 0
            if i in plan.regrid:  # the quantization family: codes, biases and tables on the level's grid
                p_, d_ = plan.regrid[i]
                k_off = store.put(np.asarray(plan.grid_k[i], np.uint8).tobytes())
                thr_off = store.put(struct.pack("<BxHI", p_, d_, k_off))
                blocks.append((thr_off, 8))
                blocks.append((k_off, oc))
                need += (oc * win + 3) // 4 * 4 + 12 * oc
                counts["regridded"] += oc * win
                counts["dense_macs"] += op.weight.size * pixels
                recs += struct.pack("<bbbBI", kb, kr, ka, REGRID, thr_off)
                continue
            if kind == "conv" and _is_sparse(op, sparse_from):
                mode = SPARSE
            elif i in plan.thresholds:
                mode = MASKED
            if mode != FROM_FLASH:
                thr = plan.thresholds.get(i)
                if thr is None:
                    thr_off = zeros.setdefault(oc, store.put(bytes(oc)))
                else:
                    thr_off = store.put(np.asarray(thr, np.uint8).tobytes())
                blocks.append((thr_off, oc))
            nonzero = int(np.count_nonzero(op.weight))
            if mode == SPARSE:
                need += 4 * (oc + 1) + 4 * nonzero
                sparse_here.append(op.out)
                counts["scanned"] += oc * win
                counts["kept"] += nonzero
                counts["sparse_macs"] += nonzero * pixels
            else:
                if mode == MASKED:
                    need += (oc * win + 3) // 4 * 4
                    counts["masked"] += oc * win
                counts["dense_macs"] += op.weight.size * pixels
            need += (4 * oc if kb else 0) + (8 * oc if kr else 0)
            recs += struct.pack("<bbbBI", kb, kr, ka, mode, thr_off)
        level_tab.append(store.put(bytes(recs)))
        buffer_need.append(need)
        work.append(counts)
        thr_blocks.append(blocks)
        sparse_layers.append(sparse_here)
    # the run functions: one per level (GroupNorm's numbers are the level's own)
    funcs = []
    scratch = 0
    for li, g in enumerate(graphs):
        body = []
        for i, op in enumerate(g.ops):
            src, dst = offsets[op.inp], offsets[op.out]
            if isinstance(op, Conv):
                oh, ow, oc = t[op.out].shape
                kh, kw = op.kernel
                col = (kh * t[op.inp].shape[2] + 3) // 4 * 4
                scratch = max(scratch, (0 if op.depthwise else ((ow - 1) * op.stride + kw) * col * 2) + ow * oc * 4)
                body.append(f"  if (conv({slots[i]}, arena + {src}, arena + {dst})) return -1;")
            elif isinstance(op, Dense):
                n_out, n_in = op.weight.shape
                s_i = slots[i]
                body.append(f"  q8_dense(arena + {src}, {n_in}, {n_out}, cur[{s_i}].w, cur[{s_i}].b, cur[{s_i}].rq, "
                            f"arena + {dst});")
            elif isinstance(op, Pool):
                h, w, c = t[op.inp].shape
                body.append(f"  q8_avgpool(arena + {src}, {h * w}, {c}, &cur[{slots[i]}].r1, arena + {dst});")
            elif isinstance(op, GroupNorm):
                body.append(_groupnorm_call(op, t[op.inp].shape, store, src, dst))
            else:
                raise LcsError(f"int8 firmware: no kernel for {type(op).__name__} ({op.out})")
        funcs.append((li, offsets[g.input], in_len, offsets[g.output], out_len, body))
    store.data[:len(head)] = head
    bank = bytes(store.data)
    scratch = (scratch + 3) // 4 * 4
    chw = input_chw or (1, 1, in_len)
    if int(np.prod(chw)) != in_len:
        raise LcsError(f"input shape {chw} does not hold the graphs' {in_len} input values")
    buffer_bytes = max(buffer_need, default=0)
    n_slots = len(descs)
    model_code = [
        "/* per weighted layer and pool: geometry, where the densest level's numbers sit in the store, the codes per",
        "   output channel (win) and the kind (0 conv, 1 dense, 2 pool) */",
        "typedef struct { q8_conv_t g; uint32_t w, b, rq, rq_add; uint16_t win, kind; } desc_t;",
        f"static const desc_t desc[{max(n_slots, 1)}] = {{", *(descs or ["  {{0}}"]), "};",
        "/* a level's slot record in the store (lcs/int8/firmware_c.py derived_firmware_model) */",
        "typedef struct { int8_t kb, kr, ka; uint8_t mode; uint32_t thr; } rec_t;",
        f"static const uint32_t level_tab[{n_levels}] = {{{', '.join(f'{o}u' for o in level_tab)}}};",
        "/* the active level's numbers: in flash, or materialized in buf (r1: the residual's factor, or the pool's) */",
        "static struct { const int8_t *w; const int32_t *b; const q8_rq_t *rq; const uint32_t *nz, *nzs; q8_rq_t r1; }"
        f" cur[{max(n_slots, 1)}];",
        f"static uint32_t buf[{max(buffer_bytes // 4, 1)}];",
        AT_MACRO, "",
        "static int conv(int i, const int8_t *in, int8_t *out) {",
        "  q8_conv_t p = desc[i].g;",
        "  p.w = cur[i].w; p.bias = cur[i].b; p.rq = cur[i].rq; p.rq_add = cur[i].r1;",
        "  p.nz = cur[i].nz; p.nz_start = cur[i].nzs;",
        SCRATCH_CHECK,
        "  q8_conv(&p, in, out, scratch);",
        "  return 0;",
        "}", "",
        "/* The level's numbers from the stored codes: masked codes or sparse entries, shifted biases and tables. */",
        "static int materialize(int l) {",
        "  const rec_t *rec = (const rec_t *)(const void *)(bank + level_tab[l]);",
        "  uint8_t *p = (uint8_t *)buf, *const end = (uint8_t *)buf + sizeof buf;",
        f"  for (int i = 0; i < {n_slots}; i++) {{",
        "    const desc_t *d = &desc[i];",
        "    const rec_t r = rec[i];",
        "    const int32_t oc = d->g.out_c, win = d->win;",
        "    if (d->kind == 2) { cur[i].r1 = q8_rq_shifted(*AT(d->rq, const q8_rq_t *), r.kr); continue; }",
        "    cur[i].w = AT(d->w, const int8_t *);",
        "    cur[i].nz = cur[i].nzs = 0;",
        "    if (r.mode == 3) {  /* the level's grid: codes, biases, tables in buf, then the exponents' shifts */",
        "      const uint8_t *g = bank + r.thr;  /* P, -, uint16 D, uint32 offset of K per channel */",
        "      uint32_t wn = ((uint32_t)(oc * win) + 3u) & ~3u;",
        "      const uint32_t dd = *(const uint16_t *)(const void *)(g + 2);",
        "      if (!dd || 255u * g[0] > dd) { lcs_last_error = \"the level's grid is invalid\"; return -1; }",
        "      if ((uint32_t)(end - p) < wn + 12u * (uint32_t)oc) goto full;",
        "      int32_t *b = (int32_t *)(void *)(p + wn);",
        "      q8_rq_t *t = (q8_rq_t *)(void *)(p + wn + 4 * oc);",
        "      q8_regrid(cur[i].w, oc, win, d->g.depthwise ? oc : 0,",
        "                bank + *(const uint32_t *)(const void *)(g + 4), g[0], dd, AT(d->b, const int32_t *),",
        "                AT(d->rq, const q8_rq_t *), (int8_t *)p, b, t);",
        "      if (r.kb) q8_bias_shifted(b, oc, r.kb, b);",
        "      if (r.kr) for (int32_t o = 0; o < oc; o++) t[o] = q8_rq_shifted(t[o], r.kr);",
        "      cur[i].w = (const int8_t *)p; cur[i].b = b; cur[i].rq = t;",
        "      p += wn + 12u * (uint32_t)oc;",
        "      if (d->rq_add != 0xFFFFFFFFu) cur[i].r1 = q8_rq_shifted(*AT(d->rq_add, const q8_rq_t *), r.ka);",
        "      continue;",
        "    }",
        "    if (r.mode == 1) {",
        "      uint32_t need = ((uint32_t)(oc * win) + 3u) & ~3u;",
        "      if ((uint32_t)(end - p) < need) goto full;",
        "      q8_mask_codes(cur[i].w, oc, win, d->g.depthwise ? oc : 0, bank + r.thr, (int8_t *)p);",
        "      cur[i].w = (const int8_t *)p;",
        "      p += need;",
        "    } else if (r.mode == 2) {",
        "      uint32_t *starts = (uint32_t *)(void *)p, *nz = starts + oc + 1;",
        "      if ((uint32_t)(end - p) < 4u * (uint32_t)(oc + 1)) goto full;",
        "      int32_t n = q8_sparsify(cur[i].w, oc, win, bank + r.thr, starts, nz,",
        "                              (uint32_t)(end - (uint8_t *)nz) / 4u);",
        "      if (n < 0) goto full;",
        "      cur[i].w = 0; cur[i].nz = nz; cur[i].nzs = starts;",
        "      p = (uint8_t *)(nz + n);",
        "    }",
        "    cur[i].b = AT(d->b, const int32_t *);",
        "    if (r.kb) {",
        "      if ((uint32_t)(end - p) < 4u * (uint32_t)oc) goto full;",
        "      q8_bias_shifted(cur[i].b, oc, r.kb, (int32_t *)(void *)p);",
        "      cur[i].b = (const int32_t *)(const void *)p;",
        "      p += 4 * oc;",
        "    }",
        "    cur[i].rq = AT(d->rq, const q8_rq_t *);",
        "    if (r.kr) {",
        "      q8_rq_t *t = (q8_rq_t *)(void *)p;",
        "      if ((uint32_t)(end - p) < sizeof *t * (uint32_t)oc) goto full;",
        "      for (int32_t o = 0; o < oc; o++) t[o] = q8_rq_shifted(cur[i].rq[o], r.kr);",
        "      cur[i].rq = t;",
        "      p += sizeof *t * (uint32_t)oc;",
        "    }",
        "    if (d->rq_add != 0xFFFFFFFFu) cur[i].r1 = q8_rq_shifted(*AT(d->rq_add, const q8_rq_t *), r.ka);",
        "  }",
        "  return 0;",
        "full:",
        "  lcs_last_error = \"the level does not fit its RAM buffer (a weight set other than the built one?)\";",
        "  return -1;",
        "}"]
    switch_code = [
        "/* only a weight set whose CRC main.c checked reaches here (the built one at boot, an upload after its",
        "   commit) */",
        "int lcs_set_level(int index, const uint8_t *b) {",
        "  if (index < 0 || index >= lcs_num_levels) return -1;",
        "  bank = b;",
        "  lcs_active_level = -1;  /* no half-built level runs */",
        "  if (materialize(index)) return -1;",
        "  lcs_active_level = index;",
        "  return 0;",
        "}", ""]
    src = _source(funcs, descs, levels, family, default_level, bank, arena, scratch, dsp, upload_bank,
                  in_len, out_len, chw, model_code, switch_code)
    stage = (in_len + 3) // 4 * 4
    return FirmwareModel(src, bank, arena, scratch, max(4 * in_len, stage + arena), model_weights(dense) * n_levels,
                         store.weights, sparse_layers, "derived", model_weights(dense), buffer_bytes, work, thr_blocks)


def _source(funcs, descs, levels, family, default_level, bank, arena, scratch, dsp, upload_bank, n_in, n_out,
            chw, model_code=None, switch_code=None) -> str:
    model_code = _ready_code(descs) if model_code is None else model_code
    switch_code = _READY_SWITCH if switch_code is None else switch_code
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
           *[f"  {{{c_float(lv.alpha)}, {float(lv.keep)!r}, {c_float(lv.width)}, {lv.bits or 0}}}," for lv in levels],
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
           *model_code, ""]
    for li, in_off, _n_in, out_off, _n_out, lines in funcs:
        out += [f"static int run_{li}(void) {{", *lines, "  return 0;", "}", ""]
    out += [f"static int (*const run[])(void) = {{{', '.join(f'run_{f[0]}' for f in funcs)}}};",
            f"static const uint32_t in_off[] = {{{', '.join(str(f[1]) for f in funcs)}}};",
            f"static const uint32_t out_off[] = {{{', '.join(str(f[3]) for f in funcs)}}};", "",
            "void lcs_model_bind(const uint8_t *b) { bank = b; }", "",
            *switch_code,
            "int lcs_model_run_switch(void) { return 0; }", "",
            "int lcs_model_infer(const float *input, float *output) {",
            "  int l = lcs_active_level;",
            "  if (l < 0) { lcs_last_error = \"no level is active\"; return -1; }",
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
