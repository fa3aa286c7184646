"""`lcs deploy`: put an artifact's model on a board and prove it works there.

    report = deploy("build/host-sim.lcsa", sim="host-sim")          # starts the firmware on a pty itself
    report = deploy("build/an500.lcsa", device="/dev/ttyACM0")      # a board that already runs the firmware
    report = deploy("build/rasp4.lcsa", rpc="192.168.1.20:9090")    # a Linux board running TVM's RPC server
    report = deploy("build/rasp4.lcsa", tracker="10.0.0.1:9190", key="rasp4")   # a free board from a tracker

Serial boards (`--device`, `--sim`; firmware builds): verify the artifact (sha256 of every member) and that it was
built for this board -> connect (the host speaks
first: HELLO) -> check the device runs this model's shape (levels, input and output sizes, board name) -> upload the
weight set in chunks (progress bar, closing line with bytes, seconds and throughput) when the board has a spare weight
bank -> have the device confirm what it holds (weights CRC, model hash) -> per level: set the level and run every
reference input, comparing with the outputs the build stored -> a per-level profile (switch and inference time from
the device's cycle counter, flash/RAM from the build).

Linux boards over TVM RPC (`--rpc HOST:PORT`, or `--tracker HOST:PORT --key K`; connecting lives in
`lcs/transport/rpc.py`) take CPU builds (per-level, weights-as-input, alpha-input): verify the artifact (sha256 of
every member; a CPU build, not firmware; a tracker key that names a board in targets/ must be the artifact's target)
-> connect -> upload every library and weight set into the session's folder on the board (progress bar, the same
closing line) -> the board sends every uploaded file back and its sha256 must match the manifest -> load the
libraries the board holds into a resident `lcs.runtime.Runtime` (a library for another architecture fails here) ->
per level: every reference input against the stored outputs (the build's tolerance) -> a per-level profile: latency
timed on the board by TVM's time_evaluator, the switch time (host-side: levels are resident, nothing moves), and the
library and weight sizes. TVM's RPC server keeps uploads for the session only: the deploy proves the artifact runs
there; `lcs simulate --rpc` and your own `Runtime(..., session=...)` use the board the same way.

Torch-free.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from lcs import protocol as P
from lcs.artifact import Artifact, ArtifactError, open_artifact
from lcs.errors import LcsError

CONNECT_TIMEOUT_S = 2.0


class DeployError(LcsError):
    """The device does not hold or run what the artifact says."""


@dataclass
class LevelCheck:
    index: int
    alpha: float
    label: str
    samples: int
    max_abs_error: float
    tolerance: float
    agree: bool  # the predicted class matches the reference on every sample
    infer_cycles: int | None  # the device's own counter (serial firmware); None over RPC (timed in ms directly)
    switch_cycles: int | None
    latency_ms: float
    switch_ms: float
    library_bytes: int | None = None  # CPU builds: the level's library and weight set in the artifact
    weights_bytes: int | None = None

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance and self.agree


@dataclass
class DeployReport:
    artifact: str
    board: str
    connection: str
    firmware_version: str
    model_hash: str
    weights_crc: str
    uploaded_bytes: int = 0
    upload_s: float = 0.0
    upload_note: str = ""
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    retries: int = 0
    levels: list[LevelCheck] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # RPC: file on the board -> sha256 of what it sent back

    @property
    def throughput_kib_s(self) -> float | None:
        return self.uploaded_bytes / 1024 / self.upload_s if self.uploaded_bytes and self.upload_s > 0 else None

    @property
    def passed(self) -> bool:
        return bool(self.levels) and all(lv.passed for lv in self.levels)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "board": self.board, "connection": self.connection,
                "firmware_version": self.firmware_version, "model_hash": self.model_hash,
                "weights_crc": self.weights_crc, "uploaded_bytes": self.uploaded_bytes,
                "upload_s": round(self.upload_s, 4), "upload_kib_s": self.throughput_kib_s,
                "upload_note": self.upload_note, "flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes,
                "retries": self.retries, "passed": self.passed, "held": self.held,
                "levels": [{**lv.__dict__, "passed": lv.passed} for lv in self.levels]}


def level_tolerance(level: dict) -> float:
    """fp32 levels agree with torch to float rounding; quantized levels may land one activation step away where
    a value sits on a grid boundary (see tests/test_firmware_hostsim.py)."""
    return 1e-4 if level.get("bits") is None else 2e-3


def deploy(artifact_path: str | Path, *, device: str | None = None, sim: str | None = None, rpc: str | None = None,
           tracker: str | None = None, key: str | None = None, trace_io: bool = False, progress: bool = True,
           console=None, device_options: dict | None = None, rpc_options: dict | None = None) -> DeployReport:
    """Deploy and self-test; raises DeployError if the device's answers do not match the artifact."""
    if sum(x is not None for x in (device, sim, rpc or tracker)) != 1 or (key is not None and tracker is None):
        raise LcsError("give exactly one of --device URL, --sim BOARD, --rpc HOST:PORT, --tracker HOST:PORT --key K")
    if rpc is not None or tracker is not None:
        if trace_io:
            raise LcsError("--trace-io dumps serial frames; TVM RPC has no lcs frames to show")
        return deploy_rpc(artifact_path, rpc=rpc, tracker=tracker, key=key, progress=progress, console=console,
                          **(rpc_options or {}))
    art = open_artifact(artifact_path, expect_target=sim)
    firmware = art.manifest.get("firmware")
    if not isinstance(firmware, dict) or firmware.get("weights") not in art.members():
        raise ArtifactError(f"{artifact_path} is a {art.manifest.get('strategy')!r} build for "
                            f"{art.target_name!r}, not firmware; serial deploy needs an MCU or host-sim build")
    board = sim or art.target_name
    with _connected(artifact_path, device, sim) as url:
        from lcs.device import Device, hexdump_tracer

        trace = hexdump_tracer() if trace_io else None
        options = {"connect_timeout": CONNECT_TIMEOUT_S, "exclusive": True, **(device_options or {})}
        with Device.open(url, trace=trace, **options) as dev:
            return _deploy_on(dev, art, board, f"sim:{sim}" if sim else url, progress, console)


