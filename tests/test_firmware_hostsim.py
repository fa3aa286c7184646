"""The real firmware (TVM C kernels + generated static executor + protocol loop) compiled for x86 and driven over a
pseudo-terminal with pyserial: every level against torch, bad frames, uploads, reset, budgets, missing tools."""

from __future__ import annotations

import dataclasses
import struct
import time

import numpy as np
import pytest
import torch

import targets
from lcs import protocol as P
from lcs.device import Device

pytestmark = [pytest.mark.slow, pytest.mark.tvm]


@pytest.fixture(scope="module")
def built(tiny_checkpoint, tmp_path_factory):
    from tvm_build.mcu.build import build_firmware

    ckpt = tiny_checkpoint("quantization")
    result = build_firmware(ckpt, "host-sim", None, tmp_path_factory.mktemp("hostsim"), samples=2, measure=True)
    return ckpt, result


@pytest.fixture
def device(built):
    from lcs.transport.launch import start_host_sim

    _, result = built
    with start_host_sim(result.binary) as running, Device.open(running.url, timeouts={P.HELLO: 1.0}) as dev:
        dev.hello()
        yield dev


def test_device_graph_blends_bit_identically_to_torch(tiny_checkpoint):
    """One blending formula, (1 - alpha) w0 + alpha w1 with alpha in float32, in the subspace layers and in the
    device graph (whose ctrl alpha is float32, as in the firmware's levels.c): equal weights, bit for bit."""
    from lcs.subspace.compress import blend as _blend

    model = tiny_checkpoint("quantization").model
    layers = model.weight_layers()
    assert any(hasattr(layer, "weight1") for layer in layers)  # a line: the blend is not trivial
    for alpha in (0.0, 1 / 6, 1 / 3, 0.5, 2 / 3, 0.9, 1.0):
        model.set_alpha(alpha)
        for layer in layers:
            if hasattr(layer, "weight1"):
                ctrl_alpha = torch.tensor(alpha, dtype=torch.float32)
                assert torch.equal(layer.blended("weight"), _blend(layer.weight, layer.weight1, ctrl_alpha)), alpha
    model.set_alpha(0.0)
    assert all(torch.equal(layer.blended("weight"), layer.weight) for layer in layers)
    model.set_alpha(1.0)
    assert all(torch.equal(layer.blended("weight"), getattr(layer, "weight1", layer.weight)) for layer in layers)


def test_every_level_matches_torch(check_levels, device, built):
    _, result = built
    info = device.info
    assert (info.levels, info.family, info.input_len, info.output_len) == (6, "quantization", 64, 10)
    check_levels(device, result)
    # the levels really differ (3 bit vs 8 bit), so equality above is not vacuous
    assert np.abs(result.expected[0] - result.expected[-1]).max() > 1e-3


def test_set_level_by_alpha_and_level_info(device, built):
    _, result = built
    alpha = result.levels[2].alpha
    assert device.set_level(alpha=alpha)[0] == 2
    info = device.level_info(2)
    assert info.bits == result.levels[2].bits and abs(info.alpha - alpha) < 1e-6


def test_bad_frames_get_error_replies_and_device_keeps_running(device, built):
    _, result = built
    # bad CRC
    frame = bytearray(P.encode(P.HELLO, 77))
    frame[-1] ^= 0x55
    device.send_raw(bytes(frame))
    reply = device.read_frame(2.0)
    assert (reply.type, reply.seq, reply.status) == (P.ERROR, 77, P.BAD_CRC)
    # length over the device maximum
    device.send_raw(b"\xa5\x5a" + struct.pack("<BBH", P.INFER, 78, 0xFFFF))
    reply = device.read_frame(2.0)
    assert (reply.type, reply.seq, reply.status) == (P.ERROR, 78, P.BAD_LENGTH)
    # wrong payload size for the command
    with pytest.raises(P.DeviceError, match="bad length"):
        device.request(P.INFER, b"\0" * 12)
    # unknown command
    with pytest.raises(P.DeviceError, match="unknown command"):
        device.request(0x42)
    # out-of-range level, by index and by an alpha that names no level
    with pytest.raises(P.DeviceError, match="out of range"):
        device.set_level(index=99)
    with pytest.raises(P.DeviceError, match="out of range"):
        device.set_level(alpha=0.123)
    # a frame that stops half way: the client flushes it out and the next request succeeds
    device.send_raw(P.encode(P.INFER, 79, b"\0" * 256)[:40])
    time.sleep(0.1)
    device._flush_device()
    stats = device.stats()
    assert stats["frames_bad"] >= 3
    out, _ = device.infer(result.inputs[0].reshape(-1).tolist())
    np.testing.assert_allclose(out, result.expected[device.info.level][0], atol=1e-5, rtol=0)


