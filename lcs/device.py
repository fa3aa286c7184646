"""A small client for the lcs firmware over any pyserial port or URL (/dev/ttyUSB0, a pty, socket://host:port).

    with Device.open("socket://127.0.0.1:4321") as dev:
        info = dev.hello()
        dev.set_level(index=2)            # or alpha=0.5
        outputs, cycles = dev.infer(x)    # x: a flat sequence of float32 values
        dev.upload_weights(blob)          # chunks, then commit; the device keeps its old set if anything fails

Every request carries a sequence number; a reply must echo it, and replies to earlier requests are dropped. A request
that gets no (valid) reply within its timeout is resent, the same frame with the same sequence number, up to `retries`
times, with a growing pause (back-off), after flushing whatever half-frame the device may be waiting on. Garbage
between frames is skipped (the decoder hunts for the next sync). Retrying is safe: the device (protocol 2) answers a
repeated frame with the reply it kept from the first attempt, so a chunk, commit or level switch whose reply was lost is
not applied twice. (A protocol-1 device runs a repeat again: harmless for every command but UPLOAD_CHUNK and
UPLOAD_COMMIT, which it then refuses as out of order, and `upload_weights` starts the upload over.)

`trace` (e.g. `hexdump_tracer()`, `lcs deploy --trace-io`) sees every frame sent and received, with a timestamp.
Torch-free: uses only lcs.protocol and pyserial.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import time
from typing import Callable, Sequence

from lcs import protocol as P
from lcs.errors import LcsError


class DeviceTimeout(LcsError):
    """The device did not answer in time."""


DEFAULT_TIMEOUTS = {P.HELLO: 2.0, P.SET_LEVEL: 20.0, P.INFER: 30.0, P.STATS: 2.0, P.UPLOAD_BEGIN: 2.0,
                    P.UPLOAD_CHUNK: 5.0, P.UPLOAD_COMMIT: 30.0, P.RESET: 2.0, P.LEVEL_INFO: 2.0}


# A blocking read returns as soon as a byte arrives; this only bounds how far past its deadline a request whose reply
# never comes waits (short command timeouts, as on a lossy link, would otherwise all round up to it).
READ_POLL_S = 0.005


class UploadError(LcsError):
    """A weight upload that did not complete (the device keeps its previous weights)."""


class PortError(LcsError):
    """A port that does not exist, is busy, or cannot be opened."""


Tracer = Callable[[str, bytes], None]  # (direction "->" host to device | "<-", frame bytes)


def hexdump_tracer(stream=None) -> Tracer:
    """Print each frame as `[seconds since start] -> a5 5a 01 ...` (to stderr unless told otherwise)."""
    start = time.monotonic()

    def trace(direction: str, data: bytes) -> None:
        print(f"[{time.monotonic() - start:10.6f}] {direction} {len(data):5d} B  {data.hex(' ')}",
              file=stream or sys.stderr, flush=True)

    return trace


def _is_busy(exc: Exception) -> bool:
    text = str(exc).lower()
    return getattr(exc, "errno", None) == errno.EBUSY or "exclusively lock" in text or "resource busy" in text


class Device:
    def __init__(self, port, *, retries: int = 2, timeouts: dict | None = None, backoff: float = 0.02,
                 max_backoff: float = 1.0, trace: Tracer | None = None) -> None:
        self.port = port
        self.retries = retries
        self.backoff = backoff  # pause before retry k: backoff * 2**k seconds, at most max_backoff
        self.max_backoff = max_backoff
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.trace = trace
        self.seq = 0
        self.decoder = P.Decoder()
        self.pending: list[P.Frame] = []
        self.info: P.Hello | None = None
        self.max_payload = 256  # until HELLO tells the device's limit
        self.last_attempts = 0  # attempts the last request needed (1 = answered first time)
        self.retried = 0  # resends since opening (for reports and tests)
        self.uploads_restarted = 0
        self.settle_s = 0.05

    @classmethod
    def open(cls, url: str, *, connect_timeout: float = 10.0, exclusive: bool = False, port_wrapper=None,
             **kwargs) -> "Device":
        """Open a pyserial port or URL. A path that does not exist (yet) is retried until `connect_timeout` (a
        board may still be enumerating); `exclusive` locks the port and refuses one another program holds.
        `port_wrapper` wraps the opened port (e.g. lcs.transport.faults.FaultyPort)."""
        import serial

        deadline = time.monotonic() + connect_timeout
        options = {"exclusive": True} if exclusive else {}
        while True:
            try:
                port = serial.serial_for_url(url, baudrate=115200, timeout=READ_POLL_S, **options)
                break
            except (serial.SerialException, OSError, ValueError) as exc:
                if _is_busy(exc):
                    raise PortError(f"cannot open {url}: the port is busy (another program holds it)") from None
                if time.monotonic() > deadline:
                    if "://" not in url and not os.path.exists(url):
                        raise PortError(f"cannot open {url}: no such port") from None
                    raise PortError(f"cannot open {url}: {exc}") from None
                time.sleep(0.05)
        return cls(port_wrapper(port) if port_wrapper else port, **kwargs)

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- framing ------------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        if self.trace:
            self.trace("->", data)
        self.port.write(data)
        self.port.flush()

    def read_frame(self, timeout: float, *, stop_on_corrupt: bool = False) -> P.Frame | None:
        """The next valid frame, or None after `timeout` (or, with `stop_on_corrupt`, as soon as a corrupted frame
        arrived and nothing valid is queued: its request is known lost and can be resent at once)."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            if time.monotonic() > deadline:
                return None
            chunk = self.port.read(max(1, self.port.in_waiting))
            if chunk:
                try:
                    self.pending += self.decoder.feed(chunk)
                except P.ProtocolError:
                    # a corrupted frame: resynchronise at the next sync
                    self.pending += self._drain_decoder()
                    if stop_on_corrupt and not self.pending:
                        return None
        frame = self.pending.pop(0)
        if self.trace:
            self.trace("<-", P.encode(frame.type, frame.seq, frame.payload))
        return frame

    def _drain_decoder(self) -> list[P.Frame]:
        """Frames already buffered behind a corrupted one (feed() stops at the first bad frame)."""
        frames: list[P.Frame] = []
        while True:
            try:
                return frames + self.decoder.feed(b"")
            except P.ProtocolError:
                continue

    def _flush_device(self) -> None:
        """Complete any frame the device is still collecting (it then fails its CRC and is dropped)."""
        self.send_raw(b"\0" * (self.max_payload + P.OVERHEAD))
        time.sleep(self.settle_s)  # let the device's error reply arrive, then drop it
        self.port.reset_input_buffer()
        self.decoder, self.pending = P.Decoder(self.decoder.max_payload), []

    def request(self, command: int, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Send one request and return the reply payload (status byte first, already checked to be OK)."""
        timeout = self.timeouts.get(command, 5.0) if timeout is None else timeout
        self.seq = (self.seq + 1) & 0xFF
        frame_bytes = P.encode(command, self.seq, payload)  # every attempt sends these same bytes (device dedupe)
        for attempt in range(self.retries + 1):
            self.last_attempts = attempt + 1
            self.retried += attempt > 0
            self.send_raw(frame_bytes)
            deadline = time.monotonic() + timeout
            device_idle = False  # it answered (with an error, or a reply we received corrupted): no flush needed
            while True:
                frame = self.read_frame(max(0.0, deadline - time.monotonic()), stop_on_corrupt=True)
                if frame is None:
                    device_idle = time.monotonic() < deadline  # returned early: a corrupted reply arrived
                    break
                if frame.seq != self.seq:
                    continue  # a late reply to an earlier request
                if frame.type == P.ERROR:
                    device_idle = True
                    break  # the device could not trust the frame (bad CRC or length): corrupted on the way, resend
                if frame.type != command | P.REPLY:
                    raise P.ProtocolError(f"reply type 0x{frame.type:02x} to command 0x{command:02x}")
                if frame.status != P.OK:
                    raise P.DeviceError(command, frame.status)
                return frame.payload
            if attempt < self.retries:
                time.sleep(min(self.backoff * 2 ** attempt, self.max_backoff))
                if not device_idle:
                    self._flush_device()  # it may still be collecting a frame whose length lies
        raise DeviceTimeout(f"no reply to {P.COMMAND_NAMES.get(command, command)} after {self.retries + 1} attempts "
                            f"({timeout:g} s each)")

    # -- commands -----------------------------------------------------------------------------------------
    def hello(self) -> P.Hello:
        self.info = P.parse_hello(self.request(P.HELLO))
        self.max_payload = self.info.max_payload
        # replies are never longer than the device's buffers: a corrupted length field beyond that is garbage
        self.decoder.max_payload = max(self.info.max_payload, 4 * self.info.output_len + 8, 256) + 16
        return self.info

    def level_info(self, index: int) -> P.LevelInfo:
        return P.parse_level_info(self.request(P.LEVEL_INFO, bytes([index])))

    def levels(self) -> list[P.LevelInfo]:
        info = self.info or self.hello()
        return [self.level_info(i) for i in range(info.levels)]

    def set_level(self, index: int | None = None, alpha: float | None = None) -> tuple[int, int]:
        """-> (active level index, cycles the switch took)."""
        return P.parse_set_level(self.request(P.SET_LEVEL, P.set_level_payload(index, alpha)))

    def infer(self, values: Sequence[float]) -> tuple[list[float], int]:
        """-> (outputs, cycles of the inference)."""
        return P.parse_infer(self.request(P.INFER, P.infer_payload(values)))

    def stats(self) -> dict:
        return P.parse_stats(self.request(P.STATS))

    def upload_weights(self, blob: bytes, *, chunk: int | None = None, stop_after: int | None = None,
                       progress: Callable[[int], None] | None = None, attempts: int = 3) -> int:
        """Send a whole weight set and commit it; returns its CRC, confirmed by the device's HELLO.

        The device keeps running its last good set until a commit passes its CRC check. If the upload breaks off
        (the device was reset, or no reply came through within the retries), the whole upload starts again from
        BEGIN, up to `attempts` times. `progress(bytes_acknowledged)` is called after every chunk. `stop_after`
        (chunks) abandons the upload half way, as a broken link would (used by tests)."""
        info = self.info or self.hello()
        chunk = chunk or max(16, min(1024, info.max_payload - 8))
        crc = P.crc32(blob)
        for attempt in range(attempts):
            try:
                if self._upload_once(blob, crc, chunk, stop_after, progress):
                    return crc
                if stop_after is not None:
                    return crc
            except (P.DeviceError, DeviceTimeout) as exc:
                if isinstance(exc, P.DeviceError) and exc.status not in (P.UPLOAD_STATE, P.UPLOAD_CHECK):
                    raise  # a refusal that a retry cannot change (no spare bank, wrong size)
                if attempt == attempts - 1:
                    raise UploadError(f"weight upload failed {attempts} times; the device keeps its previous "
                                      f"weights (last error: {exc})") from None
            self.uploads_restarted += 1
            self.hello()  # resynchronise (a reset device starts over) before starting again
        raise UploadError("weight upload did not complete")  # unreachable: the loop returns or raises

    def _upload_once(self, blob: bytes, crc: int, chunk: int, stop_after, progress) -> bool:
        self.request(P.UPLOAD_BEGIN, P.upload_begin_payload(len(blob), crc))
        for i, offset in enumerate(range(0, len(blob), chunk)):
            if stop_after is not None and i >= stop_after:
                return False
            data = blob[offset: offset + chunk]
            self.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(offset, data))
            if progress:
                progress(offset + len(data))
        (committed,) = struct.unpack_from("<I", self.request(P.UPLOAD_COMMIT), 1)
        if committed != crc or self.hello().weights_crc != crc:
            raise UploadError(f"the device reports weights CRC {self.info.weights_crc:08x} after committing a set "
                              f"with CRC {crc:08x}")
        return True

    def reset(self) -> None:
        self.request(P.RESET)
        self.decoder = P.Decoder()
