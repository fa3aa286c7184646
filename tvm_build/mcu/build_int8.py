"""`build_int8_firmware`: checkpoint + board -> firmware whose levels run the int8 kernels
(firmware_host/src/kernels_int8.c), with main.c's wire protocol, self-test and level switching.

Steps: each level's plain network folded and calibrated on the checkpoint's own training data
(lcs.int8.level) -> its accuracy measured with the integer reference -> the levels' C and weight store
(lcs.int8.firmware_c) -> compile + link with the generic firmware (minus the fp32 executor's levels.c and
TVM shim) -> flash/RAM against the board budget -> reference outputs from the integer reference (bit-identical
to the device) -> optionally run it (QEMU / host-sim) for instructions per inference and per switch -> artifact.
No TVM is involved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lcs.errors import ConfigError, LcsError
from lcs.int8.derived import NotDerivable, derive_levels, quant_grids
from lcs.int8.firmware_c import derived_firmware_model, device_forward, firmware_model
from lcs.int8.level import int8_level, nhwc
from tvm_build.mcu import firmware as fw
from tvm_build.mcu.build import FirmwareBuild, _load_board, _load_model, _write_artifact, compile_firmware, \
    measure_cycles

CALIBRATION_SAMPLES = 256
ACCURACY_SAMPLES = 2000
# the sparse kernel runs a conv once this fraction of its weights is zero: the crossover measured on ResNet-8
# (benchmarks/results/mcu_int8.json: 0.48 on the M4 and M7, 0.254 on the M3); on the M0 (no 32-bit multiply-
# accumulate, short shifts) the small CNN's 50 % level ran 2x slower sparse, its 90 % level 0.76x dense. A board
# file may say otherwise ("int8_sparse_from" in its firmware section).
SPARSE_FROM = {"cortex-m0": 0.85, "cortex-m0plus": 0.85, "cortex-m3": 0.26}
SPARSE_FROM_DSP, SPARSE_FROM_HOST = 0.49, 0.26
# a sparse entry takes 4 bytes, a dense weight 1: below this sparsity the entries take more flash than the weights,
# so a build over the flash budget tries again with the dense kernel up to here
SPARSE_SMALLER = 0.75
DSP_CPUS = ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p", "cortex-m55", "cortex-m85")
# the weight store (`--int8-store`): "derived" keeps an LCS+P model's codes once and materializes a level in RAM at
# each switch (lcs/int8/derived.py); "ready" stores every level as the kernels read it; "auto" takes derived where
# the model is LCS+P unstructured, the level buffer fits the board and a switch stays cheap, else ready (the manifest
# says why)
STORES = ("auto", "derived", "ready")
# issue 15: a level switch costs at most this fraction of one inference. Auto takes the derived store only where its
# estimate (below) times SWITCH_MARGIN stays within it. The estimate counts instructions: a switch's per code scanned
# for sparse entries, per entry written, per code copied masked; an inference's per MAC of the dense and the sparse
# kernels and per value a layer writes (requantization, norms, pools). Least-squares fits to ResNet-8, the 8x8 small
# CNN and the 28x28 small CNN (14 levels) under QEMU -icount on mps2-an386 (DSP) and mps2-an385 (portable C): each
# within 15 % (switch) and 32 % (inference) of what was measured, so the margin covers both being off together.
SWITCH_LIMIT = 0.13
SWITCH_MARGIN = 1.5
SWITCH_COSTS = {"dsp": ((2.7, 8.8, 1.9), (1.2, 2.5, 50.0)), "portable": ((4.6, 11.6, 3.9), (2.7, 3.6, 59.0))}
# a quantization level's switch per code put on its grid (q8_regrid: a multiply, a rounding shift, a clamp; the
# same C on every core): measured on ResNet-8 under QEMU -icount (benchmarks/results/mcu.json)
REGRID_COST = 7.5
# the generic sources the int8 firmware leaves out: the fp32 level switcher and the TVM runtime shim
FP32_ONLY = ("levels.c", "tvm_shim.c")


def switch_estimate(work: dict, dsp: bool) -> float:
    """A derived level's switch over its inference, from `FirmwareModel.level_work` (instruction estimates)."""
    (scan, entry, masked), (dense_mac, sparse_mac, value) = SWITCH_COSTS["dsp" if dsp else "portable"]
    switch = (scan * work["scanned"] + entry * work["kept"] + masked * work["masked"]
              + REGRID_COST * work.get("regridded", 0))
    infer = dense_mac * work["dense_macs"] + sparse_mac * work["sparse_macs"] + value * work["outputs"]
    return switch / max(infer, 1.0)