@contextlib.contextmanager
def _connected(artifact_path, device: str | None, sim: str | None) -> Iterator[str]:
    if sim is None:
        yield device
        return
    from lcs.transport.launch import started_firmware

    with started_firmware(artifact_path, sim) as url:
        yield url


def _deploy_on(dev, art: Artifact, board: str, connection: str, progress: bool, console) -> DeployReport:
    info = dev.hello()
    _check_shape(info, art, board)
    weights = art.read(art.manifest["firmware"]["weights"])
    firmware = art.manifest["firmware"]
    report = DeployReport(str(art.path), board, connection, info.firmware_version, info.model_hash,
                          f"{info.weights_crc:08x}", flash_bytes=firmware.get("flash_bytes"),
                          ram_bytes=firmware.get("ram_bytes"))
    if len(weights) != info.weight_bytes:
        raise DeployError(f"the device holds a {info.weight_bytes}-byte weight set; the artifact's is "
                          f"{len(weights)} bytes: it runs another model (flash the firmware from this artifact)")
    _upload(dev, weights, report, progress, console)
    held = dev.hello()
    if held.weights_crc != P.crc32(weights):
        raise DeployError(f"the device runs weights with CRC {held.weights_crc:08x}, the artifact's have "
                          f"{P.crc32(weights):08x}")
    report.weights_crc, report.model_hash = f"{held.weights_crc:08x}", held.model_hash
    report.levels = self_test(dev, art)
    report.retries = dev.retried
    return report


def _check_shape(info: P.Hello, art: Artifact, board: str) -> None:
    if info.board and info.board != board:
        raise DeployError(f"the device is a {info.board!r} board; {art.path} was built for {board!r}")
    in_len = int(np.prod(art.manifest["input"]["shape"]))
    out_len = int(np.prod(art.manifest["output"]["shape"]))
    want = (len(art.levels), in_len, out_len)
    have = (info.levels, info.input_len, info.output_len)
    if have != want:
        raise DeployError(f"the device runs a model with {have[0]} levels, {have[1]} inputs, {have[2]} outputs; "
                          f"{art.path} has {want[0]}, {want[1]}, {want[2]} (flash the firmware from this artifact)")