def test_shared_vectors_against_the_c_side(device, protocol_vectors):
    frame_type, seq, payload, frame = protocol_vectors[0]  # HELLO
    device.send_raw(frame)
    reply = device.read_frame(2.0)
    assert (reply.type, reply.seq, reply.status) == (P.HELLO | P.REPLY, seq, P.OK)
    assert P.parse_hello(reply.payload).protocol_version == P.PROTOCOL_VERSION  # main.c and protocol.py agree


def test_upload_commits_only_a_complete_checked_set(tiny_checkpoint, device, built):
    from tvm_build.mcu import firmware as fw
    from tvm_build.mcu.build import _lowered
    from lcs.subspace.export import materialize

    ckpt, result = built
    level = device.set_level(index=len(result.levels) - 1)[0]
    x = result.inputs[0].reshape(-1).tolist()
    before, _ = device.infer(x)
    # another model of the same architecture
    other = tiny_checkpoint("quantization", seed=1)
    dn, _, plan = _lowered(ckpt.model, torch.zeros(1, 1, 8, 8))
    from tvm_build.mcu.device_net import device_net
    blob = fw.bank_bytes(device_net(other.model), plan)
    assert blob != result.bank

    device.upload_weights(blob, chunk=1000, stop_after=3)  # link lost half way
    with pytest.raises(P.DeviceError, match="incomplete"):
        device.request(P.UPLOAD_COMMIT)
    assert device.infer(x)[0] == before

    crc = P.crc32(blob)
    device.request(P.UPLOAD_BEGIN, P.upload_begin_payload(len(blob), crc ^ 1))  # wrong announced check
    for offset in range(0, len(blob), 1000):
        device.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(offset, blob[offset: offset + 1000]))
    with pytest.raises(P.DeviceError, match="failed their check"):
        device.request(P.UPLOAD_COMMIT)
    assert device.infer(x)[0] == before
    with pytest.raises(P.DeviceError, match="out of order"):
        device.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(0, blob[:10]))  # no BEGIN
    with pytest.raises(P.DeviceError, match="bad argument"):
        device.request(P.UPLOAD_BEGIN, P.upload_begin_payload(len(blob) - 4, crc))

    assert device.upload_weights(blob) == crc
    assert device.hello().weights_crc == crc
    with torch.no_grad():
        want = materialize(other.model, result.levels[level].alpha, torch.zeros(1, 1, 8, 8))(
            torch.from_numpy(result.inputs[:1])).numpy()[0]
    np.testing.assert_allclose(device.infer(x)[0], want, atol=1e-5, rtol=0)
    assert device.stats()["uploads_committed"] == 1


def exchange(dev, frame: bytes) -> P.Frame:
    dev.send_raw(frame)
    reply = dev.read_frame(2.0)
    assert reply is not None, "no reply"
    return reply


