"""A quantized `Graph` as C for firmware_host/src/kernels_int8.c: weight arrays, a static activation arena
(offsets planned by lifetime) and one function per layer, plus the layer table a harness walks.

    q8_n_layers, q8_layer_names[], q8_run_layer(i), q8_layer_out(i), q8_layer_size(i),
    q8_input(), q8_input_size, q8_output(), q8_output_size, q8_arena_bytes, q8_scratch_bytes

Dense conv weights are stored [o][kw][kh * in_c], each column padded with zeros to a multiple of 4 values (an RGB
or MFCC stem): the kernel widens the same padding as zero activations, so the result is unchanged."""

from __future__ import annotations

import numpy as np

from lcs.int8.graph import Conv, Dense, Graph, GroupNorm, Pool, Requant


def c_array(ctype: str, name: str, values, per_line: int = 24, align: int = 4) -> str:
    """A static const C array of integers (one element, 0, when `values` is empty)."""
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    rows = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)] or ["0"]
    head = f"static const {ctype} {name}[{max(len(flat), 1)}] __attribute__((aligned({align})))"
    return head + " = {\n  " + ",\n  ".join(rows) + "\n};\n"


def c_rq(r: Requant | None) -> str:
    """A q8_rq_t initializer; zeros for none (a layer without that requantization)."""
    return f"{{{r.m}, {r.l}, {r.n}, {{0, 0}}}}" if r is not None else "{0, 0, 0, {0, 0}}"


def c_float(v: float) -> str:
    """The exact float32 value as a C hex-float literal."""
    return f"{float(np.float32(v)).hex()}f"


def _rq_arr(name: str, rqs: list[Requant]) -> str:
    return f"static const q8_rq_t {name}[{len(rqs)}] = {{\n  " + ",\n  ".join(c_rq(r) for r in rqs) + "\n};\n"


