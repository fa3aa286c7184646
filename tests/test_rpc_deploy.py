"""TVM RPC to Linux boards: `lcs deploy --rpc/--tracker` and `lcs simulate --rpc` against a real local TVM RPC server
and a real tracker with a keyed server; bad input as one line; the transport's pieces as fast unit tests."""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lcs.cli import cli
from lcs.errors import ConfigError
from lcs.transport import rpc as R

HEADER = "t_s,battery_pct,cpu_load,power_budget_mw"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def fast_connect(monkeypatch):
    monkeypatch.setattr(R, "CONNECT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(R, "BACKOFF_S", 0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fast: options, units, confirmation -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["localhost", "host:port", ":9090", "10.0.0.1:99999", "10.0.0.1:", ""])
def test_parse_address_rejects_malformed(text):
    with pytest.raises(ConfigError, match="wants HOST:PORT"):
        R.parse_address(text, "--rpc")


def test_parse_address_accepts_names_and_ipv6():
    assert R.parse_address("pi4.local:9090", "--rpc") == ("pi4.local", 9090)
    assert R.parse_address("[::1]:9190", "--tracker") == ("::1", 9190)


@pytest.mark.parametrize("args,message", [
    (["--rpc", "localhost"], "--rpc wants HOST:PORT"),
    (["--tracker", "10.0.0.1"], "--tracker needs --key"),
    (["--tracker", "nohost", "--key", "host"], "--tracker wants HOST:PORT"),
    (["--rpc", "127.0.0.1:9090", "--tracker", "127.0.0.1:9190", "--key", "host"], "either --rpc"),
    (["--rpc", "127.0.0.1:9090", "--sim", "host-sim"], "give exactly one of"),
    (["--key", "host", "--sim", "host-sim"], "give exactly one of"),
])
def test_deploy_bad_rpc_options_fail_before_anything_else(one_line_error, tmp_path, args, message):
    # the artifact does not even exist: options are checked first
    one_line_error(run("deploy", tmp_path / "none.lcsa", *args), message)


def test_simulate_rpc_needs_an_artifact_and_one_source(one_line_error, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text(f"{HEADER}\n0,90,0.1,10\n1,90,0.1,10\n")
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"target": {"name": "host"}, "levels": [
        {"index": 0, "alpha": 1.0, "accuracy": 0.9, "latency_ms": 1.0}]}))
    base = ["simulate", "--trace", trace, "--profile", profile, "--out", tmp_path / "o"]
    one_line_error(run(*base, "--rpc", "127.0.0.1:9090"), "--rpc runs the CPU build inside an artifact")
    one_line_error(run(*base, "--rpc", "127.0.0.1:9090", "--device", "loop://"), "give at most one of")
    one_line_error(run(*base, "--rpc", "nohost"), "--rpc wants HOST:PORT")
    assert not (tmp_path / "o").exists()


def test_tick_rate_is_the_clients_own_or_the_boards_clock():
    from lcs.simulate.hardware import HardwareError, tick_rate

    class Cycles:
        pass

    class Nanoseconds:
        tick_hz = 1e9

    assert tick_rate(Cycles(), 48e6) == 48e6
    assert tick_rate(Nanoseconds(), 2.5e9) == 1e9  # a host CPU's clock does not turn RPC nanoseconds into time
    with pytest.raises(HardwareError, match="clock_hz"):
        tick_rate(Cycles(), 0)


def test_device_executor_turns_rpc_nanoseconds_into_ms():
    from lcs.simulate.hardware import DeviceExecutor
    from lcs.simulate.model import Option
    from lcs.simulate.profile import LevelSpec

    class Board:
        tick_hz = 1e9

        def hello(self):
            from lcs.transport.board import RuntimeHello

            return RuntimeHello("host", 2, 3, 2)

        def set_level(self, *, index):
            return index, 2_000

        def infer(self, values):
            return [0.0, 1.0], 250_000  # 0.25 ms

    option = Option(LevelSpec(1, 1.0, "dense", 0.9, latency_ms=0.2), latency_ms=0.2, power_mw=1.0,
                    energy_per_inference_mj=0.2, rate_hz=10.0, meets_deadline=True)
    executor = DeviceExecutor(Board(), clock_hz=2.5e9, level_indices=[0, 1], source="device:test")
    executor.set_level(option)
    assert executor.infer(option).device_latency_ms == pytest.approx(0.25)
    assert executor.switch_ms == [pytest.approx(0.002)]