def test_a_repeated_request_is_answered_from_the_kept_reply(device, built):
    """The same frame twice (a retry whose reply was lost): the same reply, the command runs once."""
    _, result = built
    x = result.inputs[0].reshape(-1).tolist()
    before = device.stats()
    # host-sim cycles are nanoseconds: a second run would not report the same count
    set_level = P.encode(P.SET_LEVEL, 200, P.set_level_payload(index=1))
    switched = exchange(device, set_level)
    assert exchange(device, set_level) == switched and P.parse_set_level(switched.payload)[0] == 1
    infer = P.encode(P.INFER, 201, P.infer_payload(x))
    inferred = exchange(device, infer)
    assert exchange(device, infer) == inferred
    np.testing.assert_allclose(P.parse_infer(inferred.payload)[0], result.expected[1][0], atol=1e-3, rtol=0)
    after = device.stats()
    assert after["switches"] - before["switches"] == 1 and after["inferences"] - before["inferences"] == 1
    assert after["repeats"] - before["repeats"] == 2
    assert after["last_switch_cycles"] == P.parse_set_level(switched.payload)[1]
    assert after["last_infer_cycles"] == P.parse_infer(inferred.payload)[1]

    # a chunk and a commit that a second run would refuse (wrong offset, no open upload)
    blob = result.bank
    crc = P.crc32(blob)
    device.request(P.UPLOAD_BEGIN, P.upload_begin_payload(len(blob), crc))
    chunk = P.encode(P.UPLOAD_CHUNK, 210, P.upload_chunk_payload(0, blob[:100]))
    first = exchange(device, chunk)
    assert exchange(device, chunk) == first and first.payload == bytes([P.OK]) + struct.pack("<I", 100)
    for offset in range(100, len(blob), 1000):
        device.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(offset, blob[offset: offset + 1000]))
    commit = P.encode(P.UPLOAD_COMMIT, 211)
    first = exchange(device, commit)
    assert exchange(device, commit) == first and first.payload == bytes([P.OK]) + struct.pack("<I", crc)
    assert device.stats()["uploads_committed"] == 1

    # the same seq with another payload, or the same payload with another seq, is a new request
    assert P.parse_set_level(exchange(device, P.encode(P.SET_LEVEL, 211, P.set_level_payload(index=0))).payload)[0] == 0
    assert P.parse_set_level(exchange(device, P.encode(P.SET_LEVEL, 212, P.set_level_payload(index=0))).payload)[0] == 0
    stats = device.stats()
    assert stats["switches"] - after["switches"] == 3  # the commit's re-derivation and two set-levels
    assert stats["repeats"] - after["repeats"] == 2


class LoseReplies:
    """A link that loses the device's reply to the first request of each listed type (a pyserial port wrapper)."""

    def __init__(self, port, commands) -> None:
        self.port, self.lose, self.losing = port, set(commands), None

    def write(self, data: bytes) -> int:
        for frame in P.Decoder().feed(bytes(data)):  # the client writes whole frames (or flush zeros)
            if frame.type in self.lose:
                self.lose.discard(frame.type)
                self.losing = P.Decoder()
        return self.port.write(data)

    def read(self, size: int = 1) -> bytes:
        data = self.port.read(size)
        if self.losing is not None and data:
            if self.losing.feed(data):  # the reply is complete: it was lost, later ones pass
                self.losing = None
            return b""
        return data

    def __getattr__(self, name):
        return getattr(self.port, name)


def test_client_retries_after_lost_replies_apply_nothing_twice(built):
    """Lost replies to a level switch, an inference, a chunk and the commit: the client resends the same frames,
    the device answers from its kept reply, and nothing runs twice (no refused chunk, no restarted upload)."""
    from lcs.transport.launch import start_host_sim

    _, result = built
    commands = (P.SET_LEVEL, P.INFER, P.UPLOAD_CHUNK, P.UPLOAD_COMMIT)
    x = result.inputs[0].reshape(-1).tolist()
    other = (np.frombuffer(result.bank, dtype=np.float32) * np.float32(0.5)).tobytes()
    with start_host_sim(result.binary) as running, \
            Device.open(running.url, timeouts={c: 0.3 for c in P.COMMAND_NAMES},
                        port_wrapper=lambda port: LoseReplies(port, commands)) as dev:
        dev.hello()
        before = dev.stats()
        assert dev.set_level(index=2)[0] == 2
        assert len(dev.infer(x)[0]) == len(result.expected[2][0])
        assert dev.upload_weights(other, chunk=1000) == P.crc32(other)
        stats = dev.stats()
        assert dev.retried == len(commands) and dev.uploads_restarted == 0
    assert stats["repeats"] - before["repeats"] == len(commands)
    assert stats["switches"] - before["switches"] == 2  # set-level once, the commit's re-derivation once
    assert stats["inferences"] - before["inferences"] == 1 and stats["uploads_committed"] == 1