def _upload(dev, weights: bytes, report: DeployReport, progress: bool, console) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    start = time.perf_counter()
    with Progress(TextColumn("uploading weights"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("upload", total=len(weights))
        try:
            dev.upload_weights(weights, progress=lambda done: bar.update(task, completed=done))
        except P.DeviceError as exc:
            if exc.status != P.NO_SPACE:
                raise
            report.upload_note = "no spare weight bank in this build: the weights came with the firmware image"
            return
    report.upload_s = time.perf_counter() - start
    report.uploaded_bytes = len(weights)


def self_test(dev, art: Artifact) -> list[LevelCheck]:
    """Every level on every reference input, against the outputs the build stored."""
    reference = art.reference()
    inputs = reference["input"].reshape(len(reference["input"]), -1).astype(np.float32)
    clock_hz = float((art.manifest.get("target") or {}).get("clock_hz") or 0.0)
    to_ms = (lambda cycles: cycles / clock_hz * 1000.0) if clock_hz > 0 else (lambda cycles: float("nan"))
    checks = []
    for level in art.levels:
        index = int(level["index"])
        active, switch_cycles = dev.set_level(index=index)
        if active != index:
            raise DeployError(f"the device reports level {active} after set-level {index}")
        expected = reference.get(f"level{index}")
        if expected is None:
            raise ArtifactError(f"{art.path}: no reference outputs for level {index}")
        expected = expected.reshape(len(inputs), -1)
        worst, agree, cycles = 0.0, True, []
        for x, want in zip(inputs, expected):
            out, c = dev.infer(x.tolist())
            out = np.asarray(out, dtype=np.float32)
            worst = max(worst, float(np.abs(out - want).max()))
            agree &= int(out.argmax()) == int(want.argmax())
            cycles.append(c)
        infer_cycles = int(np.median(cycles))
        checks.append(LevelCheck(index, float(level["alpha"]), str(level.get("label", "")), len(inputs), worst,
                                 level_tolerance(level), agree, infer_cycles, int(switch_cycles),
                                 to_ms(infer_cycles), to_ms(switch_cycles)))
    return checks


# -- Linux boards over TVM RPC -------------------------------------------------------------------------------

PROFILE_NUMBER, PROFILE_REPEAT = 5, 3  # time_evaluator: median of 3 means of 5 calls, on the board


def deploy_rpc(artifact_path: str | Path, *, rpc: str | None = None, tracker: str | None = None,
               key: str | None = None, progress: bool = True, console=None, **connect_options) -> DeployReport:
    """`lcs deploy --rpc` / `--tracker --key`: a CPU build on a Linux board running TVM's RPC server."""
    from lcs.transport import rpc as R

    where = R.Endpoint(rpc, tracker, key)  # malformed options fail before the artifact is read
    art = R.cpu_artifact(artifact_path, key)
    files = _rpc_files(art)
    with R.connected(where, **connect_options) as link:
        report = DeployReport(str(art.path), art.target_name, link.describe(), firmware_version="", model_hash="",
                              weights_crc="", retries=link.attempts - 1)
        _upload_files(link.session, art, files, report, progress, console)
        report.held = _confirm_held(link.session, art, files, link.describe())
        runtime = R.resident_runtime(art, link, report.held)
        try:
            report.levels = self_test_runtime(runtime, art)
        finally:
            del runtime  # remote modules and tensors go before the session does
    return report


def _rpc_files(art: Artifact) -> dict[str, str]:
    """Artifact member -> file name in the session folder on the board: every library and weight set. Libraries get
    the name `lcs.runtime.Runtime` gives them, so the runtime loads the very copy the board confirmed."""
    members = list(art.manifest["modules"])
    members += sorted({lv["members"]["weights"] for lv in art.levels if lv.get("members", {}).get("weights")})
    return {m: m.replace("/", "_") for m in members}


def _upload_files(session, art: Artifact, files: dict[str, str], report: DeployReport, progress: bool,
                  console) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    blobs = {m: art.read(m) for m in files}
    total = sum(len(b) for b in blobs.values())
    start = time.perf_counter()
    with Progress(TextColumn("uploading {task.fields[member]:<24}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("upload", total=total, member="")
        for member, blob in blobs.items():  # TVM's upload sends one file per call
            bar.update(task, member=member)
            session.upload(bytearray(blob), files[member])
            bar.advance(task, len(blob))
    report.upload_s = time.perf_counter() - start
    report.uploaded_bytes = total


def _confirm_held(session, art: Artifact, files: dict[str, str], where: str) -> dict[str, str]:
    """The board sends back every file it holds; each must hash to the manifest's sha256."""
    from lcs.artifact import sha256

    held = {}
    for member, name in files.items():
        digest = sha256(bytes(session.download(name)))
        want = art.manifest["members"][member]["sha256"]
        if digest != want:
            raise DeployError(f"the board at {where} holds {name} with sha256 {digest[:16]}..., the artifact's "
                              f"{member} has {want[:16]}...: the upload was corrupted")
        held[name] = digest
    return held


def self_test_runtime(runtime, art: Artifact) -> list[LevelCheck]:
    """Every level of a resident Runtime on every reference input, against the stored outputs, with the tolerance
    the build verified against; latency timed on the device by TVM's time_evaluator."""
    reference = art.reference()
    atol = float((art.manifest.get("verification") or {}).get("atol") or 1e-4)
    sizes = {name: int(info["size"]) for name, info in art.manifest["members"].items()}
    checks = []
    for position, level in enumerate(art.levels):
        index = int(level["index"])
        expected = reference.get(f"level{index}")
        if expected is None:
            raise ArtifactError(f"{art.path}: no reference outputs for level {index}")
        start = time.perf_counter()
        runtime.set_level(position)
        switch_ms = (time.perf_counter() - start) * 1e3
        got = np.stack([runtime.run(x) for x in reference["input"]])
        got, want = got.reshape(len(got), -1), expected.reshape(len(expected), -1)
        worst = float(np.abs(got - want).max())
        agree = bool(np.array_equal(got.argmax(axis=1), want.argmax(axis=1)))
        latency_ms = runtime.time(position, number=PROFILE_NUMBER, repeat=PROFILE_REPEAT)
        members = level.get("members") or {}
        checks.append(LevelCheck(index, float(level["alpha"]), str(level.get("label", "")), len(got), worst, atol,
                                 agree, None, None, latency_ms, switch_ms,
                                 library_bytes=sizes.get(members.get("library")),
                                 weights_bytes=sizes.get(members.get("weights"))))
    return checks


def print_report(report: DeployReport, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if report.held:
        console.print(f"[bold]{report.board}[/] via {report.connection}: the board holds {len(report.held)} "
                      f"file(s) whose sha256 match the artifact (TVM RPC session folder)")
    else:
        console.print(f"[bold]{report.board}[/] via {report.connection}: firmware {report.firmware_version}, "
                      f"model {report.model_hash}, weights CRC {report.weights_crc}")
    if report.uploaded_bytes:
        console.print(f"uploaded {report.uploaded_bytes} bytes in {report.upload_s:.3f} s "
                      f"({report.throughput_kib_s:.1f} KiB/s effective)")
    elif report.upload_note:
        console.print(report.upload_note)
    sizes = [f"{name} {value:,} B" for name, value in (("flash", report.flash_bytes), ("RAM", report.ram_bytes))
             if value is not None]
    with_cycles = any(lv.infer_cycles is not None for lv in report.levels)
    with_files = any(lv.library_bytes is not None for lv in report.levels)
    table = Table(title="self-test and profile per level" + (f" ({', '.join(sizes)})" if sizes else ""))
    columns = ["level", "alpha", "label", "switch ms", *(["infer cycles"] if with_cycles else []), "latency ms",
               *(["library B", "weights B"] if with_files else []), "max |err|", "self-test"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("label", "self-test") else "right")
    for lv in report.levels:
        cycles = [f"{lv.infer_cycles:,}" if lv.infer_cycles is not None else "-"] if with_cycles else []
        files = [_size(lv.library_bytes), _size(lv.weights_bytes)] if with_files else []
        table.add_row(str(lv.index), f"{lv.alpha:g}", lv.label, f"{lv.switch_ms:.3f}", *cycles,
                      f"{lv.latency_ms:.3f}", *files, f"{lv.max_abs_error:.2e}",
                      "[green]pass[/]" if lv.passed else f"[red]FAIL[/] ({lv.samples} samples)")
    console.print(table)
    if report.held:
        console.print("latency: TVM time_evaluator on the board; switch: host-side choice of a resident level "
                      "(nothing is transferred)")
    if report.retries:
        console.print(f"{report.retries} connection attempt(s) failed before the board answered" if report.held else
                      f"{report.retries} request(s) were resent after a timeout or a corrupted frame")


def _size(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


def check_passed(report: DeployReport) -> None:
    failed = [lv for lv in report.levels if not lv.passed]
    if failed:
        worst = max(failed, key=lambda lv: lv.max_abs_error)
        raise DeployError(f"self-test failed on level(s) {', '.join(str(lv.index) for lv in failed)} "
                          f"(level {worst.index}: max |error| {worst.max_abs_error:.3g} > {worst.tolerance:g}"
                          f"{'' if worst.agree else ', predicted class differs'})")
