"""Vendor chips: the real firmware on QEMU's netduinoplus2 (STM32F405, STM32 USART), microbit (nRF51822, Cortex-M0,
16 KB RAM) and mps2-an505 (Cortex-M33); flashable .bin/.hex images holding exactly the ELF's loadable bytes (and QEMU
booting the .hex); `lcs flash` command lines for the real kits, and its one-line failures."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import threading
import time
import tty
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import targets
from lcs import protocol as P
from lcs.artifact import open_artifact
from lcs.cli import cli

QEMU_BOARDS = ["netduinoplus2", "microbit", "mps2-an505"]
REAL_KITS = ["nucleo-f446re", "stm32f4-discovery", "nucleo-u575zi", "microbit"]
LEVELS = "0.05,0.5,1"


def invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def _size(text: str) -> int:
    return int(text[:-1]) * {"K": 1024, "M": 1024 * 1024}[text[-1]] if text[-1] in "KM" else int(text, 0)


def test_vendor_board_files_agree_with_their_linker_regions():
    """Data only, but consistent: the linker regions are the budgets, every real kit names a pyOCD target and a
    serial port that only a probe-less QEMU machine lacks; no vendor chip reserves a RAM upload bank."""
    for name in [*QEMU_BOARDS[:2], *REAL_KITS[:3]]:
        board = targets.load(name)
        fw = board.extra["firmware"]
        assert (_size(fw["memory"]["ram_length"]), _size(fw["memory"]["flash_length"])) == \
               (board.ram_bytes, board.flash_bytes), name
        assert fw["upload_bank"] is False and board.kind == "mcu" and board.transport == "serial"
    for name in REAL_KITS:
        spec = targets.load(name).extra["flash"]
        assert spec["pyocd_target"] and spec["openocd"], name
    for name in QEMU_BOARDS:
        assert targets.load(name).extra["qemu"]["machine"] == name


def test_pack_targets_name_the_pack_to_install_and_builtin_targets_pass():
    from lcs.flash import FlashError, _check_pyocd_target
    from pyocd.target import TARGET

    _check_pyocd_target(targets.load("microbit").extra["flash"]["pyocd_target"], False)  # built into pyOCD
    for kit in REAL_KITS[:3]:
        name = targets.load(kit).extra["flash"]["pyocd_target"]
        if name in TARGET:
            continue
        try:
            _check_pyocd_target(name, True)
        except FlashError as exc:
            assert f"pyocd pack install {name}" in str(exc)


# -- the firmware in QEMU -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_path(train_tiny):
    """A small CNN at width 8 on the 8x8 digits, trained for one epoch (LCS+P, unstructured)."""
    return train_tiny("unstructured", "point", 8)


@pytest.fixture(scope="module")
def artifacts(checkpoint_path, tmp_path_factory):
    """`lcs build CKPT --target B` for every QEMU machine (built lazily, once per board)."""
    built = {}
    folder = tmp_path_factory.mktemp("vendor")

    def get(board: str) -> Path:
        if board not in built:
            out = folder / f"{board}.lcsa"
            result = invoke("build", checkpoint_path, "--target", board, "--levels", LEVELS, "-o", out,
                            "--no-progress")
            assert result.exit_code == 0, result.output
            built[board] = out
        return built[board]

    return get


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.qemu
@pytest.mark.parametrize("board", QEMU_BOARDS)
def test_build_then_deploy_sim_passes_every_level(board, artifacts):
    lcsa = artifacts(board)
    result = invoke("deploy", lcsa, "--sim", board, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["board"] == board
    assert [lv["passed"] for lv in report["levels"]] == [True, True, True]
    assert all(lv["infer_cycles"] > 10_000 for lv in report["levels"])
    spec = targets.load(board)
    assert report["ram_bytes"] <= spec.ram_bytes and report["flash_bytes"] <= spec.flash_bytes
    if spec.extra["firmware"]["upload_bank"]:
        assert report["uploaded_bytes"] > 0  # mps2-an505: SSRAM stands in for flash, a second bank takes uploads
    else:
        assert report["uploaded_bytes"] == 0 and "no spare weight bank" in report["upload_note"]
    manifest = open_artifact(lcsa).manifest
    assert manifest.firmware.precision == "int8"  # the default on microcontrollers: every level on integer kernels
    if board == "microbit":  # the whole model in the nRF51's 16 KB (stack reserve included)
        assert manifest.firmware.ram_bytes <= 16 * 1024


def _elf_loadable(elf: bytes) -> dict[int, int]:
    """address -> byte of every PT_LOAD segment's file contents, read here with pyelftools."""
    import io

    from elftools.elf.elffile import ELFFile

    out = {}
    for seg in ELFFile(io.BytesIO(elf)).iter_segments():
        if seg["p_type"] == "PT_LOAD":
            for i, b in enumerate(seg.data()[: seg["p_filesz"]]):
                out[seg["p_paddr"] + i] = b
    return out


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.qemu
@pytest.mark.parametrize("board", QEMU_BOARDS)
def test_images_hold_exactly_the_elf_loadable_bytes_and_qemu_boots_the_hex(board, artifacts, tmp_path):
    from intelhex import IntelHex

    from lcs.deploy import self_test
    from lcs.transport.board import SerialBoard
    from lcs.device import Device
    from lcs.transport.launch import start_qemu

    art = open_artifact(artifacts(board))
    fw = art.manifest.raw["firmware"]
    images = fw["images"]
    want = _elf_loadable(art.read(fw["binary"]))
    assert len(want) > 10_000
    hex_path = tmp_path / "firmware.hex"
    hex_path.write_bytes(art.read(images["hex"]))
    ih = IntelHex(str(hex_path))
    assert ih.todict() == want  # every loadable byte at its address, nothing else (no start record either)
    blob, base = art.read(images["bin"]), int(images["base"], 16)
    assert base == min(want) and len(blob) == max(want) - base + 1
    assert all(blob[a - base] == b for a, b in want.items())
    assert all(blob[i] == 0xFF for i in range(len(blob)) if base + i not in want)  # gaps: erased flash
    elf = tmp_path / "firmware.elf"
    elf.write_bytes(art.read(fw["binary"]))
    theirs = tmp_path / "objcopy.hex"  # the toolchain's own view of the same bytes
    subprocess.run(["arm-none-eabi-objcopy", "-O", "ihex", str(elf), str(theirs)], check=True)
    objcopy = {a: b for a, b in IntelHex(str(theirs)).todict().items() if isinstance(a, int)}
    assert all(want.get(a) == b for a, b in objcopy.items())  # objcopy writes sections: every byte of theirs is ours
    assert all(b == 0 for a, b in want.items() if a not in objcopy)  # what it leaves out: the zeros between sections
    # QEMU's generic loader puts the .hex at its addresses; the chip boots from its vector table and passes
    with start_qemu(hex_path, targets.load(board).extra["qemu"]) as running, Device.open(running.url) as dev:
        assert dev.hello().board == board
        assert all(check.passed for check in self_test(SerialBoard(dev, art, running.url), art))


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.qemu
def test_level_switches_under_faults_on_netduinoplus2(artifacts):
    """1 % of the bytes dropped, flipped or duplicated both ways between host and the STM32 USART: every answered
    switch reports the level asked for, the device's own counters agree, and after the faults the outputs of the
    last level equal the build's reference."""
    from lcs.device import Device, DeviceTimeout
    from lcs.transport.faults import FaultyPort
    from lcs.transport.launch import start_qemu

    art = open_artifact(artifacts("netduinoplus2"))
    timeouts = {c: 0.3 for c in P.COMMAND_NAMES}
    proxies = []
    rng = random.Random(5)
    with start_qemu(_elf(art), targets.load("netduinoplus2").extra["qemu"]) as running:
        dev = Device.open(running.url, retries=30, backoff=0.001, max_backoff=0.01, timeouts=timeouts,
                          port_wrapper=lambda port: proxies.append(FaultyPort(port, rate=0.01, seed=11)) or proxies[0])
        with dev:
            info = dev.hello()
            answered = lost = 0
            want = 0
            for _ in range(60):  # any switch is the point here (test_faults.py counts): 60 lose a few replies
                want = rng.randrange(info.levels)
                try:
                    active, _ = dev.set_level(index=want)
                    assert active == want
                    assert dev.stats()["level"] == want
                    answered += 1
                except DeviceTimeout as exc:
                    assert "no reply to" in str(exc)
                    lost += 1
            proxies[0].enabled = False
            assert proxies[0].counts.faults > 0.005 * proxies[0].counts.bytes and dev.retried > 0
            assert answered > 0.9 * (answered + lost)
            assert dev.stats()["repeats"] > 0  # lost replies were resent from the kept reply, not switched twice
            level = dev.set_level(index=want)[0]
            ref = art.reference()
            out, _ = dev.infer(ref["input"][0].reshape(-1).tolist())
            np.testing.assert_allclose(out, ref[f"level{level}"][0], atol=1e-4, rtol=0)


