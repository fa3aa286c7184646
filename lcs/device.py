"""A small client for the lcs firmware over any pyserial port or URL (/dev/ttyUSB0, a pty, socket://host:port).

    with Device.open("socket://127.0.0.1:4321") as dev:
        info = dev.hello()
        dev.set_level(index=2)            # or alpha=0.5
        outputs, cycles = dev.infer(x)    # x: a flat sequence of float32 values
        dev.upload_weights(blob)          # chunks, then commit; the device keeps its old set if anything fails

Every request carries a sequence number; a reply must echo it. A request that gets no (valid) reply within its
timeout is resent up to `retries` times, after flushing whatever half-frame the device may be waiting on.
Torch-free: uses only lcs.protocol and pyserial.
"""

from __future__ import annotations

import struct
import time
from typing import Sequence

from lcs import protocol as P
from lcs.errors import LcsError


class DeviceTimeout(LcsError):
    """The device did not answer in time."""


DEFAULT_TIMEOUTS = {P.HELLO: 2.0, P.SET_LEVEL: 20.0, P.INFER: 30.0, P.STATS: 2.0, P.UPLOAD_BEGIN: 2.0,
                    P.UPLOAD_CHUNK: 5.0, P.UPLOAD_COMMIT: 30.0, P.RESET: 2.0, P.LEVEL_INFO: 2.0}


class Device:
    def __init__(self, port, *, retries: int = 2, timeouts: dict | None = None) -> None:
        self.port = port
        self.retries = retries
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.seq = 0
        self.decoder = P.Decoder()
        self.pending: list[P.Frame] = []
        self.info: P.Hello | None = None
        self.max_payload = 256  # until HELLO tells the device's limit

    @classmethod
    def open(cls, url: str, *, connect_timeout: float = 10.0, **kwargs) -> "Device":
        import serial

        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                port = serial.serial_for_url(url, baudrate=115200, timeout=0.05)
                break
            except (serial.SerialException, OSError) as exc:
                if time.monotonic() > deadline:
                    raise LcsError(f"cannot open {url}: {exc}") from None
                time.sleep(0.05)
        return cls(port, **kwargs)

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- framing ------------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def read_frame(self, timeout: float) -> P.Frame | None:
        deadline = time.monotonic() + timeout
        while not self.pending:
            if time.monotonic() > deadline:
                return None
            chunk = self.port.read(max(1, self.port.in_waiting))
            if chunk:
                try:
                    self.pending += self.decoder.feed(chunk)
                except P.ProtocolError:
                    continue  # a corrupted reply: the request times out and is resent
        return self.pending.pop(0)

    def _flush_device(self) -> None:
        """Complete any frame the device is still collecting (it then fails its CRC and is dropped)."""
        self.send_raw(b"\0" * (self.max_payload + P.OVERHEAD))
        time.sleep(0.05)
        self.port.reset_input_buffer()
        self.decoder, self.pending = P.Decoder(), []

    def request(self, command: int, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Send one request and return the reply payload (status byte first, already checked to be OK)."""
        timeout = self.timeouts.get(command, 5.0) if timeout is None else timeout
        for attempt in range(self.retries + 1):
            self.seq = (self.seq + 1) & 0xFF
            self.send_raw(P.encode(command, self.seq, payload))
            deadline = time.monotonic() + timeout
            while True:
                frame = self.read_frame(max(0.0, deadline - time.monotonic()))
                if frame is None:
                    break
                if frame.seq != self.seq:
                    continue  # a late reply to an earlier attempt
                if frame.type == P.ERROR and frame.status == P.BAD_CRC:
                    break  # corrupted on the way: resend
                if frame.type not in (command | P.REPLY, P.ERROR):
                    raise P.ProtocolError(f"reply type 0x{frame.type:02x} to command 0x{command:02x}")
                if frame.status != P.OK:
                    raise P.DeviceError(command, frame.status)
                return frame.payload
            if attempt < self.retries:
                self._flush_device()
        raise DeviceTimeout(f"no reply to {P.COMMAND_NAMES.get(command, command)} after {self.retries + 1} attempts "
                            f"({timeout:g} s each)")

    # -- commands -----------------------------------------------------------------------------------------
    def hello(self) -> P.Hello:
        self.info = P.parse_hello(self.request(P.HELLO))
        self.max_payload = self.info.max_payload
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

    def upload_weights(self, blob: bytes, *, chunk: int | None = None, stop_after: int | None = None) -> int:
        """Send a whole weight set and commit it; returns its CRC. `stop_after` (chunks) abandons the upload
        half way, as a broken link would (used by tests)."""
        info = self.info or self.hello()
        chunk = chunk or max(16, min(1024, info.max_payload - 8))
        crc = P.crc32(blob)
        self.request(P.UPLOAD_BEGIN, P.upload_begin_payload(len(blob), crc))
        for i, offset in enumerate(range(0, len(blob), chunk)):
            if stop_after is not None and i >= stop_after:
                return crc
            self.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(offset, blob[offset: offset + chunk]))
        payload = self.request(P.UPLOAD_COMMIT)
        (committed,) = struct.unpack_from("<I", payload, 1)
        return committed

    def reset(self) -> None:
        self.request(P.RESET)
        self.decoder = P.Decoder()
