"""int8 kernels on QEMU Cortex-M boards: the MLPerf Tiny models (random weights, BN folded, per-channel int8) and
lcs's small CNN (integer GroupNorm), instructions per layer, checked bit-for-bit against the numpy reference
(lcs.int8.graph) on every board.

    PYTHONPATH=. python benchmarks/mcu_int8.py [--boards mps2-an386,mps2-an385,mps2-an500]
                                              [--models resnet8,ds-cnn,mobilenet-v1-0.25,small-cnn] [--out FILE]

Counts are SysTick ticks under qemu-system-arm -icount shift=3 times 5 (one tick = 5 instructions): instructions,
not cycles. CMSIS-NN figures: the same network, CMSIS-NN int8 kernels at -O2, measured the same way
(/work/shared/notes/mlperf-tiny.md)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcs.atomic import write_text  # noqa: E402
from lcs.config import ModelConfig  # noqa: E402
from lcs.int8 import emit_c  # noqa: E402
from lcs.int8 import firmware as fw  # noqa: E402
from lcs.int8.from_torch import from_torch  # noqa: E402
from lcs.int8.graph import Conv, quantize, run_int  # noqa: E402
from lcs.models import build_model  # noqa: E402

CMSIS_NN = {"resnet8": {"mps2-an386": 29_856_185, "mps2-an500": 30_018_280, "mps2-an385": 41_844_800}}
MODELS = {"resnet8": ((3, 32, 32), 10), "ds-cnn": ((1, 49, 10), 12), "mobilenet-v1-0.25": ((3, 96, 96), 2),
          "small-cnn": ((1, 28, 28), 10)}
NORM = {"small-cnn": "group"}  # lcs's own small CNN with its default GroupNorm (the integer GroupNorm kernel)
BAR_M4 = 26_900_000  # 0.9 x CMSIS-NN on the M4 (issue 15)


def model_graph(name: str, seed: int = 0):
    """The model with random weights and a random but plausible folded BN (or GroupNorm affine); quantized on 16
    random inputs."""
    (c, h, w), classes = MODELS[name]
    torch.manual_seed(seed)
    net = build_model(ModelConfig(name=name, in_channels=c, image_size=h, num_classes=classes,
                                  norm=NORM.get(name, "batch")))
    for m in net.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = np.random.default_rng(seed).standard_normal((16, h, w, c))
    graph = quantize(from_torch(net.eval(), (c, h, w)), x)
    xq = graph.quantize_input(x[:1])
    return graph, xq, run_int(graph, xq, keep=True)


def prune(graph, sparsity: float):
    """An unstructured level as LCS builds it: per layer, the smallest-magnitude fraction of the int8 weights
    zeroed; stem (the first conv), depthwise convs and the classifier stay dense."""
    ops = []
    for i, op in enumerate(graph.ops):
        if isinstance(op, Conv) and not op.depthwise and i > 0:
            w = op.weight.copy()
            order = np.argsort(np.abs(w.astype(np.int64)).ravel(), kind="stable")
            w.reshape(-1)[order[:int(sparsity * w.size)]] = 0
            op = replace(op, weight=w)
        ops.append(op)
    return replace(graph, ops=ops)


def run_checked(graph, xq, src_dir: Path, board: str, tag: str, sparse_ops: set[int] | None):
    ref = run_int(graph, xq, keep=True)
    src = src_dir / f"{tag}.c"
    src.write_text(emit_c.emit(graph, xq[0], sparse_ops=sparse_ops))
    run = fw.run_qemu(fw.build(src, src_dir / f"{tag}-{board}.elf", board), board)
    exact = all(h == fw.fnv1a(ref[op.out].astype(np.int8).tobytes()) for op, (_, _, h) in zip(graph.ops, run.layers))
    return run, exact and run.output == ref[graph.output].astype(np.int8).tobytes()


def sparse_sweep(boards: list[str], sparsities: list[float], tmp: Path) -> dict:
    """ResNet-8 unstructured levels: dense kernels against the sparse kernel (every pruned conv), per board."""
    graph, xq, _ = model_graph("resnet8")
    out = {}
    for board in boards:
        rows = []
        for s in sparsities:
            level = prune(graph, s)
            dense, ok_d = run_checked(level, xq, tmp, board, "dense", set())
            pruned = {i for i, op in enumerate(level.ops) if isinstance(op, Conv) and not op.depthwise and i > 0}
            sparse, ok_s = run_checked(level, xq, tmp, board, "sparse", pruned)  # the stem stays dense
            n = fw.INSTRUCTIONS_PER_TICK
            rows.append({"sparsity": s, "dense_instructions": dense.total_ticks * n,
                         "sparse_instructions": sparse.total_ticks * n, "bit_exact": ok_d and ok_s,
                         "sparse_layers": [{"name": a, "instructions": t * n} for a, t, _ in sparse.layers]})
            print(f"resnet8 {board:11s} sparsity {s:.2f}: dense {rows[-1]['dense_instructions']:>11,d}  sparse kernel "
                  f"{rows[-1]['sparse_instructions']:>11,d}  bit-exact {rows[-1]['bit_exact']}")
        cross = 0.0 if rows[0]["sparse_instructions"] < rows[0]["dense_instructions"] else None
        for a, b in zip(rows, rows[1:]):
            da = a["sparse_instructions"] - a["dense_instructions"]
            db = b["sparse_instructions"] - b["dense_instructions"]
            if cross is None and da >= 0 > db:  # linear interpolation of the first sign change
                cross = round(a["sparsity"] + (b["sparsity"] - a["sparsity"]) * da / (da - db), 3)
        dense0 = rows[0]["dense_instructions"]
        at90 = next((r for r in rows if abs(r["sparsity"] - 0.9) < 1e-9), None)
        out[board] = {"levels": rows, "crossover_sparsity": cross,
                      "sparse90_over_dense": round(at90["sparse_instructions"] / dense0, 3) if at90 else None}
        print(f"resnet8 {board}: sparse kernel cheaper above {cross} sparsity; 90 % level / dense = "
              f"{out[board]['sparse90_over_dense']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="mps2-an386,mps2-an385,mps2-an500")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mcu_int8.json"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sparsities", default="0,0.25,0.5,0.6,0.7,0.8,0.9,0.95",
                    help="ResNet-8 unstructured levels for the dense/sparse kernel sweep (empty: none)")
    args = ap.parse_args()
    result = {"units": "instructions (SysTick ticks x 5 under qemu -icount shift=3)", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            graph, xq, ref = model_graph(name)
            store, n_weights = emit_c.store_bytes(graph)
            entry = result["models"][name] = {"macs": graph.macs(), "params": graph.params(), "store_bytes": store,
                                              "store_bytes_per_weight": round(store / n_weights, 4), "boards": {}}
            print(f"{name}: int8 store {store:,d} B for {n_weights:,d} weights ({store / n_weights:.3f} B each, "
                  "per-channel biases and requantization tables included)")
            src = Path(tmp) / f"{name}.c"
            src.write_text(emit_c.emit(graph, xq[0]))
            for board in args.boards.split(","):
                t0 = time.time()
                run = fw.run_qemu(fw.build(src, Path(tmp) / f"{name}-{board}.elf", board), board)
                exact = [h == fw.fnv1a(ref[op.out].astype(np.int8).tobytes())
                         for op, (_, _, h) in zip(graph.ops, run.layers)]
                exact_out = run.output == ref[graph.output].astype(np.int8).tobytes()
                total = run.total_ticks * fw.INSTRUCTIONS_PER_TICK
                cmsis = CMSIS_NN.get(name, {}).get(board)
                row = {"cpu": fw.BOARDS[board][1], "instructions": total,
                       "instructions_per_mac": round(total / graph.macs(), 3),
                       "cmsis_nn_instructions": cmsis, "ratio_to_cmsis_nn": round(total / cmsis, 3) if cmsis else None,
                       "bit_exact": all(exact) and exact_out, "flash_bytes": run.text_bytes,
                       "arena_bytes": run.arena_bytes, "scratch_bytes": run.scratch_bytes,
                       "layers": [{"name": n, "instructions": t * fw.INSTRUCTIONS_PER_TICK} for n, t, _ in run.layers],
                       "wall_s": round(time.time() - t0, 2)}
                entry["boards"][board] = row
                print(f"{name:18s} {board:11s} {total:>12,d} instructions ({row['instructions_per_mac']} / MAC)"
                      + (f", CMSIS-NN {cmsis:,d} (ratio {row['ratio_to_cmsis_nn']})" if cmsis else "")
                      + f", bit-exact {row['bit_exact']}")
        if args.sparsities:
            sparsities = [float(v) for v in args.sparsities.split(",")]
            result["resnet8_sparse"] = sparse_sweep(args.boards.split(","), sparsities, Path(tmp))
    m4 = result["models"].get("resnet8", {}).get("boards", {}).get("mps2-an386")
    if m4:
        result["bar_resnet8_m4"] = {"limit": BAR_M4, "instructions": m4["instructions"],
                                    "met": m4["instructions"] <= BAR_M4}
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
