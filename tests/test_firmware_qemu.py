"""The firmware on QEMU's Cortex-M boards (M3, M4, M7, M55), driven over QEMU's TCP serial port with pyserial:
every level equals torch, SysTick counts under -icount repeat exactly, a bad frame is answered and survived."""

from __future__ import annotations

import numpy as np
import pytest

from lcs import protocol as P
from lcs.device import Device

pytestmark = [pytest.mark.slow, pytest.mark.tvm, pytest.mark.qemu]

BOARDS = ["mps2-an385", "mps2-an386", "mps2-an500", "mps3-an547"]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint("unstructured")


@pytest.mark.parametrize("board", BOARDS)
def test_board_runs_every_level_exactly(tiny_checkpoint, check_levels, board, checkpoint, tmp_path):
    import targets
    from tvm_build.mcu.build import build_firmware
    from lcs.transport.launch import start_qemu

    result = build_firmware(checkpoint, board, None, tmp_path, samples=2, measure=False, write_artifact=False)
    with start_qemu(result.binary, targets.load(board).extra["qemu"]) as running, Device.open(running.url) as dev:
        info = dev.hello()
        assert (info.board, info.levels, info.family) == (board, len(result.levels), "unstructured")
        check_levels(dev, result)
        # within one run the same work costs the same instructions; SysTick (25 MHz, 40 ns) quantizes the
        # -icount clock (8 ns per instruction) and a SysTick wrap interrupt may fall inside, so counts may differ by
        # a few ticks with the start phase
        x = result.inputs[0].reshape(-1).tolist()
        counts = [dev.infer(x)[1] for _ in range(3)]
        switches = [dev.set_level(index=1)[1] for _ in range(2)]
        assert max(counts) - min(counts) <= 4 and max(switches) - min(switches) <= 4 and min(counts) > 1000
        bad = bytearray(P.encode(P.STATS, 5))
        bad[7] ^= 1
        dev.send_raw(bytes(bad))
        reply = dev.read_frame(5.0)
        assert (reply.type, reply.status) == (P.ERROR, P.BAD_CRC)
        out, _ = dev.infer(x)
        np.testing.assert_allclose(out, result.expected[1][0], atol=1e-6, rtol=0)
        if board == "mps2-an385":
            check_upload_and_reset(dev, checkpoint, tiny_checkpoint("unstructured", seed=1), result)


def check_upload_and_reset(dev, checkpoint, other, result):
    """A new weight set goes through the UART in chunks and is committed; RESET brings back the flashed image."""
    import time

    import torch
    from lcs.subspace.export import materialize
    from tvm_build.mcu import firmware as fw
    from tvm_build.mcu.build import _lowered
    from tvm_build.mcu.device_net import device_net

    _, _, plan = _lowered(checkpoint.model, torch.zeros(1, 1, 8, 8), result.switching == "in-kernel")
    blob = fw.bank_bytes(device_net(other.model), plan)
    level = len(result.levels) - 1
    dev.set_level(index=level)
    assert dev.upload_weights(blob) == P.crc32(blob)
    with torch.no_grad():
        want = materialize(other.model, result.levels[level].alpha, torch.zeros(1, 1, 8, 8))(
            torch.from_numpy(result.inputs[:1])).numpy()[0]
    x = result.inputs[0].reshape(-1).tolist()
    np.testing.assert_allclose(dev.infer(x)[0], want, atol=1e-6, rtol=0)
    dev.reset()
    time.sleep(0.3)
    assert dev.hello().weights_crc == P.crc32(result.bank)
    np.testing.assert_allclose(dev.infer(x)[0], result.expected[level][0], atol=1e-6, rtol=0)


def test_recorded_cycles_repeat_exactly_across_runs(checkpoint, tmp_path):
    """What the build records repeats across QEMU runs to within one SysTick tick: the instructions are the same,
    but the start phase within a 40 ns tick depends on how long the firmware polled the UART for the host."""
    import targets
    from tvm_build.mcu.build import build_firmware, measure_cycles

    result = build_firmware(checkpoint, "mps2-an500", [0.1, 1.0], tmp_path, samples=1, measure=True,
                            write_artifact=False)
    again = measure_cycles(result, targets.load("mps2-an500"))
    for a, b in zip(again, result.cycles):
        assert abs(a["infer_cycles"] - b["infer_cycles"]) <= 1 and abs(a["switch_cycles"] - b["switch_cycles"]) <= 1
    assert all(c["switch_cycles"] > 0 and c["infer_cycles"] > 0 for c in again)


def test_small_cnn_fits_cortex_m7_budget_and_matches_torch(check_levels, tmp_path):
    """The MCU-sized CNN (width 16, 28x28, ~33k parameters) in <= 256 KB flash and <= 64 KB RAM on mps2-an500:
    the build picks in-kernel weight transforms and no upload bank, and the firmware still switches levels.
    Its outputs are bit-identical to the same firmware compiled for x86 (host-sim)."""
    import targets
    from lcs.checkpoint import Checkpoint
    from lcs.config import ModelConfig, RunConfig, SubspaceConfig
    from lcs.models import build_model
    from lcs.subspace.model import SubspaceModel
    from tvm_build.mcu.build import build_firmware
    from lcs.transport.launch import start_qemu
    import torch

    torch.manual_seed(0)
    mc, sc = ModelConfig(), SubspaceConfig(family="quantization", shape="point")
    model = SubspaceModel(build_model(mc), sc).eval()
    assert 30_000 < sum(p.numel() for p in model.parameters()) < 40_000
    for layer in model.weight_layers():
        layer.act_range.lo.fill_(-1.0)
        layer.act_range.hi.fill_(2.0)
        layer.act_range.seen.fill_(True)
    board = targets.load("mps2-an500")
    result = build_firmware(Checkpoint(RunConfig(model=mc, subspace=sc), model), board, [1 / 6, 1.0], tmp_path,
                            samples=1, measure=False, write_artifact=False)
    assert result.sizes.flash <= 256 * 1024 and result.sizes.ram <= 64 * 1024
    assert (result.switching, result.upload_bank) == ("in-kernel", False)
    with start_qemu(result.binary, board.extra["qemu"]) as running, Device.open(running.url) as dev:
        dev.hello()
        on_m7 = check_levels(dev, result)
        with pytest.raises(P.DeviceError, match="no spare weight bank"):
            dev.upload_weights(result.bank)
    from lcs.transport.launch import start_host_sim
    x86 = build_firmware(Checkpoint(RunConfig(model=mc, subspace=sc), model), "host-sim", [1 / 6, 1.0],
                         tmp_path / "x86", samples=1, measure=False, write_artifact=False, switching="in-kernel")
    with start_host_sim(x86.binary) as running, Device.open(running.url) as dev:
        dev.hello()
        assert check_levels(dev, x86) == on_m7  # float lists: bit-exact equality


def test_structured_width_on_cortex_m4(check_levels, tiny_checkpoint, tmp_path):
    """Width levels (one kernel set each) on a real Cortex-M build: equal to torch, narrower costs fewer cycles."""
    import targets
    from tvm_build.mcu.build import build_firmware
    from lcs.transport.launch import start_qemu

    board = targets.load("mps2-an386")
    result = build_firmware(tiny_checkpoint("structured"), board, [0.0, 1.0], tmp_path, samples=2, measure=True,
                            write_artifact=False)
    assert result.cycles[0]["infer_cycles"] < result.cycles[1]["infer_cycles"] / 2
    with start_qemu(result.binary, board.extra["qemu"]) as running, Device.open(running.url) as dev:
        dev.hello()
        check_levels(dev, result)
