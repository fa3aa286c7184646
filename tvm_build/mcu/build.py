"""`build_firmware`: checkpoint + board -> firmware that runs every level of the subspace and switches on command.

    build_firmware("ck.safetensors", "mps2-an500", levels=None, out_dir="build/an500")

Steps: the device network (device_net.py) -> TVM C kernels (lower.py) -> static executor (executor.py) ->
model tables and weight bank (firmware.py) -> compile + link for the board -> flash/RAM from the ELF against the
board budget (fails early with the numbers) -> reference outputs per level from torch (`materialize`) ->
optionally run the firmware (QEMU / host-sim) to record cycles per inference and per switch -> artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lcs.config import load_board
from lcs.errors import ConfigError, LcsError
from lcs.evaluate import accuracy_at, accuracy_table
from lcs.subspace.levels import Level
from lcs.transport.launch import start  # launching a built firmware (QEMU / host-sim): measure_cycles runs it
from tvm_build.compile import tvm_include_dirs
from tvm_build.mcu import firmware as fw
from tvm_build.mcu.device_net import device_net
from tvm_build.mcu.executor import emit_executor, plan
from tvm_build.mcu.lower import lower


@dataclass
class FirmwareBuild:
    board: str
    binary: Path  # ELF (QEMU boards) or executable (host-sim)
    levels: list[Level]
    sizes: fw.Sizes
    bank: bytes
    inputs: np.ndarray  # reference inputs (N, *input shape)
    expected: list[np.ndarray]  # per level: torch outputs for `inputs`
    arena_bytes: int
    state_bytes: int
    workspace_bytes: int
    kernels: int
    switching: str = "on-switch"  # where the weight transform runs: once per switch, or inside every kernel call
    # ("stored": int8 builds with the ready store keep every level in the weight store, a switch selects one; with
    # the derived store a switch builds the level in RAM, "on-switch")
    upload_bank: bool = True
    cycles: list[dict] = field(default_factory=list)  # per level: {"infer": n, "switch": n} when measured
    artifact: Path | None = None
    precision: str = "fp32"  # "int8": the levels run firmware_host/src/kernels_int8.c (build_int8.py)
    int8: dict | None = None  # int8 builds: calibration data, weight store figures, sparse layers

    def summary(self) -> dict:
        return {"board": self.board, "binary": str(self.binary), "precision": self.precision,
                **({"int8": self.int8} if self.int8 else {}), **self.sizes.to_dict(),
                "arena_bytes": self.arena_bytes, "state_bytes": self.state_bytes, "weight_bytes": len(self.bank),
                "workspace_bytes": self.workspace_bytes, "kernels": self.kernels, "switching": self.switching,
                "upload_bank": self.upload_bank,
                "levels": [{**lv.to_dict(), **(self.cycles[i] if i < len(self.cycles) else {})}
                           for i, lv in enumerate(self.levels)]}


def _load_board(board):
    import targets

    board = load_board(board) if isinstance(board, str) else board
    if "firmware" not in board.extra:
        raise ConfigError(f"target {board.name} has no firmware section; MCU builds need one of: "
                          f"{', '.join(n for n in targets.names() if 'firmware' in targets.load(n).extra)}")
    return board


def _load_model(checkpoint):
    from lcs import checkpoint as ck

    if isinstance(checkpoint, (str, Path)):
        checkpoint = ck.load(checkpoint)
    return checkpoint


def _linker_script(board, path: Path) -> Path:
    mem = board.extra["firmware"]["memory"]
    boards = fw.FIRMWARE_DIR / "boards"
    own = boards / board.extra["firmware"]["board_dir"] / "link.ld.in"
    template = (own if own.is_file() else boards / "cortexm" / "link.ld.in").read_text()  # vendor chips share one
    path.write_text(template.format(flash_origin=mem["flash_origin"], flash_length=mem["flash_length"],
                                    ram_origin=mem["ram_origin"], ram_length=mem["ram_length"]))
    return path


def compile_firmware(board, src_dir: Path, out: Path, *, max_payload: int, workspace: int, tx_bytes: int = 0,
                     defines: tuple[str, ...] = (), include: tuple[Path, ...] = (),
                     sources: list[str] | None = None) -> Path:
    """`sources`: the C files to build (default: the generic firmware, the board's hooks and the generated TVM
    kernels, executor and model tables in `src_dir`)."""
    spec = board.extra["firmware"]
    cc = fw.require_tool(spec["cc"], spec.get("cc_package", spec["cc"]))
    board_dir = fw.FIRMWARE_DIR / "boards" / spec["board_dir"]
    cmd = [cc, *spec.get("cflags", []), f"-DLCS_MAX_PAYLOAD={max_payload}", f"-DLCS_WORKSPACE_BYTES={workspace}",
           f"-I{fw.FIRMWARE_DIR / 'src'}", f"-I{board_dir}", *[f"-I{d}" for d in include], *[f"-I{d}" for d in tvm_include_dirs()],
           *[f"-D{d}" for d in (*spec.get("defines", []), *defines)]]
    if tx_bytes:
        cmd.append(f"-DLCS_TX_BYTES={tx_bytes}")
    if "memory" in spec:
        cmd += [f"-T{_linker_script(board, src_dir / 'link.ld')}"]
    cmd += ["-o", str(out), *(sources or fw.firmware_sources(src_dir, board_dir)), *spec.get("ldflags", [])]
    try:
        fw.run(cmd, f"compiling the firmware for {board.name}")
    except fw.BudgetExceeded as exc:  # the linker script holds the chip's real sizes and refused the image
        raise fw.BudgetExceeded(f"the model does not fit {board.name} ({board.flash_bytes:,} B flash, "
                                f"{board.ram_bytes:,} B RAM): the linker found {exc}") from None
    return out


SWITCHING = ("on-switch", "in-kernel")


def build_firmware(checkpoint, board, levels: list[float] | None, out_dir, *, samples: int = 2, measure: bool = True,
                   write_artifact: bool = True, example: torch.Tensor | None = None, switching: str = "auto",
                   upload_bank: bool | None = None, accuracy: list[dict] | None = None) -> FirmwareBuild:
    """`switching`: "on-switch" keeps the current level's weights in RAM, computed once per switch (fast inference,
    RAM = weights); "in-kernel" recomputes them inside every kernel (RAM = activations only, slower inference);
    "auto" takes the first that fits the board. `upload_bank`: reserve a second weight bank for uploads (None: if
    the flash budget allows). `accuracy`: rows {alpha, accuracy} for the manifest (default: the checkpoint's own
    final evaluation)."""
    from lcs.subspace.export import materialize

    board = _load_board(board)
    if upload_bank is None and board.extra["firmware"].get("upload_bank") is False:
        upload_bank = False  # flash-only weight store (vendor chips): weights come with `lcs flash`
    ckpt = _load_model(checkpoint)
    model, config = ckpt.model.eval(), ckpt.config
    accuracy = accuracy_table(ckpt.metrics, None) if accuracy is None else accuracy
    cmap = model.cmap
    alphas = list(levels) if levels else list(cmap.eval_alphas)
    if not alphas or len(alphas) > 255:
        raise ConfigError(f"an MCU build needs 1..255 levels, got {len(alphas)}")
    level_objs = [cmap.level(a) for a in alphas]
    mc = config.model
    shape = (1, mc.in_channels, mc.image_size, mc.image_size)
    x = example if example is not None else torch.zeros(shape)

    out_dir = Path(out_dir)
    src = out_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    in_len = int(np.prod(shape))
    binary = out_dir / ("firmware.elf" if board.kind == "mcu" else "firmware-host-sim")
    spec = board.extra["firmware"]
    if switching not in ("auto", *SWITCHING):
        raise ConfigError(f"unknown switching mode {switching!r}; choose auto, {', '.join(SWITCHING)}")
    variants = [(m, bank) for m in (SWITCHING if switching == "auto" else (switching,))
                for bank in ((True, False) if upload_bank is None else (upload_bank,))]
    for attempt, (mode, with_bank) in enumerate(variants):
        in_kernel = mode == "in-kernel"
        if cmap.family == "structured":  # one graph (kernels, call lists) per width level, one weight bank
            per_level = [_lowered(model, x, in_kernel, a, f"l{i}_") for i, a in enumerate(alphas)]
            level_plan = list(range(len(alphas)))
        else:
            per_level = [_lowered(model, x, in_kernel)]
            level_plan = [0] * len(alphas)
        dn, lowered, p = per_level[0]
        plans = [entry[2] for entry in per_level]
        if any(q.bank_layout != p.bank_layout for q in plans):
            raise LcsError("the width levels disagree on the weight layout (internal error)")
        bank = fw.bank_bytes(dn, p)
        executor_c = emit_executor(plans, level_plan)
        kernel_sources = [entry[1].kernels_c for entry in per_level]
        mhash = fw.model_hash(bank, *(k.encode() for k in kernel_sources), executor_c.encode())
        default = int(np.argmax(alphas))
        tables = fw.emit_model_tables(dn, p, cmap.family, level_objs, default, bank, mhash, upload_bank=with_bank)
        for stale in src.glob("kernels*.c"):
            stale.unlink()
        for i, source in enumerate(kernel_sources):
            (src / f"kernels_{i}.c").write_text(source)
        (src / "executor.c").write_text(executor_c)
        (src / "model_gen.c").write_text(tables)
        workspace = max(entry[1].workspace_bytes for entry in per_level)
        out_len = int(np.prod(p.tensors[p.output].shape))
        max_payload = max(256, in_len * 4, out_len * 4 + 8, 1032)
        try:
            compile_firmware(board, src, binary, max_payload=max_payload, workspace=max(16, workspace),
                             tx_bytes=max(256, out_len * 4 + 16), defines=() if with_bank else ("LCS_NO_UPLOAD_BANK",))
            sizes = fw.elf_sizes(binary, stack_bytes=int(spec.get("stack_bytes", 0)))
            fw.check_budget(sizes, board)
            break
        except fw.BudgetExceeded:
            if attempt == len(variants) - 1:
                raise

    # reference: torch's plain network of each level on fixed sample inputs
    gen = torch.Generator().manual_seed(0)
    inputs = torch.rand((samples, *shape[1:]), generator=gen)
    expected = []
    with torch.no_grad():
        for a in alphas:
            net = materialize(model, a, x)
            expected.append(net(inputs).numpy().astype(np.float32))
    result = FirmwareBuild(board.name, binary, level_objs, sizes, bank, inputs.numpy(), expected,
                           max(q.arena_bytes for q in plans), max(q.state_bytes for q in plans), workspace,
                           len({c.kernel for q in plans for c in q.calls}), mode, with_bank)
    if measure and (board.kind != "mcu" or "qemu" in board.extra):  # build-only boards: no emulator here
        result.cycles = measure_cycles(result, board)
    (out_dir / "build.json").write_text(json.dumps(result.summary(), indent=1))
    if write_artifact:
        result.artifact = _write_artifact(result, board, config, cmap, out_dir, shape, out_len, accuracy)
    return result


# memo of lowered models, keyed by id(model): each entry holds the model itself, so its id cannot be reused while the
# entry lives; bounded (cleared past 32) and per process: tests and benchmarks build one model for several boards
_LOWERED: dict = {}


def _lowered(model, x, weights_in_kernel: bool = False, width_alpha: float | None = None, prefix: str = ""):
    """Device network, TVM kernels and plan of a model; memoised per model object within one process (the same
    kernels serve every board: only the compiler flags differ)."""
    key = (id(model), tuple(x.shape), weights_in_kernel, width_alpha, prefix)
    if key not in _LOWERED:
        dn = device_net(model, width_alpha)
        with torch.no_grad():
            lowered = lower(dn.module, x, weights_in_kernel=weights_in_kernel, prefix=prefix)
        ctrl_params = {layer.ctrl_param for layer in dn.layers if layer.ctrl_param}
        if len(_LOWERED) > 32:
            _LOWERED.clear()
        _LOWERED[key] = (model, dn, lowered, plan(lowered, ctrl_params))
    return _LOWERED[key][1:]


def measure_cycles(result: FirmwareBuild, board) -> list[dict]:
    """Switch to every level and run one inference there; record both counts (exact under QEMU -icount)."""
    from lcs.device import Device

    cycles = []
    with start(result.binary, board) as running, Device.open(running.url) as dev:
        dev.hello()
        for i in range(len(result.levels)):
            _, switch = dev.set_level(index=i)
            _, infer = dev.infer(result.inputs[0].reshape(-1).tolist())
            cycles.append({"switch_cycles": switch, "infer_cycles": infer})
    return cycles


def _write_artifact(result: FirmwareBuild, board, config, cmap, out_dir: Path, shape, out_len,
                    accuracy: list[dict]) -> Path:
    from lcs import artifact
    from lcs.subspace.levels import map_to_dict

    member = artifact.firmware_member(result.binary.name)
    ref = {"input": result.inputs, **{artifact.reference_key(i): e for i, e in enumerate(result.expected)}}
    levels = []
    for i, lv in enumerate(result.levels):
        c = result.cycles[i] if i < len(result.cycles) else {}
        levels.append({"index": i, "alpha": lv.alpha, "label": lv.label(), "keep": lv.keep, "width": lv.width,
                       "bits": lv.bits, "accuracy": accuracy_at(accuracy, lv.alpha), "latency_ms": None, "cycles": c.get("infer_cycles"),
                       "switch_cycles": c.get("switch_cycles"), "members": {"firmware": member}})
    members = {member: result.binary, artifact.FIRMWARE_WEIGHTS_MEMBER: result.bank}
    images = {}
    if board.kind == "mcu":  # what `lcs flash` writes: the ELF's loadable bytes as .bin and Intel .hex
        from tvm_build.mcu.images import write_images

        img = write_images(result.binary)
        images = {"bin": artifact.firmware_member(img.bin.name), "hex": artifact.firmware_member(img.hex.name),
                  "base": f"0x{img.base:08x}"}
        members.update({images["bin"]: img.bin, images["hex"]: img.hex})
    manifest = artifact.new_manifest(
        kind="firmware", target=board.to_dict(), strategy="firmware", config=config.to_dict(), compression_map=map_to_dict(cmap),
        input={"name": "x", "shape": list(shape), "dtype": "float32"},
        output={"shape": [1, out_len], "dtype": "float32"}, modules={}, levels=levels, reference=artifact.REFERENCE_MEMBER,
        firmware={**result.summary(), "binary": member, "weights": artifact.FIRMWARE_WEIGHTS_MEMBER,
                  **({"images": images} if images else {})})
    path = out_dir / f"{board.name}.lcsa"
    artifact.write_artifact(path, manifest, {**members, artifact.REFERENCE_MEMBER: artifact.npz_bytes(ref)})
    return path
