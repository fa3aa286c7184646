"""One interface for every board lcs talks to, and one way to open one.

    with open_board("m7.lcsa", sim="mps2-an500") as board:     # or device=URL, rpc=HOST:PORT, tracker=..., key=...
        info = board.hello()                                   # .board .levels .input_len .output_len
        done = board.upload(progress)                          # put the artifact's model there; the board confirms
        active, ticks = board.set_level(index=1)
        outputs, ticks = board.infer(x)                        # ticks of board.tick_hz (None: the board's CPU cycles)
        board.stats()

Two implementations: `SerialBoard` (lcs firmware over any pyserial port: a real board, host-sim on a pty, QEMU on
TCP; `lcs.device.Device` speaks the protocol) and `RpcBoard` (a Linux board running TVM's RPC server: every level of
a CPU build resident there in an `lcs.runtime.Runtime`). `lcs deploy` and `lcs simulate` both open boards here;
`open_board` owns the "exactly one of --device / --sim / --rpc / --tracker" rule and starting simulated boards.

Torch- and compiler-free.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from lcs import protocol as P
from lcs.artifact import Artifact, open_artifact
from lcs.errors import ConfigError, LcsError

SERIAL_CONNECT_TIMEOUT_S = 3.0  # a port that is not there after this is not coming
ONE_OF = "--device URL, --sim BOARD, --rpc HOST:PORT, --tracker HOST:PORT --key K"


class BoardError(LcsError):
    """The board does not hold or run what the artifact says."""


@dataclass
class Uploaded:
    """What `Board.upload` moved and what the board confirmed."""

    bytes: int = 0
    seconds: float = 0.0
    note: str = ""  # why nothing was sent, when nothing was
    held: dict[str, str] = field(default_factory=dict)  # RPC: file on the board -> sha256 it sent back


Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class Board(Protocol):
    connection: str  # how it was reached, for reports
    tick_hz: float | None  # rate of the ticks set_level/infer return; None: CPU cycles of the board (its clock_hz)

    def hello(self): ...  # -> object with board, levels, input_len, output_len

    def set_level(self, *, index: int) -> tuple[int, int]: ...  # -> (active level, ticks the switch took)

    def infer(self, values: Sequence[float]) -> tuple[list[float], int]: ...  # -> (outputs, ticks of one call)

    def upload(self, progress: Progress | None = None) -> Uploaded: ...

    def stats(self) -> dict: ...

    @property
    def retries(self) -> int: ...


# -- which board: the options -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Where:
    """Exactly one way to reach a board, checked once."""

    device: str | None = None
    sim: str | None = None
    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    @classmethod
    def from_options(cls, *, device=None, sim=None, rpc=None, tracker=None, key=None,
                     optional: bool = False) -> "Where | None":
        """None when nothing was given and `optional`; otherwise exactly one source, or a one-line ConfigError.
        RPC addresses are checked here too, before anything is read or started."""
        given = sum(x is not None for x in (device, sim, rpc if rpc is not None else tracker))
        if given == 0 and key is None and optional:
            return None
        if given != 1 or (key is not None and tracker is None and rpc is None):
            raise ConfigError(f"give {'at most' if optional else 'exactly'} one of {ONE_OF}")
        where = cls(device, sim, rpc, tracker, key)
        if where.remote:
            where.endpoint()  # malformed --rpc / --tracker / --key fail now
        return where

    @property
    def remote(self) -> bool:
        return self.rpc is not None or self.tracker is not None

    def endpoint(self):
        from lcs.transport.rpc import Endpoint

        return Endpoint(self.rpc, self.tracker, self.key)

    def option(self) -> str:
        return "--rpc" if self.rpc is not None else "--tracker" if self.tracker is not None else \
            "--sim" if self.sim is not None else "--device"


@contextlib.contextmanager
def open_board(artifact: str | Path | Artifact | None, where: Where, *, trace_io: bool = False,
               serial_options: dict | None = None, rpc_options: dict | None = None) -> Iterator["Board"]:
    """The board `where` names, ready for hello(); host-sim and QEMU boards are started from the artifact's firmware
    and stopped on exit, RPC sessions are released on exit."""
    if where.remote:
        if trace_io:
            raise ConfigError("--trace-io dumps serial frames; TVM RPC has no lcs frames to show")
        if artifact is None:
            raise ConfigError(f"{where.option()} runs the CPU build inside an artifact on the board; pass --artifact")
        from lcs.transport import rpc as R

        art = R.cpu_artifact(artifact, where.key)
        with R.connected(where.endpoint(), **(rpc_options or {})) as link:
            board = RpcBoard(art, link)
            try:
                yield board
            finally:
                board.close()  # remote modules and tensors go before the session does
        return
    if where.sim is not None and artifact is None:
        raise ConfigError("--sim starts the firmware inside an artifact; pass --artifact")
    art = None
    if artifact is not None:
        art = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, expect_target=where.sim)
    with contextlib.ExitStack() as stack:
        url, connection = where.device, where.device
        if where.sim is not None:
            from lcs.transport.launch import started_firmware

            url = stack.enter_context(started_firmware(art.path, where.sim))
            connection = f"sim:{where.sim}"
        from lcs.device import Device, hexdump_tracer

        options = {"connect_timeout": SERIAL_CONNECT_TIMEOUT_S, **(serial_options or {})}
        dev = stack.enter_context(Device.open(url, trace=hexdump_tracer() if trace_io else None, **options))
        yield SerialBoard(dev, art, connection)


# -- serial firmware ----------------------------------------------------------------------------------------

class SerialBoard:
    """lcs firmware behind `lcs.device.Device`: cycle counts from the board's own counter."""

    tick_hz = None

    def __init__(self, dev, artifact: Artifact | None, connection: str) -> None:
        self.dev, self.artifact, self.connection = dev, artifact, connection

    def hello(self) -> P.Hello:
        return self.dev.hello()

    def set_level(self, *, index: int) -> tuple[int, int]:
        return self.dev.set_level(index=index)

    def infer(self, values: Sequence[float]) -> tuple[list[float], int]:
        return self.dev.infer(values)

    def stats(self) -> dict:
        return self.dev.stats()

    @property
    def retries(self) -> int:
        return self.dev.retried

    def upload(self, progress: Progress | None = None) -> Uploaded:
        """Send the artifact's weight set (when the firmware has a spare bank) and have the device confirm its CRC."""
        art = self.artifact.require_kind("firmware", "serial deploy needs an MCU or host-sim build")
        weights = art.read(art.manifest.firmware.weights)
        info = self.dev.hello()
        if len(weights) != info.weight_bytes:
            raise BoardError(f"the device holds a {info.weight_bytes}-byte weight set; the artifact's is "
                             f"{len(weights)} bytes: it runs another model (write this artifact's firmware first: "
                             f"lcs flash {art.path})")
        done = Uploaded()
        start = time.perf_counter()
        try:
            self.dev.upload_weights(weights, progress=(lambda n: progress(n, len(weights))) if progress else None)
            done.bytes, done.seconds = len(weights), time.perf_counter() - start
        except P.DeviceError as exc:
            if exc.status != P.NO_SPACE:
                raise
            done.note = "no spare weight bank in this build: the weights came with the firmware image"
        held = self.dev.hello()
        if held.weights_crc != P.crc32(weights):
            raise BoardError(f"the device runs weights with CRC {held.weights_crc:08x}, the artifact's have "
                             f"{P.crc32(weights):08x}" + (f" (write its firmware first: lcs flash {art.path})"
                                                          if not done.bytes else ""))
        return done

    def check_model(self, board: str) -> None:
        """The device runs this artifact's model: board name, levels, input and output sizes."""
        info, art = self.dev.hello(), self.artifact
        if info.board and info.board != board:
            raise BoardError(f"the device is a {info.board!r} board; {art.path} was built for {board!r}")
        want = (len(art.levels), art.manifest.input.size, art.manifest.output.size)
        have = (info.levels, info.input_len, info.output_len)
        if have != want:
            raise BoardError(f"the device runs a model with {have[0]} levels, {have[1]} inputs, {have[2]} outputs; "
                             f"{art.path} has {want[0]}, {want[1]}, {want[2]} (write its firmware first: "
                             f"lcs flash {art.path})")