def has_dsp(board) -> bool:
    flags = board.extra["firmware"].get("cflags", [])
    return any(f.startswith("-mcpu=") and f.split("=", 1)[1].split("+")[0] in DSP_CPUS for f in flags)


def calibration_data(config, samples: int):
    """(NCHW training images, description for the manifest) from the checkpoint's own data source."""
    from lcs.data import load_data

    data = load_data(config.data)
    n = min(samples, len(data.train))
    if n == 0:
        raise ConfigError(f"data source {config.data.source!r} has no training samples to calibrate on")
    images = torch.stack([data.train[i][0] for i in range(n)])
    return images, {"source": config.data.source, "split": "train", "samples": n}, data


def _accuracy(graph, data, limit: int) -> float | None:
    if data is None or not len(data.test):
        return None
    n = min(limit, len(data.test))
    hits = 0
    for k in range(0, n, 256):
        idx = range(k, min(k + 256, n))
        x = torch.stack([data.test[i][0] for i in idx])
        y = np.array([int(data.test[i][1]) for i in idx])
        hits += int((device_forward(graph, nhwc(x)).argmax(1) == y).sum())
    return hits / n


def check_convertible(ckpt, alphas: list[float], *, adds: bool = False) -> None:
    """Refuse, before any work, a model the int8 path cannot convert (one ConfigError line): its densest level, and
    its densest quantized level if it has some (a level's QuantizeInput must convert too). `adds`: standalone adds
    allowed (CPU kernels; from_torch)."""
    from lcs.int8.from_torch import from_torch
    from lcs.subspace.export import materialize

    cmap = ckpt.model.cmap
    mc = ckpt.config.model
    shape = (mc.in_channels, mc.image_size, mc.image_size)
    quantized = [a for a in alphas if cmap.level(a).bits]
    for alpha in {max(alphas), *([max(quantized)] if quantized else [])}:
        try:
            from_torch(materialize(ckpt.model.eval(), alpha, torch.zeros(1, *shape)), shape, adds=adds)
        except LcsError as exc:
            what = f"level {cmap.level(alpha).label()}: " if cmap.level(alpha).bits else ""
            raise ConfigError(f"--int8: {what}{str(exc).removeprefix('int8: ')}") from None


def derivable(config) -> str | None:
    """Why the derived store does not apply to this model (None: it does)."""
    sc = config.subspace
    if sc.shape != "point" or sc.family not in ("unstructured", "quantization"):
        return (f"the derived store needs an LCS+P unstructured or quantization model (this one is {sc.family}, "
                f"{'LCS+P' if sc.shape == 'point' else 'LCS+L'})")
    return None