def _elf(art) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="lcs-test-")) / "firmware.elf"
    path.write_bytes(art.read(art.manifest.firmware.binary))
    return path


@pytest.mark.slow
@pytest.mark.tvm
def test_microbit_refuses_what_does_not_fit_with_the_numbers(tmp_path):
    """fp32 at width 16 needs more than 16 KB of RAM even with the weight transform inside the kernels."""
    from lcs import checkpoint
    from lcs.config import ModelConfig, RunConfig, SubspaceConfig

    mc, sc = ModelConfig(width=16, image_size=8), SubspaceConfig(family="unstructured", shape="point")
    path = checkpoint.save(tmp_path / "w16.safetensors", RunConfig(model=mc, subspace=sc),
                           checkpoint.build(RunConfig(model=mc, subspace=sc)))
    result = invoke("build", path, "--target", "microbit", "--fp32", "--levels", "1", "-o", tmp_path / "w16.lcsa",
                    "--no-progress")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])  # progress lines, then one error line
    for needle in ("does not fit microbit", "16,384 B RAM", "RAM", "B over"):
        assert needle in errors[0], errors[0]
    assert not (tmp_path / "w16.lcsa").exists()


# -- lcs flash --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kit_artifacts(checkpoint_path, artifacts, tmp_path_factory):
    """Build-only kits (no QEMU machine): the same model, compiled and linked for each; plus the micro:bit's."""
    from lcs import checkpoint
    from tvm_build.mcu.build import build_firmware

    ckpt = checkpoint.load(checkpoint_path)  # one model object: TVM lowers it once for all kits
    out = {"microbit": artifacts("microbit")}
    for kit in REAL_KITS[:3]:
        result = build_firmware(ckpt, kit, [0.05, 1.0], tmp_path_factory.mktemp(kit))
        assert result.cycles == []  # nothing to run it on here
        out[kit] = result.artifact
    return out


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.parametrize("kit", REAL_KITS)
def test_flash_dry_run_prints_the_pyocd_and_openocd_commands(kit, kit_artifacts, tmp_path, monkeypatch):
    from lcs.flash import _executable

    monkeypatch.setenv("LCS_CACHE_DIR", str(tmp_path / "cache"))
    lcsa = kit_artifacts[kit]
    art = open_artifact(lcsa)
    spec = targets.load(kit).extra["flash"]
    member = art.manifest.firmware.hex_image
    image = tmp_path / "cache" / "flash" / art.manifest.member_sha256(member)[:16] / "firmware.hex"
    result = invoke("flash", lcsa, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert shlex.join([_executable("pyocd"), "load", "--target", spec["pyocd_target"], "--format", "hex",
                       str(image)]) in lines
    assert lines[-1].endswith(f"lcs deploy {lcsa} --device <the probe's serial port>")
    result = invoke("flash", lcsa, "--dry-run", "--probe", "066DFF123", "--port", "/dev/ttyACM3")
    assert "--uid 066DFF123" in result.stdout and result.stdout.rstrip().endswith("--device /dev/ttyACM3")
    result = invoke("flash", lcsa, "--dry-run", "--tool", "openocd", "--probe", "066DFF123")
    configs = " ".join(f"-f {c}" for c in spec["openocd"])
    assert f"{configs} -c 'adapter serial 066DFF123' -c 'program {image} verify reset exit'" in result.stdout
    assert not image.exists()  # a dry run writes nothing


@pytest.mark.slow
@pytest.mark.tvm
def test_flash_fails_in_one_line_without_a_probe_or_an_image(one_line_error, kit_artifacts, artifacts, tmp_path, monkeypatch):
    from pyocd.core.helpers import ConnectHelper

    monkeypatch.setenv("LCS_CACHE_DIR", str(tmp_path / "cache"))
    # the case under test is "no probe": a probe plugged into this machine must not change the outcome
    monkeypatch.setattr(ConnectHelper, "get_all_connected_probes", staticmethod(lambda **kw: []))
    one_line_error(invoke("flash", kit_artifacts["nucleo-f446re"]), "no debug probe is attached")
    one_line_error(invoke("flash", kit_artifacts["microbit"], "--probe", "0240000034544e45"),
                   "no debug probe with unique ID '0240000034544e45'")
    one_line_error(invoke("flash", artifacts("netduinoplus2")), "no flash section",
                   "--sim netduinoplus2")
    one_line_error(invoke("flash", kit_artifacts["nucleo-f446re"], "--tool", "jlink"), "'jlink'")
    one_line_error(invoke("deploy", kit_artifacts["nucleo-f446re"], "--sim", "nucleo-f446re"), "no QEMU machine",
                   "lcs flash")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.tvm
def test_deploy_device_running_other_firmware_points_at_lcs_flash(one_line_error, kit_artifacts):
    """A board that prints its own banner and never speaks the protocol (say, the vendor's demo firmware)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    stop = threading.Event()

    os.set_blocking(master, False)

    def other_firmware():
        while not stop.is_set():
            try:
                os.write(master, b"Nucleo demo: press the blue button\r\n")
            except BlockingIOError:
                pass  # nobody reads: a real UART drops it too
            time.sleep(0.05)

    chatter = threading.Thread(target=other_firmware, daemon=True)
    chatter.start()
    lcsa = kit_artifacts["nucleo-f446re"]
    try:
        one_line_error(invoke("deploy", lcsa, "--device", os.ttyname(slave)), "no lcs firmware answered",
                       f"lcs flash {lcsa}")
    finally:
        stop.set()
        chatter.join()
        os.close(master)
        os.close(slave)


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.qemu
def test_flash_runs_the_printed_command_then_self_tests_on_the_port(one_line_error, artifacts, tmp_path, monkeypatch):
    """Everything but the USB: a stand-in `pyocd` executable on PATH records what it is asked to run, a probe is
    reported attached, and the micro:bit "on the other end of the port" is QEMU booting the artifact's .hex, the bytes
    handed to pyocd (checked). The command run is the one --dry-run printed; the self-test passes on every level."""
    import types

    from lcs import flash
    from lcs.transport.launch import start_qemu

    monkeypatch.setenv("LCS_CACHE_DIR", str(tmp_path / "cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "pyocd"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(flash, "_pyocd_probes", lambda probe: [types.SimpleNamespace(unique_id="9900MICROBIT")])
    lcsa = artifacts("microbit")
    printed = invoke("flash", lcsa, "--dry-run", "--probe", "9900MICROBIT").stdout.splitlines()[1]
    art = open_artifact(lcsa)
    plan = flash.flash_plan(art, probe="9900MICROBIT")
    with start_qemu(_hex_copy(art, tmp_path), targets.load("microbit").extra["qemu"]) as running:
        result = invoke("flash", lcsa, "--port", running.url, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    assert shlex.join([str(fake), *calls.read_text().splitlines()]) == printed
    assert plan.image_path.read_bytes() == art.read(art.manifest.firmware.hex_image)
    report = json.loads(result.stdout)
    assert report["passed"] and [lv["passed"] for lv in report["levels"]] == [True, True, True]
    assert "flashed firmware/firmware.hex to microbit with pyocd (probe 9900MICROBIT)" in result.stderr
    # the tool's own failure comes back as one line
    fake.write_text("#!/bin/sh\necho '0001234 E No ST-Link USB device found [__main__]' >&2\nexit 1\n")
    one_line_error(invoke("flash", lcsa, "--port", "loop://"), "pyocd failed (exit 1)", "No ST-Link")


def _hex_copy(art, tmp_path) -> Path:
    path = tmp_path / "board.hex"
    path.write_bytes(art.read(art.manifest.firmware.hex_image))
    return path