def test_reset_restarts_with_the_image(device, built):
    _, result = built
    device.set_level(index=0)
    device.reset()
    time.sleep(0.2)
    info = device.hello()
    assert info.level == len(result.levels) - 1
    assert device.stats()["inferences"] == 0


def test_build_records_cycles_and_writes_artifact(built):
    from lcs.artifact import open_artifact

    _, result = built
    assert all(c["infer_cycles"] > 0 and c["switch_cycles"] > 0 for c in result.cycles)
    art = open_artifact(result.artifact)
    # every level's measured counts reach the manifest, in level order
    assert [(lv.cycles, lv.switch_cycles) for lv in art.levels] == \
        [(c["infer_cycles"], c["switch_cycles"]) for c in result.cycles]
    # the firmware section names the members that hold the program and the weight bank
    assert art.kind == "firmware" and art.read(art.manifest.firmware.binary) == result.binary.read_bytes()
    assert art.read(art.manifest.firmware.weights) == result.bank


def test_over_budget_fails_early_with_numbers(built, tmp_path):
    from tvm_build.mcu.build import build_firmware
    from tvm_build.mcu.firmware import BudgetExceeded

    ckpt, _ = built
    board = dataclasses.replace(targets.load("host-sim"), flash_bytes=20_000, ram_bytes=10_000)
    with pytest.raises(BudgetExceeded, match=r"flash [\d,]+ B > 20,000 B; RAM [\d,]+ B > 10,000 B"):
        build_firmware(ckpt, board, None, tmp_path, measure=False, write_artifact=False)


def test_missing_toolchain_and_qemu_say_what_to_install(built, tmp_path, monkeypatch):
    from tvm_build.mcu.build import build_firmware
    from tvm_build.mcu.firmware import ToolchainMissing
    from lcs.transport.launch import start_qemu

    ckpt, _ = built
    board = targets.load("mps2-an500")
    spec = {**board.extra["firmware"], "cc": "arm-none-eabi-gcc-not-here"}
    board = dataclasses.replace(board, extra={**board.extra, "firmware": spec})
    with pytest.raises(ToolchainMissing, match="apt-get install gcc-arm-none-eabi"):
        build_firmware(ckpt, board, None, tmp_path, measure=False, write_artifact=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainMissing, match="apt-get install qemu-system-arm"):
        start_qemu(tmp_path / "x.elf", targets.load("mps2-an500").extra["qemu"])


def test_in_kernel_switching_matches_torch_too(check_levels, built, tmp_path):
    """The low-RAM variant (weight transforms fused into the kernels) computes the same levels."""
    from tvm_build.mcu.build import build_firmware
    from lcs.transport.launch import start_host_sim

    ckpt, on_switch = built
    result = build_firmware(ckpt, "host-sim", None, tmp_path, samples=2, measure=False, write_artifact=False,
                            switching="in-kernel")
    assert result.switching == "in-kernel" and result.state_bytes < on_switch.state_bytes
    with start_host_sim(result.binary) as running, Device.open(running.url) as dev:
        dev.hello()
        check_levels(dev, result)


def test_structured_width_levels_run_with_their_own_kernels(check_levels, tiny_checkpoint, tmp_path):
    """Structured width: one kernel set and call list per width, one shared weight bank; narrower is cheaper."""
    from tvm_build.mcu.build import build_firmware
    from lcs.transport.launch import start_host_sim

    ckpt = tiny_checkpoint("structured")
    result = build_firmware(ckpt, "host-sim", [0.0, 0.5, 1.0], tmp_path, samples=2, measure=False,
                            write_artifact=False)
    assert [lv.width for lv in result.levels] == [0.25, 0.625, 1.0]
    with start_host_sim(result.binary) as running, Device.open(running.url) as dev:
        assert dev.hello().family == "structured"
        check_levels(dev, result)
