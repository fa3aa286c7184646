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

Both kinds of board are opened by `lcs.transport.board.open_board` and go through the same steps: `Board.upload`,
then one `self_test` (every level on every reference input; RPC latencies are the median of one time_evaluator call
per input, measured on the board; serial ones the device's cycle counter).

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcs.artifact import FLOAT_ATOL, Artifact, Level, level_atol, open_artifact
from lcs.errors import LcsError
from lcs.transport.board import BoardError, SerialBoard, Where, open_board

CONNECT_TIMEOUT_S = 2.0
DeployError = BoardError  # the device does not hold or run what the artifact says


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


def level_tolerance(art: Artifact, level: Level) -> float:
    """What the self-test accepts: the tolerance the build verified the level against (CPU builds), none for int8
    firmware (its reference is the integer reference), float rounding for fp32 firmware; quantized levels may land one
    activation step away where a value sits on a grid boundary (`lcs.artifact.level_atol`)."""
    if art.kind == "cpu":
        return level_atol(level.bits, FLOAT_ATOL if art.manifest.atol is None else art.manifest.atol)
    if art.manifest.firmware is not None and art.manifest.firmware.precision == "int8":
        return 0.0
    return level_atol(level.bits)


def deploy(artifact_path: str | Path, *, device: str | None = None, sim: str | None = None, rpc: str | None = None,
           tracker: str | None = None, key: str | None = None, trace_io: bool = False, progress: bool = True,
           console=None, device_options: dict | None = None, rpc_options: dict | None = None) -> DeployReport:
    """Deploy and self-test; raises DeployError if the device's answers do not match the artifact."""
    where = Where.from_options(device=device, sim=sim, rpc=rpc, tracker=tracker, key=key)
    if where.remote and trace_io:
        raise LcsError("--trace-io dumps serial frames; TVM RPC has no lcs frames to show")
    if where.remote:
        from lcs.transport.rpc import cpu_artifact

        art = cpu_artifact(artifact_path, key)
    else:
        art = open_artifact(artifact_path, expect_target=sim).require_kind(
            "firmware", "serial deploy needs an MCU or host-sim build")
    options = {"exclusive": True, "connect_timeout": CONNECT_TIMEOUT_S, **(device_options or {})}
    with open_board(art, where, trace_io=trace_io, serial_options=options, rpc_options=rpc_options) as board:
        if isinstance(board, SerialBoard):
            _answers(board, where)
            board.check_model(sim or art.target_name)
        info = board.hello()
        report = DeployReport(str(art.path), sim or art.target_name, board.connection,
                              getattr(info, "firmware_version", ""), getattr(info, "model_hash", ""), "",
                              **({"flash_bytes": art.manifest.firmware.flash_bytes,
                                  "ram_bytes": art.manifest.firmware.ram_bytes} if art.kind == "firmware" else {}))
        done = _upload(board, progress, console)
        report.uploaded_bytes, report.upload_s, report.upload_note, report.held = \
            done.bytes, done.seconds, done.note, done.held
        if art.kind == "firmware":
            held = board.hello()
            report.weights_crc, report.model_hash = f"{held.weights_crc:08x}", held.model_hash
        report.levels = self_test(board, art)
        report.retries = board.retries
    return report


def _answers(board, where) -> None:
    """A real port where no lcs firmware answers most likely runs other firmware: say how to write this one."""
    from lcs.device import DeviceTimeout

    try:
        board.hello()
    except DeviceTimeout as exc:
        if where.sim is not None:
            raise
        raise DeployError(f"no lcs firmware answered on {board.connection} ({exc}); a board that runs other firmware "
                          f"needs this artifact's written first: lcs flash {board.artifact.path}") from None


def _upload(board, progress: bool, console):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("upload", total=None)
        return board.upload(lambda done, total: bar.update(task, completed=done, total=total))


def self_test(board, art: Artifact) -> list[LevelCheck]:
    """Every level on every reference input, against the outputs the build stored: the one self-test, for serial
    firmware and RPC boards alike. Times come in the board's ticks: cycles of the board's clock (firmware) or
    nanoseconds (RPC: inference timed on the board by TVM's time_evaluator, the switch a host-side choice)."""
    reference = art.reference()
    inputs = reference["input"].reshape(len(reference["input"]), -1).astype(np.float32)
    cycles = board.tick_hz is None
    rate = board.tick_hz or float(art.manifest.target.get("clock_hz") or 0.0)
    to_ms = (lambda ticks: ticks / rate * 1000.0) if rate > 0 else (lambda ticks: float("nan"))
    checks = []
    for level in art.levels:
        active, switch = board.set_level(index=level.index)
        if active != level.index:
            raise DeployError(f"the device reports level {active} after set-level {level.index}")
        expected = art.expected(reference, level).reshape(len(inputs), -1)
        worst, agree, ticks = 0.0, True, []
        for x, want in zip(inputs, expected):
            out, t = board.infer(x.tolist())
            out = np.asarray(out, dtype=np.float32)
            worst = max(worst, float(np.abs(out - want).max()))
            agree &= int(out.argmax()) == int(want.argmax())
            ticks.append(t)
        infer = int(np.median(ticks))
        checks.append(LevelCheck(level.index, level.alpha, level.label, len(inputs), worst,
                                 level_tolerance(art, level), agree, infer if cycles else None,
                                 int(switch) if cycles else None, to_ms(infer), to_ms(switch),
                                 library_bytes=art.manifest.member_size(level.library),
                                 weights_bytes=art.manifest.member_size(level.weights)))
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
