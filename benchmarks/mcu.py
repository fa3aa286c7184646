"""MCU benchmark: per QEMU board and level, cycles per inference and per level switch, flash and RAM, the switch /
inference ratio (target <= 1.0), and the TVM-generated kernels against a plain C reference of the same layers.

    PYTHONPATH=. python benchmarks/mcu.py [--checkpoint CK] [--boards mps2-an500,...] [--out benchmarks/results/mcu.json]
                                          [--int8-boards mps2-an386,mps2-an385,mps2-an500] [--no-fp32]

The int8 section (issue 15) builds MLPerf Tiny's ResNet-8 (random weights, a random but plausible folded BatchNorm,
LCS+P unstructured; calibrated on 16 random images) as `lcs build --int8` firmware with a 90 %-sparse, a 50 %-sparse
and the dense level, runs every level under QEMU through the wire protocol, checks each answer bit for bit against
the integer reference, and reports instructions per inference and per switch (SysTick ticks x 5 under -icount
shift=3; a switch to a sparse level of the derived store includes building it in RAM) beside CMSIS-NN's figures for
the same network, with flash and RAM against the board budgets and the weight store per weight of the model.
The int8 quantization section (--int8-quant-boards) builds the same ResNet-8 as LCS+P quantization (3-, 5- and 8-bit
levels, store auto: the b-bit levels regridded from the stored 8-bit codes at each switch) and measures it the same
way, and trains the small CNN (width 16, BatchNorm, LCS+P quantization) for 6 epochs on MNIST-5k to compare each
level's host-measured accuracy (integer reference, the test split) derived against ready-stored. --merge updates only
the sections run in an existing --out file.

Without --checkpoint the small CNN (width 16, 28x28, LCS+P, unstructured) is used with its initial weights: cycle
counts do not depend on training. Cycles are SysTick ticks under QEMU -icount shift=3 (8 ns per instruction,
25 MHz SysTick on MPS2, 32 MHz on MPS3): they compare code, not real silicon.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import targets  # noqa: E402
from lcs.checkpoint import Checkpoint, load  # noqa: E402
from lcs.config import ModelConfig, RunConfig, SubspaceConfig  # noqa: E402
from lcs.device import Device  # noqa: E402
from lcs.models import build_model  # noqa: E402
from lcs.subspace.model import SubspaceModel  # noqa: E402
from tvm_build.mcu import firmware as fw  # noqa: E402
from lcs.transport.launch import start  # noqa: E402
from tvm_build.mcu.build import _lowered, build_firmware, compile_firmware  # noqa: E402
from tvm_build.mcu.executor import ctrl_symbol  # noqa: E402

BOARDS = ["mps2-an385", "mps2-an386", "mps2-an500", "mps3-an547"]


def default_checkpoint(family: str) -> Checkpoint:
    torch.manual_seed(0)
    mc, sc = ModelConfig(), SubspaceConfig(family=family, shape="point")
    return Checkpoint(RunConfig(model=mc, subspace=sc), SubspaceModel(build_model(mc), sc).eval())


def reference_config(model, plan) -> str:
    """ref_config.h: geometry and weight offsets of the small CNN for firmware_host/bench/ref_small_cnn.c."""
    offsets = {name: off for name, off, _ in plan.bank_layout}
    feats = model.net.features
    conv = [feats[i][0] for i in range(4)]
    norm = [feats[i][1] for i in range(4)]
    ctrl = sorted({ctrl_symbol(t.param) for t in plan.tensors.values() if t.kind == "ctrl"})
    lines = [
        f"#define REF_IN_C {conv[0].in_channels}",
        f"#define REF_IN_HW {plan.tensors['x'].shape[-1]}",
        f"#define REF_COUT {{{', '.join(str(c.out_channels) for c in conv)}}}",
        f"#define REF_STRIDE {{{', '.join(str(c.stride[0]) for c in conv)}}}",
        f"#define REF_GROUPS {{{', '.join(str(n.groups) for n in norm)}}}",
        f"#define REF_CONV_W {{{', '.join(str(offsets[f'features.{i}.0.w0']) for i in range(4))}}}",
        f"#define REF_NORM_G {{{', '.join(str(offsets[f'features.{i}.1.g0']) for i in range(4))}}}",
        f"#define REF_NORM_B {{{', '.join(str(offsets[f'features.{i}.1.be0']) for i in range(4))}}}",
        f"#define REF_FC_W {offsets['classifier.w0']}",
        f"#define REF_FC_B {offsets['classifier.b0']}",
        f"#define REF_FEATURES {conv[-1].out_channels}",
        f"#define REF_CLASSES {model.net.classifier.out_features}",
        f"#define REF_MAX_ACT {max(t.nbytes // 4 for t in plan.tensors.values() if t.kind == 'arena')}",
        *[f"float {name}[16];" for name in ctrl],
    ]
    return "\n".join(lines) + "\n"


def run_levels(result, board, x) -> list[dict]:
    rows = []
    with start(result.binary, board) as running, Device.open(running.url) as dev:
        dev.hello()
        for i, level in enumerate(result.levels):
            _, switch = dev.set_level(index=i)
            out, infer = dev.infer(x)
            err = float(np.abs(np.array(out) - result.expected[i][0]).max())
            rows.append({"level": level.label(), "alpha": level.alpha, "infer_cycles": infer, "switch_cycles": switch,
                         "switch_per_infer": switch / infer, "max_abs_err_vs_torch": err})
    return rows


def reference_cycles(ckpt, board, build, out_dir: Path, x) -> dict:
    """Link the plain C reference in place of the TVM kernels + executor, same weights, dense level."""
    dn, lowered, plan = _lowered(ckpt.model, torch.zeros(1, 1, 28, 28), build.switching == "in-kernel")
    src = out_dir / "ref_src"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(fw.FIRMWARE_DIR / "bench" / "ref_small_cnn.c", src / "executor.c")
    (src / "kernels.c").write_text("/* the reference needs no TVM kernels */\n")
    shutil.copy(build.binary.parent / "src" / "model_gen.c", src / "model_gen.c")
    (src / "ref_config.h").write_text(reference_config(ckpt.model, plan))
    binary = out_dir / "reference.elf"
    compile_firmware(board, src, binary, max_payload=max(1032, len(x) * 4), workspace=16, tx_bytes=256,
                     defines=() if build.upload_bank else ("LCS_NO_UPLOAD_BANK",), include=(src,))
    dense = len(build.levels) - 1
    ref = type(build)(**{**build.__dict__, "binary": binary})
    with start(binary, board) as running, Device.open(running.url) as dev:
        dev.hello()
        dev.set_level(index=dense)
        out, infer = dev.infer(x)
    sizes = fw.elf_sizes(binary, stack_bytes=int(board.extra["firmware"].get("stack_bytes", 0)))
    return {"reference_infer_cycles": infer, "reference_flash": sizes.flash, "reference_ram": sizes.ram,
            "reference_max_abs_err_vs_torch": float(np.abs(np.array(out) - ref.expected[dense][0]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--boards", default=",".join(BOARDS))
    parser.add_argument("--family", default="unstructured", help="family of the default model (no --checkpoint)")
    parser.add_argument("--levels", default="", help="alphas (default: 0.1,0.5,1.0 or the 3/5/8-bit levels)")
    parser.add_argument("--out", default="benchmarks/results/mcu.json")
    parser.add_argument("--int8-boards", default="mps2-an386,mps2-an385,mps2-an500",
                        help="boards for the int8 ResNet-8 section (empty: skip it)")
    parser.add_argument("--int8-switch-boards", default="mps2-an505,mps3-an547,netduinoplus2,microbit",
                        help="further boards where the int8 section measures switches (the small CNN on 8x8 input)")
    parser.add_argument("--int8-quant-boards", default="mps2-an386",
                        help="boards for ResNet-8 as LCS+P quantization, and the MNIST-5k accuracy (empty: skip it)")
    parser.add_argument("--no-fp32", action="store_true", help="only the int8 section")
    parser.add_argument("--merge", action="store_true", help="keep the sections of --out this run leaves out")
    parser.add_argument("--work", default="build/bench-mcu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load(args.checkpoint) if args.checkpoint else default_checkpoint(args.family)
    cmap = ckpt.model.cmap
    default_levels = [cmap.alpha_for(b) for b in (3, 5, 8)] if cmap.family == "quantization" else [0.1, 0.5, 1.0]
    alphas = [float(a) for a in args.levels.split(",")] if args.levels else default_levels
    report = {"model": ckpt.config.to_dict()["model"], "family": ckpt.model.cmap.family, "boards": []}
    if args.int8_boards:
        report["int8_resnet8"] = int8_section(args.int8_boards.split(","), Path(args.work) / "int8")
    if args.int8_switch_boards:
        report["int8_switch"] = int8_switch(args.int8_switch_boards.split(","), Path(args.work) / "int8-switch")
    if args.int8_quant_boards:
        report["int8_quantization"] = int8_quant_section(args.int8_quant_boards.split(","), Path(args.work) / "int8-q")
    for name in ([] if args.no_fp32 else args.boards.split(",")):
        board = targets.load(name)
        out_dir = Path(args.work) / name
        t0 = time.time()
        build = build_firmware(ckpt, board, alphas, out_dir, samples=1, measure=False, write_artifact=False)
        x = build.inputs[0].reshape(-1).tolist()
        entry = {"board": name, "cpu": board.cpu, "switching": build.switching, "upload_bank": build.upload_bank,
                 "flash_bytes": build.sizes.flash, "ram_bytes": build.sizes.ram,
                 "flash_budget": board.flash_bytes, "ram_budget": board.ram_bytes,
                 "arena_bytes": build.arena_bytes, "state_bytes": build.state_bytes,
                 "levels": run_levels(build, board, x)}
        dense = build.levels[-1]
        if ckpt.config.model.name == "small-cnn" and dense.bits is None and dense.keep == 1.0 and dense.width == 1.0:
            entry.update(reference_cycles(ckpt, board, build, out_dir, x))
            entry["generated_per_reference"] = entry["levels"][-1]["infer_cycles"] / entry["reference_infer_cycles"]
        entry["seconds"] = round(time.time() - t0, 1)
        report["boards"].append(entry)
        print_entry(entry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        report = {**old, **{k: v for k, v in report.items() if k in ("int8_resnet8", "int8_switch", "int8_quantization")
                            or (k == "boards" and v)}}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


INT8_LEVELS = [0.1, 0.5, 1.0]
STORE_BAR = 1.1  # flash bytes per weight of an LCS+P int8 model (issue 15)


def resnet8_checkpoint(family: str = "unstructured") -> Checkpoint:
    """ResNet-8 as an LCS+P subspace (unstructured unless said) with BatchNorm (folded by the int8 path), random
    weights and a random but plausible norm (benchmarks/mcu_int8.py's model): instruction counts do not depend on
    training."""
    torch.manual_seed(0)
    mc = ModelConfig(name="resnet8", in_channels=3, image_size=32, num_classes=10, norm="batch")
    sc = SubspaceConfig(family=family, shape="point")
    model = SubspaceModel(build_model(mc), sc).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return Checkpoint(RunConfig(model=mc, subspace=sc), model)


def run_int8_levels(build, board) -> list[dict]:
    """Boot an int8 firmware build under QEMU and, level by level through the wire protocol, switch to it and run its
    reference input: the switch's and the inference's SysTick ticks, and whether the answer is the integer
    reference's bit for bit."""
    rows = []
    with start(build.binary, board) as running, Device.open(running.url) as dev:
        dev.hello()
        for i, level in enumerate(build.levels):
            _, switch = dev.set_level(index=i)
            got, infer = dev.infer(build.inputs[0].reshape(-1).tolist())
            rows.append({"level": level.label(), "alpha": level.alpha, "infer_ticks": infer, "switch_ticks": switch,
                         "switch_per_infer": round(switch / infer, 6),
                         "bit_exact": bool(np.array_equal(np.float32(got), build.expected[i][0]))})
    return rows


def int8_section(boards: list[str], work: Path) -> dict:
    import warnings

    from benchmarks.mcu_int8 import BAR_M4, CMSIS_NN
    from tvm_build.mcu.build_int8 import build_int8_firmware

    with warnings.catch_warnings():  # BatchNorm's shared statistics warn once per model
        warnings.simplefilter("ignore")
        ckpt = resnet8_checkpoint()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calibration = (x, {"source": "random normal images (seed 0)", "split": None, "samples": 16})
    out = {"model": "resnet8", "levels": INT8_LEVELS, "units": "instructions (SysTick ticks x 5, -icount shift=3)",
           "cmsis_nn_instructions": CMSIS_NN["resnet8"], "boards": {}}
    for name in boards:
        board = targets.load(name)
        t0 = time.time()
        build = build_int8_firmware(ckpt, board, INT8_LEVELS, work / name, samples=1, measure=False,
                                    write_artifact=False, calibration=calibration)
        rows = [{"level": r["level"], "alpha": r["alpha"], "instructions": r["infer_ticks"] * 5,
                 "switch_instructions": r["switch_ticks"] * 5, "switch_per_infer": r["switch_per_infer"],
                 "bit_exact": r["bit_exact"], "sparse_layers": len(build.int8["sparse_layers"][i])}
                for i, r in enumerate(run_int8_levels(build, board))]
        dense = rows[-1]["instructions"]
        cmsis = CMSIS_NN["resnet8"].get(name)
        entry = {"cpu": board.cpu, "flash_bytes": build.sizes.flash, "ram_bytes": build.sizes.ram,
                 "flash_budget": board.flash_bytes, "ram_budget": board.ram_bytes,
                 "fits": (board.flash_bytes is None or build.sizes.flash <= board.flash_bytes)
                 and (board.ram_bytes is None or build.sizes.ram <= board.ram_bytes),
                 "upload_bank": build.upload_bank, "store": build.int8["store"],
                 "store_bytes": build.int8["store_bytes"], "model_weights": build.int8["model_weights"],
                 "bytes_per_model_weight": build.int8["bytes_per_model_weight"],
                 "weights_all_levels": build.int8["weights_all_levels"],
                 "stored_entries": build.int8["stored_entries"],
                 "bytes_per_stored_entry": build.int8["bytes_per_stored_entry"],
                 "sparse_from": build.int8["sparse_from"], "levels": rows, "dense_instructions": dense,
                 "cmsis_nn_instructions": cmsis, "dense_over_cmsis_nn": round(dense / cmsis, 3) if cmsis else None,
                 "sparse90_over_dense": round(rows[0]["instructions"] / dense, 3),
                 "max_switch_per_infer": max(r["switch_per_infer"] for r in rows),
                 "seconds": round(time.time() - t0, 1)}
        if name == "mps2-an386":
            entry["bar_m4"] = {"limit": BAR_M4, "met": dense <= BAR_M4}
        # issue 15: the LCS+P store <= 1.1 B per weight of the model (codes, scales, biases, tables, per-level data)
        entry["bar_store"] = {"limit": STORE_BAR, "met": entry["bytes_per_model_weight"] <= STORE_BAR}
        out["boards"][name] = entry
        if name == "mps2-an386":
            out["int8_over_fp32_m4"] = int8_over_fp32(board, work / "small-cnn")
            fp32 = build_firmware(ckpt, board, [1.0], work / name / "fp32", samples=1, write_artifact=False)
            b = fp32.cycles[0]["infer_cycles"] * 5
            out["int8_over_fp32_m4"]["resnet8"] = {
                "int8_instructions": dense, "fp32_instructions": b, "ratio": round(dense / b, 3),
                "fp32_switching": fp32.switching, "fp32_ram_bytes": fp32.sizes.ram}
            print(f"ResNet-8 dense on {name}: int8 {dense:,} / fp32 ({fp32.switching} build) {b:,} instructions = "
                  f"{dense / b:.3f}")
        print(f"\nint8 ResNet-8 on {name} ({board.cpu}): flash {entry['flash_bytes']:,} / {board.flash_bytes or 0:,} B, "
              f"RAM {entry['ram_bytes']:,} / {board.ram_bytes or 0:,} B, {entry['store']['mode']} store "
              f"{entry['store_bytes']:,} B ({entry['bytes_per_model_weight']} B per weight of the model's "
              f"{entry['model_weights']:,})" + (f"; {entry['store']['reason']}" if "reason" in entry["store"] else ""))
        for r in rows:
            print(f"  {r['level']:>14} {r['instructions']:>12,} instructions, switch {r['switch_instructions']:,} "
                  f"({r['switch_per_infer']:.2e} of an inference), bit-exact {r['bit_exact']}")
        if cmsis:
            print(f"  dense / CMSIS-NN ({cmsis:,}) = {entry['dense_over_cmsis_nn']}; 90 % sparse / dense = "
                  f"{entry['sparse90_over_dense']}")
    return out


def int8_quant_section(boards: list[str], work: Path) -> dict:
    """ResNet-8 as LCS+P quantization under QEMU (store auto), and the small CNN's accuracy on MNIST-5k per level,
    derived store against ready."""
    import warnings

    from tvm_build.mcu.build_int8 import build_int8_firmware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = resnet8_checkpoint("quantization")
    alphas = [ckpt.model.cmap.alpha_for(b) for b in (3, 5, 8)]
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calibration = (x, {"source": "random normal images (seed 0)", "split": None, "samples": 16})
    out = {"model": "resnet8, LCS+P quantization", "levels": alphas, "boards": {},
           "accuracy_mnist5k": quant_accuracy(work / "mnist5k")}
    for name in boards:
        board = targets.load(name)
        build = build_int8_firmware(ckpt, board, alphas, work / name, samples=1, measure=False, write_artifact=False,
                                    calibration=calibration)
        rows = [{"level": r["level"], "instructions": r["infer_ticks"] * 5,
                 "switch_instructions": r["switch_ticks"] * 5, "switch_per_infer": r["switch_per_infer"], "bit_exact": r["bit_exact"]}
                for r in run_int8_levels(build, board)]
        entry = {"cpu": board.cpu, "flash_bytes": build.sizes.flash, "ram_bytes": build.sizes.ram,
                 "store": build.int8["store"], "store_bytes": build.int8["store_bytes"],
                 "model_weights": build.int8["model_weights"],
                 "bytes_per_model_weight": build.int8["bytes_per_model_weight"], "levels": rows,
                 "max_switch_per_infer": max(r["switch_per_infer"] for r in rows)}
        entry["bar_store"] = {"limit": STORE_BAR, "met": entry["bytes_per_model_weight"] <= STORE_BAR}
        out["boards"][name] = entry
        print(f"\nint8 ResNet-8 LCS+P quantization on {name}: {entry['store']['mode']} store "
              f"{entry['store_bytes']:,} B "
              f"({entry['bytes_per_model_weight']} B per weight), flash {entry['flash_bytes']:,} B, RAM "
              f"{entry['ram_bytes']:,} B")
        for r in rows:
            print(f"  {r['level']:>8} {r['instructions']:>12,} instructions, switch {r['switch_instructions']:,} "
                  f"({r['switch_per_infer']:.3f} of an inference), bit-exact {r['bit_exact']}")
    return out


def quant_accuracy(work: Path) -> dict:
    """The small CNN (width 16, BatchNorm, LCS+P quantization) trained 6 epochs on MNIST-5k: per level the integer
    reference's accuracy on the test split, each level's own (ready) graph against the one derived from the 8-bit
    codes."""
    import warnings

    from lcs import commands
    from lcs.int8.derived import derive_levels, quant_grids
    from lcs.int8.level import int8_level
    from tvm_build.mcu.build_int8 import ACCURACY_SAMPLES, CALIBRATION_SAMPLES, _accuracy, calibration_data

    work.mkdir(parents=True, exist_ok=True)
    config, data = commands.train_config(data_source="mnist5k", family="quantization", shape="point", width=16,
                                         epochs=6, norm="batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        commands.train(config, data, work / "q.safetensors", threads=1, progress=False)
        ckpt = load(work / "q.safetensors")
    model, cmap = ckpt.model.eval(), ckpt.model.cmap
    alphas = list(cmap.eval_alphas)
    images, _, data = calibration_data(ckpt.config, CALIBRATION_SAMPLES)
    graphs = [int8_level(model, a, images) for a in alphas]
    dense = int(np.argmax(alphas))
    derived, _ = derive_levels(graphs, dense, quant_grids(model, alphas, graphs, dense, images[:1]))
    rows = [{"bits": cmap.level(a).bits, "ready": _accuracy(g, data, ACCURACY_SAMPLES),
             "derived": _accuracy(d, data, ACCURACY_SAMPLES)} for a, g, d in zip(alphas, graphs, derived)]
    for r in rows:
        print(f"small CNN MNIST-5k {r['bits']} bit: ready {r['ready']:.3f}, derived {r['derived']:.3f}")
    return {"model": "small-cnn width 16, BatchNorm, LCS+P quantization, 6 epochs on mnist5k (seed 0)",
            "test_samples": min(ACCURACY_SAMPLES, len(data.test)), "levels": rows,
            "max_drop_points": round(100 * max(r["ready"] - r["derived"] for r in rows), 1)}


def int8_switch(boards: list[str], work: Path) -> dict:
    """Switch / inference on boards ResNet-8 does not fit or the section above leaves out: the small CNN (8x8 input,
    width 8, BatchNorm, LCS+P unstructured, levels 90 % / 50 % / dense), every answer checked bit for bit."""
    import warnings

    from tvm_build.mcu.build_int8 import build_int8_firmware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        mc = ModelConfig(width=8, image_size=8, norm="batch")
        sc = SubspaceConfig(family="unstructured", shape="point")
        ckpt = Checkpoint(RunConfig(model=mc, subspace=sc), SubspaceModel(build_model(mc), sc).eval())
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {"model": "small-cnn 8x8 width 8, BatchNorm", "levels": INT8_LEVELS, "boards": {}}
    for name in boards:
        board = targets.load(name)
        build = build_int8_firmware(ckpt, board, INT8_LEVELS, work / name, samples=1, measure=False,
                                    write_artifact=False,
                                    calibration=(x, {"source": "uniform random images (seed 0)", "samples": 64}))
        rows = [{k: r[k] for k in ("level", "infer_ticks", "switch_ticks", "switch_per_infer", "bit_exact")}
                for r in run_int8_levels(build, board)]
        out["boards"][name] = {"cpu": board.cpu, "flash_bytes": build.sizes.flash, "ram_bytes": build.sizes.ram,
                               "store": build.int8["store"], "levels": rows,
                               "max_switch_per_infer": max(r["switch_per_infer"] for r in rows)}
        print(f"int8 small CNN on {name} ({board.cpu}): switch / inference <= "
              f"{out['boards'][name]['max_switch_per_infer']:.2e}, bit-exact {all(r['bit_exact'] for r in rows)}, "
              f"flash {build.sizes.flash:,} B, RAM {build.sizes.ram:,} B")
    return out


def int8_over_fp32(board, work: Path) -> dict:
    """The int8 build's dense level against the fp32 (TVM) build's, same checkpoint: the small CNN (28x28, width 16,
    BatchNorm, LCS+P)."""
    import warnings

    from tvm_build.mcu.build_int8 import build_int8_firmware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        mc, sc = ModelConfig(norm="batch"), SubspaceConfig(family="unstructured", shape="point")
        ckpt = Checkpoint(RunConfig(model=mc, subspace=sc), SubspaceModel(build_model(mc), sc).eval())
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fp32 = build_firmware(ckpt, board, [1.0], work / "fp32", samples=1, write_artifact=False)
    int8 = build_int8_firmware(ckpt, board, [1.0], work / "int8", samples=1, write_artifact=False,
                               calibration=(x, {"source": "uniform random images (seed 0)", "samples": 64}))
    a, b = int8.cycles[0]["infer_cycles"] * 5, fp32.cycles[0]["infer_cycles"] * 5
    print(f"small CNN dense on {board.name}: int8 {a:,} / fp32 {b:,} instructions = {a / b:.3f}")
    return {"model": "small-cnn 28x28 width 16, BatchNorm", "board": board.name, "int8_instructions": a,
            "fp32_instructions": b, "ratio": round(a / b, 3)}


def print_entry(e: dict) -> None:
    print(f"\n{e['board']} ({e['cpu']}): {e['switching']} switching, upload bank {e['upload_bank']}, "
          f"flash {e['flash_bytes']:,} / {e['flash_budget'] or 0:,} B, RAM {e['ram_bytes']:,} / {e['ram_budget'] or 0:,} B")
    print(f"  {'level':>14} {'infer cycles':>13} {'switch cycles':>14} {'switch/infer':>13} {'err vs torch':>13}")
    for r in e["levels"]:
        print(f"  {r['level']:>14} {r['infer_cycles']:>13,} {r['switch_cycles']:>14,} {r['switch_per_infer']:>13.4f} "
              f"{r['max_abs_err_vs_torch']:>13.2e}")
    if "reference_infer_cycles" in e:
        print(f"  plain C reference (dense level): {e['reference_infer_cycles']:,} cycles; generated / reference = "
              f"{e['generated_per_reference']:.2f}; reference err vs torch {e['reference_max_abs_err_vs_torch']:.2e}")


if __name__ == "__main__":
    main()