class FakeSession:
    """Records uploads; downloads return what was uploaded, or `tampered` bytes for one file."""

    def __init__(self, tampered: dict[str, bytes] | None = None):
        self.files: dict[str, bytes] = {}
        self.uploads: list[str] = []
        self.tampered = tampered or {}

    def upload(self, data, target=None):
        name = target or Path(data).name
        self.files[name] = bytes(data) if isinstance(data, bytearray) else Path(data).read_bytes()
        self.uploads.append(name)

    def download(self, name):
        return bytearray(self.tampered.get(name, self.files[name]))

    def cpu(self):
        return "remote-cpu"


def test_held_files_skip_only_the_confirmed_copy(tmp_path):
    from lcs.artifact import sha256

    lib = tmp_path / "lib_module0.so"
    lib.write_bytes(b"confirmed")
    session = FakeSession()
    held = R.HeldFiles(session, {"lib_module0.so": sha256(b"confirmed")})
    held.upload(str(lib))
    assert session.uploads == []  # the board already holds these bytes
    lib.write_bytes(b"changed since")
    held.upload(str(lib))
    assert session.uploads == ["lib_module0.so"]
    assert held.cpu() == "remote-cpu"  # everything else passes through


def test_a_file_the_board_holds_differently_is_refused(tmp_path):
    from lcs import artifact as A
    from lcs.transport.board import BoardError, confirm_held

    manifest = A.new_manifest(kind="cpu", target={"name": "host"}, levels=[], input={"shape": [1], "dtype": "float32"},
                              output={"shape": [1], "dtype": "float32"})
    art = A.open_artifact(A.write_artifact(tmp_path / "x.lcsa", manifest, {"lib/m.so": b"good bytes"}))
    session = FakeSession(tampered={"lib_m.so": b"good bytez"})
    session.upload(bytearray(b"good bytes"), "lib_m.so")
    with pytest.raises(BoardError, match="holds lib_m.so with sha256 .* the upload was corrupted"):
        confirm_held(session, art, {"lib/m.so": "lib_m.so"}, "rpc:test")
    assert confirm_held(FakeSession(), art, {}, "rpc:test") == {}


