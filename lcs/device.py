"""A small client for the lcs firmware over any pyserial port or URL (/dev/ttyUSB0, a pty, socket://host:port).

    with Device.open("socket://127.0.0.1:4321") as dev:
        info = dev.hello()
        dev.set_level(index=2)            # or alpha=0.5
        outputs, cycles = dev.infer(x)    # x: a flat sequence of float32 values
        dev.upload_weights(blob)          # chunks, then commit; the device keeps its old set if anything fails

Every request carries a sequence number; a reply must echo it, and replies to earlier requests are dropped. A request
that gets no (valid) reply within its timeout is resent, the same frame with the same sequence number, with a growing
pause (back-off), after flushing whatever half-frame the device may be waiting on.

The link adapts by default (`retries=None`). The first request waits its whole conservative timeout
(`DEFAULT_TIMEOUTS`). Once replies have been timed, an attempt waits a few times the slowest recent reply of its
command (`ATTEMPT_FACTOR`, `ATTEMPT_MARGIN_S`; a command not timed yet starts from the slowest reply seen), 1.5x
longer after each attempt that failed (at most 4x), and attempts go on until three times the command's timeout has
passed in total (`ADAPTIVE_BUDGET`: the worst case of the old three attempts). A lost reply on a fast board then costs
tens of milliseconds, not the 20 s a slow board's level switch may need; a reply later than its attempt is still taken
(it carries the same seq). An upload starts with small chunks, doubles them after a run of first-time answers and
halves them on a resend, and resumes from the last chunk the device acknowledged (asked with a zero-length chunk)
instead of starting over. An explicit `retries=N` keeps the fixed scheme: N resends, each waiting the full timeout
(tests that pin the behaviour). Garbage
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


ATTEMPT_FACTOR = 4.0  # an attempt waits this many times the slowest recent reply of its command ...
ATTEMPT_MARGIN_S = 0.03  # ... plus this (scheduling jitter on a loaded host)
ATTEMPT_FLOOR_S = 0.02
ATTEMPT_GROWTH = 1.5  # each failed attempt of a request waits this much longer than the one before ...
# ... up to this factor: on a noisy link most attempts fail for lost bytes, not for a slow device, and a slow command
# needs no longer window anyway (its resend is answered from the device's kept reply once it is done)
ATTEMPT_GROWTH_MAX = 4.0
# until a command has been answered once, its attempts also wait for their own bytes to cross the link (2 KB/s, a
# slow or loaded emulated UART): a 12 KB INFER (a 3x32x32 input) takes ~0.5 s into an idle QEMU UART and seconds
# into a loaded one; resending before the device has read it makes it read every resend in full, falling further
# behind. Once answered, the command's measured reply time sets its waits.
TRANSFER_S_PER_BYTE = 5e-4
ADAPTIVE_BUDGET = 3  # adaptive attempts go on for this many command timeouts (the old three attempts' worst case)
UPLOAD_CHUNK_START, UPLOAD_CHUNK_MIN, UPLOAD_CHUNK_MAX = 128, 32, 1024
UPLOAD_GROW_AFTER = 8  # first-time answers in a row before the chunk doubles


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
    def __init__(self, port, *, retries: int | None = None, timeouts: dict | None = None, backoff: float = 0.002,
                 max_backoff: float = 0.1, trace: Tracer | None = None) -> None:
        self.port = port
        self.retries = retries  # None: adaptive (attempts until the command's timeout has passed in total)
        self.reply_s: dict[int, float] = {}  # slowest recent first-attempt reply per command (decays)
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

    def attempt_timeout(self, command: int, ceiling: float, attempt: int) -> float:
        """How long attempt `attempt` (0-based) of `command` waits for its reply."""
        seen = self.reply_s.get(command)
        if seen is None:
            if not self.reply_s:
                return ceiling  # nothing timed yet: conservative
            # a command not yet timed: start from the slowest reply seen; the growth below reaches a slow command's
            # time in a few resends, which the device answers from its kept reply (and its late reply still counts)
            seen = max(self.reply_s.values())
        base = max(ATTEMPT_FLOOR_S, ATTEMPT_FACTOR * seen + ATTEMPT_MARGIN_S)
        return min(ceiling, base * min(ATTEMPT_GROWTH ** attempt, ATTEMPT_GROWTH_MAX))

    def _timed(self, command: int, seconds: float) -> None:
        seen = self.reply_s.get(command)
        self.reply_s[command] = seconds if seen is None else max(seconds, 0.8 * seen + 0.2 * seconds)
        if self.retries is None:  # adaptive: the flush's settle only has to outlast the device's error reply
            fastest = min(self.reply_s.values())
            self.settle_s = min(0.05, max(0.002, 2 * fastest))

    def request(self, command: int, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """Send one request and return the reply payload (status byte first, already checked to be OK)."""
        ceiling = self.timeouts.get(command, 5.0) if timeout is None else timeout
        self.seq = (self.seq + 1) & 0xFF
        frame_bytes = P.encode(command, self.seq, payload)  # every attempt sends these same bytes (device dedupe)
        started = time.monotonic()
        attempt = 0
        while True:
            self.last_attempts = attempt + 1
            self.retried += attempt > 0
            wait = ceiling if self.retries is not None else self.attempt_timeout(command, ceiling, attempt) + (
                len(frame_bytes) * TRANSFER_S_PER_BYTE if command not in self.reply_s else 0.0)
            sent = time.monotonic()
            self.send_raw(frame_bytes)
            deadline = sent + wait
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
                if attempt == 0:
                    self._timed(command, time.monotonic() - sent)
                if frame.status != P.OK:
                    raise P.DeviceError(command, frame.status)
                return frame.payload
            attempt += 1
            if self.retries is not None:
                if attempt > self.retries:
                    break
            elif time.monotonic() - started >= ADAPTIVE_BUDGET * ceiling:
                break
            time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            if not device_idle:
                self._flush_device()  # it may still be collecting a frame whose length lies
        raise DeviceTimeout(f"no reply to {P.COMMAND_NAMES.get(command, command)} after {attempt} attempts "
                            f"in {time.monotonic() - started:.1f} s")

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

        The device keeps running its last good set until a commit passes its CRC check. Chunks start small and
        adapt to the link (a fixed `chunk` pins the size). A chunk that gets no reply within its time is not the
        end: the host asks the device how far it got (a zero-length chunk at each possible offset) and resumes
        from there. Only when the device lost the upload itself (it was reset) does the upload start again from
        BEGIN, up to `attempts` times. `progress(bytes_acknowledged)` is called after every chunk. `stop_after`
        (chunks) abandons the upload half way, as a broken link would (used by tests)."""
        info = self.info or self.hello()
        limit = max(UPLOAD_CHUNK_MIN, min(UPLOAD_CHUNK_MAX, info.max_payload - 8))
        crc = P.crc32(blob)
        for attempt in range(attempts):
            try:
                if self._upload_once(blob, crc, chunk, limit, stop_after, progress):
                    return crc
                if stop_after is not None:
                    return crc
            except (P.DeviceError, DeviceTimeout) as exc:
                if isinstance(exc, P.DeviceError) and exc.status not in (P.UPLOAD_STATE, P.UPLOAD_CHECK):
                    raise  # a refusal that a retry cannot change (no spare bank, wrong size)
                if isinstance(exc, DeviceTimeout) and self._committed(crc):
                    return crc  # the commit went through; only its reply was lost
                if attempt == attempts - 1:
                    raise UploadError(f"weight upload failed {attempts} times; the device keeps its previous "
                                      f"weights (last error: {exc})") from None
            self.uploads_restarted += 1
            self.hello()  # resynchronise (a reset device starts over) before starting again
        raise UploadError("weight upload did not complete")  # unreachable: the loop returns or raises

    def _committed(self, crc: int) -> bool:
        try:
            return self.hello().weights_crc == crc
        except (P.DeviceError, DeviceTimeout, P.ProtocolError):
            return False

    def _received(self, candidates: Sequence[int]) -> int | None:
        """Which of `candidates` is the device's upload position (a zero-length chunk there is accepted), or None
        when it holds no open upload. A HELLO first waits out a link that went quiet (its own, longer budget)."""
        self.hello()
        for offset in candidates:
            try:
                self.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(offset, b""))
                return offset
            except P.DeviceError as exc:
                if exc.status != P.UPLOAD_STATE:
                    raise
        return None

    def _upload_once(self, blob: bytes, crc: int, fixed_chunk: int | None, limit: int, stop_after, progress) -> bool:
        self.request(P.UPLOAD_BEGIN, P.upload_begin_payload(len(blob), crc))
        size = fixed_chunk or min(UPLOAD_CHUNK_START, limit)
        offset, sent, clean = 0, 0, 0
        while offset < len(blob):
            if stop_after is not None and sent >= stop_after:
                return False
            data = blob[offset: offset + size]
            try:
                self.request(P.UPLOAD_CHUNK, P.upload_chunk_payload(offset, data))
            except (DeviceTimeout, P.DeviceError) as exc:
                if isinstance(exc, P.DeviceError) and exc.status != P.UPLOAD_STATE:
                    raise
                # lost, or (a protocol-1 device running a resend again) refused: ask where the device is
                position = self._received([offset + len(data), offset])
                if position is None:
                    raise  # the device lost the upload (reset): start over
                offset, clean = position, 0
                if fixed_chunk is None:
                    size = max(UPLOAD_CHUNK_MIN, size // 2)
                if progress:
                    progress(offset)
                continue
            offset += len(data)
            sent += 1
            if progress:
                progress(offset)
            if fixed_chunk is None:
                if self.last_attempts > 1:  # back off: smaller frames survive a noisy link more often
                    size, clean = max(UPLOAD_CHUNK_MIN, size // 2), 0
                else:
                    clean += 1
                    if clean >= UPLOAD_GROW_AFTER:
                        size, clean = min(limit, size * 2), 0
        (committed,) = struct.unpack_from("<I", self.request(P.UPLOAD_COMMIT), 1)
        if committed != crc or self.hello().weights_crc != crc:
            raise UploadError(f"the device reports weights CRC {self.info.weights_crc:08x} after committing a set "
                              f"with CRC {crc:08x}")
        return True

    def reset(self) -> None:
        self.request(P.RESET)
        self.decoder = P.Decoder()