# -- a Linux board over TVM RPC -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RuntimeHello:
    """What `hello()` tells about a board running a Runtime over RPC."""

    board: str
    levels: int
    input_len: int
    output_len: int


class RpcBoard:
    """Every level of a CPU build resident on an RPC board (`lcs.runtime.Runtime` over the session).

    Ticks are nanoseconds. `infer` returns the outputs of one call and the time of one more call of the same level
    measured on the device by TVM's time_evaluator (number=1, repeat=1): two inferences per call, one for the outputs
    and one for the clock. `set_level` only picks another resident (module, weights) pair on the host, so its time is
    the host's perf_counter around that choice: no device work happens on a switch."""

    tick_hz = 1e9

    def __init__(self, artifact: Artifact, link) -> None:
        self.artifact, self.link, self.connection = artifact, link, link.describe()
        self.held: dict[str, str] = {}
        self._runtime = None

    @property
    def runtime(self):
        if self._runtime is None:  # after an upload: the libraries the board confirmed are loaded, not sent again
            from lcs.transport.rpc import resident_runtime

            self._runtime = resident_runtime(self.artifact, self.link, self.held)
        return self._runtime

    @property
    def retries(self) -> int:
        return self.link.attempts - 1

    def hello(self) -> RuntimeHello:
        m = self.artifact.manifest
        return RuntimeHello(self.artifact.target_name, len(m.levels), m.input.size, m.output.size)

    def set_level(self, *, index: int) -> tuple[int, int]:
        runtime = self.runtime
        start = time.perf_counter_ns()
        runtime.set_level(index)
        return runtime.level, time.perf_counter_ns() - start

    def infer(self, values) -> tuple[list[float], int]:
        spec = self.artifact.manifest.input
        out = self.runtime.run(np.asarray(values, dtype=spec.dtype).reshape(spec.shape))
        ms = self.runtime.time(self.runtime.level, number=1, repeat=1)
        return out.reshape(-1).tolist(), int(round(ms * 1e6))

    def stats(self) -> dict:
        return {"level": self.runtime.level, "threads": self.runtime.threads(), "files_held": len(self.held)}

    def files(self) -> dict[str, str]:
        """Artifact member -> file name in the session folder on the board: every library and weight set. Libraries
        get the name `lcs.runtime.Runtime` gives them, so the runtime loads the very copy the board confirmed."""
        members = list(self.artifact.manifest.modules)
        members += sorted({lv.weights for lv in self.artifact.levels if lv.weights})
        return {m: m.replace("/", "_") for m in members}

    def upload(self, progress: Progress | None = None) -> Uploaded:
        """Every library and weight set into the session's folder; the board sends each back, and its sha256 must
        match the manifest's."""
        files = self.files()
        blobs = {m: self.artifact.read(m) for m in files}
        total, done = sum(len(b) for b in blobs.values()), 0
        start = time.perf_counter()
        for member, blob in blobs.items():  # TVM's upload sends one file per call
            self.link.session.upload(bytearray(blob), files[member])
            done += len(blob)
            if progress:
                progress(done, total)
        seconds = time.perf_counter() - start
        self.held = confirm_held(self.link.session, self.artifact, files, self.connection)
        self._runtime = None
        return Uploaded(total, seconds, held=dict(self.held))

    def close(self) -> None:
        """Let go of the resident levels (remote modules and tensors), so the session can end."""
        self._runtime = None


def confirm_held(session, art: Artifact, files: dict[str, str], where: str) -> dict[str, str]:
    """The board sends back every file it holds; each must hash to the manifest's sha256."""
    from lcs.artifact import sha256

    held = {}
    for member, name in files.items():
        digest = sha256(bytes(session.download(name)))
        want = art.manifest.member_sha256(member)
        if digest != want:
            raise BoardError(f"the board at {where} holds {name} with sha256 {digest[:16]}..., the artifact's "
                             f"{member} has {want[:16]}...: the upload was corrupted")
        held[name] = digest
    return held