def plan_arena(graph: Graph) -> tuple[dict[str, int], int]:
    """Offsets (4-byte aligned) of every tensor in one arena; a tensor lives from the op writing it to the
    last op reading it (the input from the start, the output to the end)."""
    order = {graph.input: -1}
    last = {graph.input: -1}
    for i, op in enumerate(graph.ops):
        order[op.out] = i
        last.setdefault(op.out, i)
        for name in (op.inp, getattr(op, "add", None)):
            if name is not None:
                last[name] = max(last.get(name, -1), i)
    last[graph.output] = len(graph.ops)
    size = {n: (int(np.prod(graph.tensors[n].shape)) + 3) // 4 * 4 for n in order}
    placed: list[tuple[int, int, int, int]] = []  # offset, end, born, dies
    offsets = {}
    for name in sorted(order, key=lambda n: (-size[n], order[n])):
        born, dies = order[name], last[name]
        busy = sorted((o, e) for o, e, b, d in placed if not (d < born or dies < b))
        off = 0
        for o, e in busy:
            if off + size[name] <= o:
                break
            off = max(off, e)
        placed.append((off, off + size[name], born, dies))
        offsets[name] = off
    return offsets, max((e for _, e, _, _ in placed), default=0)


def conv_window(op: Conv, in_channels: int) -> tuple[int, np.ndarray]:
    """A conv's weights as the kernels read them, and the window's column count: each kernel column holds kh input
    rows of `in_channels` values, padded to whole words."""
    col = (op.kernel[0] * in_channels + 3) // 4 * 4
    return col, _conv_weights(op, col)


def _conv_weights(op: Conv, col: int) -> np.ndarray:
    if op.depthwise:  # [C, KH, KW, 1] -> [KH, KW, C]
        return np.transpose(op.weight[..., 0], (1, 2, 0))
    o, kh, kw, ic = op.weight.shape
    w = np.transpose(op.weight, (0, 2, 1, 3)).reshape(o, kw, kh * ic)  # OHWI -> [o][kw][kh * ic]
    return np.concatenate([w, np.zeros((o, kw, col - kh * ic), w.dtype)], axis=2)


def sparse_entries(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[o][kw][col] int8 weights -> (entries, starts) of the sparse kernel: per output channel its nonzeros as
    (index in the window << 16) | uint16(weight). The kernels read an int8 copy of the window in this plain order
    on every core."""
    flat = window.reshape(window.shape[0], -1).astype(np.int64)
    entries, starts = [], [0]
    for row in flat:
        idx = np.flatnonzero(row)
        entries.append((idx << 16) | (row[idx] & 0xFFFF))
        starts.append(starts[-1] + len(idx))
    if flat.shape[1] >= 1 << 16:
        raise ValueError("window too large for 16-bit sparse offsets")
    return np.concatenate(entries).astype(np.uint32) if entries else np.zeros(0, np.uint32), np.array(starts, np.uint32)


def store_bytes(graph: Graph) -> tuple[int, int]:
    """(bytes of weights, biases and requantization tables as `emit` lays them out densely, weights stored)."""
    total = weights = 0
    for op in graph.ops:
        if isinstance(op, Pool):
            total += 8
            continue
        if isinstance(op, GroupNorm):
            total += op.g.size * 9 + 28
            continue
        weights += op.weight.size
        if isinstance(op, Conv) and not op.depthwise:
            kh, _ = op.kernel
            total += conv_window(op, op.weight.shape[3])[1].size
        else:
            total += op.weight.size
        total += op.bias.size * (4 + 8)  # int32 bias, q8_rq_t
    return total, weights


def emit(graph: Graph, test_input: np.ndarray | None = None, sparse_from: float | None = None,
         sparse_ops: set[int] | None = None) -> str:
    """C source of the network (and, if given, a test input `q8_test_input`, int8 HWC). Dense convs whose
    weights are at least `sparse_from` zeros run the sparse kernel (None: none do), and so do the ops whose
    indices are in `sparse_ops`."""
    offsets, arena = plan_arena(graph)
    t = graph.tensors
    out = ['/* generated by lcs.int8.emit_c: do not edit */', '#include "kernels_int8.h"', "#include <stdint.h>", ""]
    layers, scratch = [], 0
    for i, op in enumerate(graph.ops):
        fn = f"layer{i}"
        src, dst = f"arena + {offsets[op.inp]}", f"arena + {offsets[op.out]}"
        if isinstance(op, Conv):
            ih, iw, ac = t[op.inp].shape
            oh, ow, oc = t[op.out].shape
            kh, kw = op.kernel
            col, window = conv_window(op, ac)
            sparse = not op.depthwise and ((sparse_from is not None and np.count_nonzero(op.weight)
                                            <= (1 - sparse_from) * op.weight.size) or i in (sparse_ops or ()))
            if sparse:  # the dense array is not needed: the kernel reads only the entries
                entries, starts = sparse_entries(window)
                out.append(c_array("uint32_t", f"nz{i}", entries) + c_array("uint32_t", f"nzs{i}", starts))
                out.append(f"#define w{i} ((const int8_t *)0)\n")
            else:
                out.append(c_array("int8_t", f"w{i}", window))
            out.append(c_array("int32_t", f"b{i}", op.bias))
            out.append(_rq_arr(f"rq{i}", op.rq))
            skip = f"arena + {offsets[op.add]}" if op.add else "0"
            rq_add = c_rq(op.rq_add if op.add else None)
            out.append(
                f"static const q8_conv_t p{i} = {{{ih}, {iw}, {ac}, {col}, {oh}, {ow}, {oc}, {kh}, {kw}, {op.stride}, "
                f"{op.pads[0]}, {op.pads[2]}, {int(op.relu)}, {int(op.depthwise)}, w{i}, b{i}, rq{i}, {skip}, "
                f"{rq_add}, "
                + (f"nz{i}, nzs{i}}};\n" if sparse else "0, 0};\n"))
            # q8_conv_scratch
            scratch = max(scratch, (0 if op.depthwise else ((ow - 1) * op.stride + kw) * col * 2) + ow * oc * 4)
            body = f"q8_conv(&p{i}, {src}, {dst}, scratch);"
            kind = ("dwconv" if op.depthwise else "sparse-conv" if sparse else "conv") + f"{kh}x{kw}"
        elif isinstance(op, GroupNorm):
            h, w, c = t[op.inp].shape
            out.append(c_array("int32_t", f"g{i}", op.g) + c_array("int8_t", f"ge{i}", op.ge)
                       + c_array("int32_t", f"b{i}", op.b))
            out.append(f"static const q8_gn_t p{i} = {{{h * w}, {c}, {op.groups}, {int(op.relu)}, {op.lo}, {op.hi}, "
                       f"{op.e}LL, g{i}, ge{i}, b{i}}};\n")
            body = f"q8_groupnorm(&p{i}, {src}, {dst});"
            kind = "groupnorm"
        elif isinstance(op, Pool):
            h, w, c = t[op.inp].shape
            out.append(_rq_arr(f"rq{i}", [op.rq]))
            body = f"q8_avgpool({src}, {h * w}, {c}, rq{i}, {dst});"
            kind = "avgpool"
        else:
            assert isinstance(op, Dense)
            n_out, n_in = op.weight.shape
            out.append(c_array("int8_t", f"w{i}", op.weight))
            out.append(c_array("int32_t", f"b{i}", op.bias))
            out.append(_rq_arr(f"rq{i}", op.rq))
            body = f"q8_dense({src}, {n_in}, {n_out}, w{i}, b{i}, rq{i}, {dst});"
            kind = "dense"
        out.append(f"static void {fn}(void) {{ {body} }}\n")
        layers.append((fn, f"{op.out}:{kind}", offsets[op.out], int(np.prod(t[op.out].shape))))
    scratch = (scratch + 3) // 4 * 4
    head = [f"static int8_t arena[{max(arena, 4)}] __attribute__((aligned(4)));",
            f"static int16_t scratch[{max(scratch // 2, 2)}] __attribute__((aligned(4)));",
            f"const int32_t q8_arena_bytes = {arena}, q8_scratch_bytes = {scratch};",
            f"const int32_t q8_n_layers = {len(layers)};", ""]
    table = ["static void (*const run[])(void) = {" + ", ".join(f for f, *_ in layers) + "};",
             "const char *const q8_layer_names[] = {" + ", ".join(f'"{n}"' for _, n, _, _ in layers) + "};",
             "static const int32_t out_off[] = {" + ", ".join(str(o) for *_, o, _ in layers) + "};",
             "static const int32_t out_size[] = {" + ", ".join(str(s) for *_, s in layers) + "};",
             "void q8_run_layer(int32_t i) { run[i](); }",
             "int8_t *q8_layer_out(int32_t i) { return arena + out_off[i]; }",
             "int32_t q8_layer_size(int32_t i) { return out_size[i]; }",
             f"int8_t *q8_input(void) {{ return arena + {offsets[graph.input]}; }}",
             f"const int32_t q8_input_size = {int(np.prod(t[graph.input].shape))};",
             f"int8_t *q8_output(void) {{ return arena + {offsets[graph.output]}; }}",
             f"const int32_t q8_output_size = {int(np.prod(t[graph.output].shape))};"]
    if test_input is not None:
        table.append(c_array("int8_t", "test_input", np.asarray(test_input, np.int8)).replace("static ", "", 1)
                     .replace("test_input", "q8_test_input"))
    # weights before the arena so every layer function sees them; the arena before the functions
    return "\n".join(out[:4] + head + out[4:] + table) + "\n"