@pytest.mark.tvm  # the probe uses tvm.rpc's handshake constants
def test_unreachable_and_silent_ports_fail_fast(fast_connect):
    closed = free_port()
    started = time.perf_counter()
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        where = R.Endpoint(rpc=f"127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(R.RpcError, match=r"after 3 attempts \(the port accepted a connection but said nothing "
                                             r"within 0.3 s\)"):
            R.connect(where)
        with pytest.raises(R.RpcError, match="a board through the tracker .* said nothing"):
            R.connect(R.Endpoint(tracker=where.rpc, key="host"))
    with pytest.raises(R.RpcError, match=f"cannot reach the board over RPC at 127.0.0.1:{closed} after 3 attempts "
                                         r"\(\[Errno 111\] Connection refused\)"):
        R.connect(R.Endpoint(rpc=f"127.0.0.1:{closed}"))
    # TVM's own clients would block for minutes here (OS connect timeout, 60 s tracker retry, no read timeout)
    assert time.perf_counter() - started < 20


@pytest.mark.tvm
def test_a_service_that_is_not_tvm_rpc(fast_connect):
    import threading

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(8)

        def answer_http():
            for _ in range(2):
                conn, _ = other.accept()
                with conn:
                    conn.recv(64)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(R.RpcError, match="answers, but not as a TVM RPC server"):
            R.connect(R.Endpoint(rpc=address))
        with pytest.raises(R.RpcError, match="answers, but not as a TVM RPC tracker"):
            R.connect(R.Endpoint(tracker=address, key="host"))


# -- real TVM: a tiny host build, a local RPC server, a tracker with a keyed server ---------------------------

@pytest.fixture(scope="module")
def host_lcsa(tiny_build):
    """A tiny unstructured subspace on digits (width 4, one epoch), built for the host with two levels."""
    return tiny_build("host", "unstructured", "keep=0.1,1.0")


@pytest.fixture(scope="module")
def rpc_server():
    import tvm.rpc

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVM_NUM_THREADS", "1")  # the server's worker inherits it: the machine is shared
        server = tvm.rpc.Server(host="127.0.0.1", port=9590, port_end=9690)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def tracker():
    """A real tracker and one server registered with it under the key 'host'."""
    import tvm.rpc
    import tvm.rpc.tracker

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVM_NUM_THREADS", "1")
        trk = tvm.rpc.tracker.Tracker(host="127.0.0.1", port=9690, port_end=9790, silent=True)
        server = tvm.rpc.Server(host="127.0.0.1", port=9790, port_end=9890, tracker_addr=("127.0.0.1", trk.port),
                                key="host")
    try:
        deadline = time.monotonic() + 30
        while True:  # the server registers a moment after it starts
            summary = tvm.rpc.connect_tracker("127.0.0.1", trk.port).summary()
            if summary["queue_info"].get("host", {}).get("free"):
                break
            assert time.monotonic() < deadline, summary
            time.sleep(0.2)
        yield f"127.0.0.1:{trk.port}"
    finally:
        server.terminate()
        trk.terminate()


@pytest.mark.tvm
@pytest.mark.slow
def test_deploy_over_rpc_confirms_self_tests_and_profiles(host_lcsa, rpc_server):
    from lcs.artifact import open_artifact

    result = run("deploy", host_lcsa, "--rpc", rpc_server, "--no-progress")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"host via rpc:{rpc_server}: the board holds 3 file(s) whose sha256 match" in out
    assert re.search(r"uploaded \d+ bytes in [\d.]+ s \([\d.]+ KiB/s effective\)", out), out
    assert out.count("pass") == 2 and "time_evaluator on the board" in out

    result = run("deploy", host_lcsa, "--rpc", rpc_server, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    art = open_artifact(host_lcsa)
    members = art.manifest.raw["members"]
    shipped = ["lib/module0.so", "weights/level0.npz", "weights/level1.npz"]
    # what the board sent back hashes to the manifest's sha256 of every library and weight set
    assert report["held"] == {m.replace("/", "_"): members[m]["sha256"] for m in shipped}
    assert report["uploaded_bytes"] == sum(members[m]["size"] for m in shipped) and report["upload_s"] > 0
    assert report["passed"] and report["connection"] == f"rpc:{rpc_server}" and report["board"] == "host"
    for lv, level in zip(report["levels"], art.levels):
        assert lv["passed"] and lv["samples"] == len(art.reference()["input"])
        assert lv["max_abs_error"] <= lv["tolerance"] == art.manifest.raw["verification"]["atol"]
        # the shared self-test reads RPC ticks as nanoseconds (tick_hz), never as board cycles; the switch is timed
        assert lv["latency_ms"] > 0 and lv["switch_ms"] > 0
        assert lv["infer_cycles"] is None and lv["switch_cycles"] is None
        assert lv["library_bytes"] == members[level.library]["size"]
        assert lv["weights_bytes"] == members[level.weights]["size"]


@pytest.mark.tvm
@pytest.mark.slow
def test_deploy_through_the_tracker(host_lcsa, tracker):
    result = run("deploy", host_lcsa, "--tracker", tracker, "--key", "host", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"via tracker:{tracker} key host" in result.stdout and result.stdout.count("pass") == 2
    assert re.search(r"uploaded \d+ bytes in [\d.]+ s \([\d.]+ KiB/s effective\)", result.stdout)


@pytest.mark.tvm
def test_unknown_key_at_the_tracker_lists_the_known_ones(one_line_error, host_lcsa, tracker):
    started = time.perf_counter()
    one_line_error(run("deploy", host_lcsa, "--tracker", tracker, "--key", "pi-zero"),
                   f"the tracker at {tracker} knows no board with key 'pi-zero' (keys: host)")
    assert time.perf_counter() - started < 20  # TVM's tracker would queue the request forever


@pytest.mark.tvm
def test_unknown_key_in_a_real_process(host_lcsa, tracker):
    """The same refusal from `python -m lcs` itself: exit code 2, one line on stderr, no TVM noise."""
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "lcs", "deploy", str(host_lcsa), "--tracker", tracker, "--key",
                           "pi-zero"], capture_output=True, text=True, cwd=root, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: the tracker at {tracker} knows no board with key 'pi-zero' "
                                        f"(keys: host)"], proc.stderr


@pytest.mark.tvm
def test_a_key_naming_another_board_is_refused_before_connecting(one_line_error, host_lcsa):
    # port 1: nothing listens there, so the refusal must come from the artifact check
    one_line_error(run("deploy", host_lcsa, "--tracker", "127.0.0.1:1", "--key", "rasp4"),
                   "tracker key 'rasp4' is a rasp4 board", "is for 'host'")


@pytest.mark.tvm
def test_firmware_is_not_for_rpc(one_line_error, host_lcsa, tmp_path):
    from lcs import artifact as A

    art = A.open_artifact(host_lcsa)
    firmware = {"binary": art.levels[0].library, "weights": art.levels[0].weights}  # what a firmware build declares
    manifest = {**art.manifest.raw, "kind": "firmware", "strategy": "firmware", "firmware": firmware}
    fw = A.write_artifact(tmp_path / "fw.lcsa", manifest, {m: art.read(m) for m in art.members()})
    one_line_error(run("deploy", fw, "--rpc", "127.0.0.1:1"), "is firmware for 'host', not a CPU build")


@pytest.mark.tvm
def test_unreachable_board_with_a_real_artifact(one_line_error, host_lcsa, fast_connect, tmp_path):
    one_line_error(run("deploy", host_lcsa, "--rpc", f"127.0.0.1:{free_port()}"),
                   "cannot reach the board over RPC", "after 3 attempts", "Connection refused")
    trace = tmp_path / "t.csv"
    trace.write_text(f"{HEADER}\n0,90,0.1,1000\n1,90,0.1,1000\n")
    one_line_error(run("simulate", "--trace", trace, "--artifact", host_lcsa, "--tracker", f"127.0.0.1:{free_port()}",
                       "--key", "host", "--out", tmp_path / "o"),
                   "cannot reach a board through the tracker over RPC")
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.tvm
@pytest.mark.slow
def test_a_wrong_answer_on_the_board_fails_the_self_test(one_line_error, host_lcsa, rpc_server, tmp_path):
    """Reference outputs of level 1 shifted by 1e-3 (above the build's 1e-4): the board's real outputs no longer match."""
    from lcs import artifact as A

    art = A.open_artifact(host_lcsa)
    reference = art.reference()
    reference["level1"] = reference["level1"] + np.float32(1e-3)
    members = {m: art.read(m) for m in art.members()}
    members["reference.npz"] = A.npz_bytes(reference)
    shifted = A.write_artifact(tmp_path / "shifted.lcsa", art.manifest, members)
    result = run("deploy", shifted, "--rpc", rpc_server, "--no-progress")
    one_line_error(result, "self-test failed on level(s) 1 (level 1: max |error| 0.001")
    assert "FAIL" in result.stdout and result.stdout.count("pass") == 1, result.stdout  # the table still shows it


@pytest.mark.tvm
@pytest.mark.slow
def test_library_for_another_architecture(one_line_error, host_lcsa, rpc_server, tmp_path):
    """The artifact's library swapped for a real aarch64 shared object: the x86 board cannot load it."""
    from lcs import artifact as A

    gcc = shutil.which("aarch64-linux-gnu-gcc")
    assert gcc, "aarch64-linux-gnu-gcc is missing: apt-get install gcc-aarch64-linux-gnu (scripts/setup.sh)"
    (tmp_path / "f.c").write_text("int lcs_probe(void) { return 7; }\n")
    subprocess.run([gcc, "-shared", "-fPIC", "-o", tmp_path / "f.so", tmp_path / "f.c"], check=True)
    art = A.open_artifact(host_lcsa)
    members = {m: art.read(m) for m in art.members()}
    members["lib/module0.so"] = (tmp_path / "f.so").read_bytes()
    other = A.write_artifact(tmp_path / "arm.lcsa", art.manifest, members)
    line = one_line_error(run("deploy", other, "--rpc", rpc_server, "--no-progress"),
                          f"the board at rpc:{rpc_server} cannot run", "built for 'host'")
    assert "lib/module0.so" in line


@pytest.mark.tvm
@pytest.mark.slow
def test_simulate_hardware_in_the_loop_over_rpc(host_lcsa, rpc_server, tmp_path):
    from lcs import simulate
    from lcs.artifact import open_artifact

    levels = open_artifact(host_lcsa).levels
    probe = tmp_path / "probe.csv"
    probe.write_text(f"{HEADER}\n0,90,0.0,1000\n1,90,0.0,1000\n")
    power = simulate.simulate(probe, artifact=host_lcsa).summary["level_power_mw"]  # model only: what each costs
    cheap, dear = sorted(levels, key=lambda lv: power[lv.label])
    assert power[cheap.label] < power[dear.label], power
    # synthetic accuracies rising with cost: the policy runs the dearer level whenever the budget allows it
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"model": "lcs", "alpha": lv.alpha, "accuracy": 0.7 + 0.1 * rank}
                                   for rank, lv in enumerate((cheap, dear))]))
    hi, lo = power[dear.label] * 1.01, (power[cheap.label] + power[dear.label]) / 2
    budgets = [hi, hi, lo, lo, hi, 0.0]
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "\n" + "".join(f"{i},90,0.0,{b}\n" for i, b in enumerate(budgets)))
    out = tmp_path / "out"
    result = run("simulate", "--trace", trace, "--artifact", host_lcsa, "--accuracy", results, "--rpc", rpc_server,
                 "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"] == f"device:rpc:{rpc_server}" and summary["board"] == "host"
    assert summary["device_inferences"] == summary["run_steps"] == 5
    assert summary["reference_disagreements"] == 0  # the board predicts what torch predicted at each level
    assert summary["switches"] == 2 and summary["device_switches"] == 3  # the first set-level loads
    with open(out / "timeline.csv") as f:
        rows = list(csv.DictReader(f))
    d, c = str(dear.index), str(cheap.index)
    assert [r["level"] for r in rows] == [d, d, c, c, d, ""] and rows[-1]["state"] == "idle"
    for r in rows:
        if r["state"] == "run":
            # nanoseconds from the board's time_evaluator, in ms: a tiny CNN runs in well under 100 ms
            assert 0 < float(r["device_latency_ms"]) < 100 and r["output"] != ""
        else:
            assert r["device_latency_ms"] == ""
    assert (out / "timeline.png").is_file()


