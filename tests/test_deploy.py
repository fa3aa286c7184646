"""lcs deploy: upload, confirmation, self-test and profile on the real host-sim firmware; bad input as one line."""

from __future__ import annotations

import json
import os
import re
import tty

import pytest
from click.testing import CliRunner

from lcs.cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.tvm]


def run(*args):
    return CliRunner().invoke(cli, ["deploy", *map(str, args)])


def test_deploy_on_sim_uploads_confirms_and_self_tests(hostsim_artifact):
    from lcs import protocol as P
    from lcs.artifact import open_artifact

    lcsa, _ = hostsim_artifact
    art = open_artifact(lcsa)
    weights = art.read("firmware/weights.bin")
    result = run(lcsa, "--sim", "host-sim", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["board"] == "host-sim"
    assert report["uploaded_bytes"] == len(weights) and report["upload_s"] > 0
    assert report["weights_crc"] == f"{P.crc32(weights):08x}"
    assert re.fullmatch(r"[0-9a-f]{32}", report["model_hash"])
    assert [lv["index"] for lv in report["levels"]] == [0, 1, 2]
    for lv in report["levels"]:
        assert lv["passed"] and lv["samples"] == 2 and lv["max_abs_error"] <= lv["tolerance"]
        assert lv["infer_cycles"] > 0 and lv["latency_ms"] > 0
    assert report["flash_bytes"] > 0 and report["ram_bytes"] > 0


def test_deploy_table_closing_line_and_trace_io(hostsim_artifact):
    from lcs.transport.launch import start_host_sim

    lcsa, binary = hostsim_artifact
    with start_host_sim(binary) as running:
        result = run(lcsa, "--device", running.url, "--trace-io", "--no-progress")
    assert result.exit_code == 0, result.output
    assert re.search(r"uploaded \d+ bytes in [\d.]+ s \([\d.]+ KiB/s effective\)", result.stdout), result.stdout
    assert "self-test and profile per level" in result.stdout and result.stdout.count("pass") == 3
    frames = [line for line in result.stderr.splitlines() if re.match(r"\[\s*\d+\.\d{6}\] (->|<-) ", line)]
    sent = [f for f in frames if "] -> " in f and f.split("B  ", 1)[1].startswith("a5 5a")]  # not a resync flush
    received = [f for f in frames if "] <- " in f]
    # every request is answered; each dump is the whole frame, starting with the sync bytes
    assert len(sent) == len(received) > 3 + 2 * 3
    assert all(f.split("B  ", 1)[1].startswith("a5 5a") for f in received)


def test_artifact_for_another_board(one_line_error, hostsim_artifact):
    lcsa, _ = hostsim_artifact
    one_line_error(run(lcsa, "--sim", "mps2-an500"), "built for target 'host-sim', not 'mps2-an500'")


def test_device_that_reports_another_board(one_line_error, hostsim_artifact, tmp_path):
    """--device: the board name comes from the device's HELLO and must match the artifact's target."""
    from lcs import artifact as A
    from lcs.transport.launch import start_host_sim

    lcsa, binary = hostsim_artifact
    art = A.open_artifact(lcsa)
    manifest = {**art.manifest.raw, "target": {**art.manifest.raw["target"], "name": "mps2-an386"}}
    other = A.write_artifact(tmp_path / "other.lcsa", manifest, {m: art.read(m) for m in art.members()})
    with start_host_sim(binary) as running:
        one_line_error(run(other, "--device", running.url), "device is a 'host-sim' board",
                       "built for 'mps2-an386'")


def test_port_that_does_not_exist(one_line_error, hostsim_artifact, tmp_path):
    lcsa, _ = hostsim_artifact
    one_line_error(run(lcsa, "--device", tmp_path / "ttyNOPE"), "ttyNOPE: no such port")


def test_port_that_is_busy(one_line_error, hostsim_artifact):
    import serial

    from lcs.transport.launch import start_host_sim

    lcsa, binary = hostsim_artifact
    with start_host_sim(binary) as running:
        holder = serial.serial_for_url(running.url, exclusive=True)
        try:
            one_line_error(run(lcsa, "--device", running.url), "port is busy")
        finally:
            holder.close()


def test_device_that_never_answers(one_line_error, hostsim_artifact):
    lcsa, _ = hostsim_artifact
    master, slave = os.openpty()  # a port nobody serves
    tty.setraw(slave)
    try:
        one_line_error(run(lcsa, "--device", os.ttyname(slave)), "no reply to hello after 3 attempts")
    finally:
        os.close(master)
        os.close(slave)


def test_corrupt_artifact_and_rpc_and_missing_connection(one_line_error, hostsim_artifact, tmp_path):
    lcsa, _ = hostsim_artifact
    broken = tmp_path / "broken.lcsa"
    data = bytearray(lcsa.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    one_line_error(run(broken, "--sim", "host-sim"), "broken.lcsa")
    one_line_error(run(lcsa, "--rpc", "127.0.0.1:9090"), "is firmware for 'host-sim', not a CPU build")
    one_line_error(run(lcsa), "give exactly one of --device URL, --sim BOARD, --rpc HOST:PORT")


@pytest.mark.qemu
def test_deploy_on_a_qemu_board(train_tiny, tmp_path):
    """The same model as hostsim_artifact built for an emulated Cortex-M7 board: QEMU started by --sim, upload over
    its UART."""
    from tvm_build.mcu.build import build_firmware

    checkpoint = train_tiny("unstructured", "point", 8)
    build = build_firmware(checkpoint, "mps2-an500", [0.05, 1.0], tmp_path / "an500")
    result = run(build.artifact, "--sim", "mps2-an500", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["board"] == "mps2-an500" and report["uploaded_bytes"] > 0
    assert [lv["passed"] for lv in report["levels"]] == [True, True]
    # cycles from the board's SysTick under QEMU's instruction counting: the dense level is not free
    assert all(lv["infer_cycles"] > 1000 for lv in report["levels"])