def build_int8_firmware(checkpoint, board, levels: list[float] | None, out_dir, *, samples: int = 2,
                        measure: bool = True, write_artifact: bool = True, calibration=None,
                        sparse_from: float | None | str = "board", upload_bank: bool | None = None,
                        graphs: list | None = None, store: str = "auto") -> FirmwareBuild:
    """`calibration`: (NCHW images, description) to calibrate on instead of the checkpoint's training data (the
    manifest records which); `sparse_from`: "board" (the board's measured crossover), a fraction, or None (dense
    kernels only); `graphs`: ready quantized graphs per level (benchmarks), skipping conversion; `store`: one of
    STORES."""
    if store not in STORES:
        raise ConfigError(f"--int8-store must be one of {', '.join(STORES)}, not {store!r}")
    board = _load_board(board)
    ckpt = _load_model(checkpoint)
    model, config = ckpt.model.eval(), ckpt.config
    if store == "derived" and derivable(config):  # refused before any work
        raise ConfigError(f"--int8-store derived: {derivable(config)}")
    cmap = model.cmap
    alphas = list(levels) if levels else list(cmap.eval_alphas)
    if not alphas or len(alphas) > 255:
        raise ConfigError(f"an MCU build needs 1..255 levels, got {len(alphas)}")
    level_objs = [cmap.level(a) for a in alphas]
    if graphs is None:
        check_convertible(ckpt, alphas)
    spec = board.extra["firmware"]
    dsp = has_dsp(board)
    if sparse_from == "board":
        sparse_from = spec.get("int8_sparse_from", SPARSE_FROM_DSP if dsp else SPARSE_FROM.get(board.cpu,
                                                                                               SPARSE_FROM_HOST))
    data = None
    if calibration is None:
        images, calib_info, data = calibration_data(config, CALIBRATION_SAMPLES)
    else:
        images, calib_info = calibration
    mc = config.model
    shape = (1, mc.in_channels, mc.image_size, mc.image_size)
    if graphs is None:
        try:
            graphs = [int8_level(model, a, images) for a in alphas]
        except LcsError as exc:
            raise ConfigError(f"--int8: {str(exc).removeprefix('int8: ')}") from None

    out_dir = Path(out_dir)
    src = out_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    binary = out_dir / ("firmware.elf" if board.kind == "mcu" else "firmware-host-sim")
    default = int(np.argmax(alphas))
    board_dir = fw.FIRMWARE_DIR / "boards" / spec["board_dir"]
    generic = [str(p) for p in sorted((fw.FIRMWARE_DIR / "src").glob("*.c")) if p.name not in FP32_ONLY]
    sources = [*generic, *sorted(str(p) for p in board_dir.glob("*.c")), str(src / "model_int8.c")]
    out_len = int(np.prod(graphs[0].tensors[graphs[0].output].shape))
    if spec.get("upload_bank") is False and upload_bank is None:
        upload_bank = False
    store_info = {"requested": store}
    derived = None
    if store != "ready":
        why = derivable(config)
        if why is None:
            try:
                grids = (quant_grids(model, alphas, graphs, default, images[:1])
                         if cmap.family == "quantization" else None)
                derived = derive_levels(graphs, default, grids)
            except NotDerivable as exc:
                why = f"the levels are not one stored weight set ({exc})"
        if why is not None:
            if store == "derived":
                raise ConfigError(f"--int8-store derived: {why}")
            store_info["reason"] = f"{why}: its levels are stored ready"
    last = None
    thresholds = [sparse_from] + ([SPARSE_SMALLER] if sparse_from is not None and sparse_from < SPARSE_SMALLER else [])
    banks = (True, False) if upload_bank is None else (upload_bank,)
    variants = [(kind, t, bank) for kind in (("derived",) if derived else ()) + (("ready",) if store != "derived"
                                                                                 else ())
                for t in thresholds for bank in banks]
    ram_only = set()  # derived thresholds whose build was over on RAM alone: the spare bank (flash) cannot help
    for kind, sparse_from, with_bank in variants:
        if kind == "derived" and sparse_from in ram_only:
            continue
        if kind == "derived":
            fm = derived_firmware_model(derived[0], derived[1], default, level_objs, cmap.family, default, dsp=dsp,
                                        sparse_from=sparse_from, upload_bank=with_bank, input_chw=shape[1:])
            estimate = max(switch_estimate(w, dsp) for w in fm.level_work)
            store_info["switch_per_infer_estimate"] = round(estimate, 4)
            if store == "auto" and estimate * SWITCH_MARGIN > SWITCH_LIMIT:
                store_info["reason"] = (f"a switch would build a level in RAM in an estimated {estimate:.3f} of an "
                                        f"inference (limit {SWITCH_LIMIT}, with a margin of {SWITCH_MARGIN}): its "
                                        "levels are stored ready")
                continue
        else:
            fm = firmware_model(graphs, level_objs, cmap.family, default, dsp=dsp, sparse_from=sparse_from,
                                upload_bank=with_bank, input_chw=shape[1:])
        (src / "model_int8.c").write_text(fm.source)
        try:
            compile_firmware(board, src, binary, max_payload=max(256, fm.payload_bytes, out_len * 4 + 8, 1032),
                             workspace=16, tx_bytes=max(256, out_len * 4 + 16),
                             defines=() if with_bank else ("LCS_NO_UPLOAD_BANK",), sources=sources)
            sizes = fw.elf_sizes(binary, stack_bytes=int(spec.get("stack_bytes", 0)))
            fw.check_budget(sizes, board)
            last = None
            break
        except fw.BudgetExceeded as exc:
            if kind == "derived":  # the last derived attempt (the smallest buffer) says why ready-store builds follow
                if "flash" not in str(exc):
                    ram_only.add(sparse_from)
                why = (f"the derived store's largest level needs a {fm.ram_buffer_bytes:,} B RAM buffer (sparse from "
                       f"{sparse_from}) and {exc}")
                store_info["reason"] = f"{why}; its levels are stored ready"
            last = (kind, exc)
    if last is not None:
        if store == "derived":
            raise fw.BudgetExceeded(f"--int8-store derived: {why}") from None
        raise last[1]
    if fm.store == "derived":
        graphs = derived[0]
        store_info.pop("reason", None)
        store_info["ram_buffer_bytes"] = fm.ram_buffer_bytes
        if cmap.family != "quantization":
            store_info["thresholds_kept"] = [  # per level: nonzero codes its thresholds keep / its own quantization had
                [sum(k for k, _ in plan.kept.values()), sum(t for _, t in plan.kept.values())] for plan in derived[1]]
    store_info["mode"] = fm.store
    accuracy = [{"alpha": a, "accuracy": _accuracy(g, data, ACCURACY_SAMPLES)} for a, g in zip(alphas, graphs)]

    # reference: the integer reference between the device's float conversions, on test images where there are
    # some (a self-test's argmax then means something), else the calibration images
    pool = images if data is None or not len(data.test) else torch.stack(
        [data.test[i][0] for i in range(min(samples, len(data.test)))])
    inputs = pool[:samples].float()
    expected = [device_forward(g, nhwc(inputs)).astype(np.float32) for g in graphs]
    result = FirmwareBuild(board.name, binary, level_objs, sizes, fm.bank, inputs.numpy(), expected,
                           fm.arena_bytes, fm.ram_buffer_bytes, fm.scratch_bytes, 0,
                           "on-switch" if fm.store == "derived" else "stored", with_bank)
    result.precision = "int8"
    result.int8 = {"calibration": calib_info, "store": store_info, "store_bytes": len(fm.bank),
                   "model_weights": fm.model_weights,
                   "bytes_per_model_weight": round(fm.bytes_per_model_weight, 4),
                   "weights_all_levels": fm.weights, "stored_entries": fm.stored_weights,
                   "bytes_per_stored_entry": round(fm.bytes_per_stored_entry, 4),
                   "sparse_from": sparse_from, "dsp": dsp, "sparse_layers": fm.sparse_layers,
                   "accuracy_samples": min(ACCURACY_SAMPLES, len(data.test)) if data is not None else 0}
    if measure and (board.kind != "mcu" or "qemu" in board.extra):
        result.cycles = measure_cycles(result, board)
    (out_dir / "build.json").write_text(json.dumps(result.summary(), indent=1))
    if write_artifact:
        result.artifact = _write_artifact(result, board, config, cmap, out_dir, shape, out_len, accuracy)
    return result