@pytest.mark.tvm
@pytest.mark.slow
def test_rpc_board_reports_the_device_time(host_lcsa, rpc_server):
    """RpcBoard's infer: the outputs of the level and a time measured on the board, in ticks of 1 ns."""
    from lcs.artifact import open_artifact
    from lcs.transport.board import Where, open_board

    art = open_artifact(host_lcsa)
    ref = art.reference()
    with open_board(host_lcsa, Where.from_options(rpc=rpc_server)) as client:
        assert client.tick_hz == 1e9
        hello = client.hello()
        assert (hello.levels, hello.input_len, hello.output_len) == (2, ref["input"][0].size, ref["level0"][0].size)
        for index in (1, 0):
            assert client.set_level(index=index)[0] == index
            outputs, ns = client.infer(ref["input"][0].reshape(-1).tolist())
            np.testing.assert_allclose(outputs, ref[f"level{index}"][0].reshape(-1), atol=1e-4, rtol=0)
            assert 0 < ns < 1e8


@pytest.mark.tvm
def test_a_server_busy_with_another_session(one_line_error, host_lcsa, rpc_server, fast_connect):
    """TVM's RPC server serves one session at a time: a second client gets a clear one-line answer, and the server is
    usable again once the first session ends."""
    import gc

    holder = R.connect(R.Endpoint(rpc=rpc_server))
    try:
        one_line_error(run("deploy", host_lcsa, "--rpc", rpc_server, "--no-progress"),
                       f"cannot reach the board over RPC at {rpc_server}", "another client's session")
    finally:
        holder.session = None
        gc.collect()
    link = R.connect(R.Endpoint(rpc=rpc_server), connect_timeout=5.0, attempts=5)
    link.session.upload(bytearray(b"usable again"), "probe.txt")  # the server serves this session: a round trip
    assert bytes(link.session.download("probe.txt")) == b"usable again"
    link.session = None
