"""The serial wire protocol between a host and the lcs firmware (firmware_host/), host side.

Mirrors the frame handling in firmware_host/src/main.c byte for byte; the spec is firmware_host/PROTOCOL.md.
Torch-free and tvm-free: the device tools import this.

Frame (both directions, little endian):

    0xA5 0x5A | type u8 | seq u8 | length u16 | payload[length] | crc32 u32

crc32 is zlib's CRC-32 over type, seq, length and payload (the sync bytes are not covered).
A reply has type = request type | 0x80, the request's seq, and a status byte as its first payload byte.
A frame the device cannot trust (bad CRC, length over the device's maximum) gets an ERROR (0xFF) reply.
A retry repeats its request frame byte for byte (same seq): the device (protocol 2) answers it with the reply it kept
from the first attempt instead of running the command twice.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from lcs.errors import LcsError

SYNC = b"\xa5\x5a"
HEADER = struct.Struct("<BBH")  # type, seq, length
CRC = struct.Struct("<I")
OVERHEAD = len(SYNC) + HEADER.size + CRC.size  # 10 bytes around each payload
PROTOCOL_VERSION = 2  # 2: the device answers a repeated request frame from its kept reply (STATS counts repeats)
MAX_PAYLOAD_LIMIT = 0xFFFF

# Request types (replies: | REPLY).
HELLO, SET_LEVEL, INFER, STATS, UPLOAD_BEGIN, UPLOAD_CHUNK, UPLOAD_COMMIT, RESET, LEVEL_INFO = range(1, 10)
REPLY = 0x80
ERROR = 0xFF
COMMAND_NAMES = {HELLO: "hello", SET_LEVEL: "set_level", INFER: "infer", STATS: "stats", UPLOAD_BEGIN: "upload_begin",
                 UPLOAD_CHUNK: "upload_chunk", UPLOAD_COMMIT: "upload_commit", RESET: "reset", LEVEL_INFO: "level_info"}

# Status codes (first payload byte of every reply).
OK, BAD_CRC, BAD_LENGTH, UNKNOWN_COMMAND, BAD_ARGUMENT, OUT_OF_RANGE, UPLOAD_STATE, UPLOAD_CHECK, NO_SPACE = range(9)
STATUS_NAMES = {OK: "ok", BAD_CRC: "bad CRC", BAD_LENGTH: "bad length", UNKNOWN_COMMAND: "unknown command",
                BAD_ARGUMENT: "bad argument", OUT_OF_RANGE: "level out of range",
                UPLOAD_STATE: "upload out of order or incomplete", UPLOAD_CHECK: "uploaded weights failed their check",
                NO_SPACE: "no spare weight bank in this build (flash too small for two sets)"}

# SET_LEVEL selectors.
BY_INDEX, BY_ALPHA = 0, 1
FAMILIES = {0: "dense", 1: "unstructured", 2: "structured", 3: "quantization"}


class ProtocolError(LcsError):
    """A frame or reply that does not follow the protocol."""


class DeviceError(LcsError):
    """The device answered with a non-OK status."""

    def __init__(self, command: int, status: int, detail: str = "") -> None:
        self.command, self.status = command, status
        name = COMMAND_NAMES.get(command & 0x7F, f"0x{command:02x}")
        super().__init__(f"device refused {name}: {STATUS_NAMES.get(status, f'status {status}')}{detail}")


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD_LIMIT:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the 16-bit length field")
    body = HEADER.pack(frame_type & 0xFF, seq & 0xFF, len(payload)) + payload
    return SYNC + body + CRC.pack(crc32(body))


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes

    @property
    def status(self) -> int:
        return self.payload[0] if self.payload else -1


class Decoder:
    """Incremental frame decoder: feed bytes, collect complete frames. Bytes before a sync are skipped;
    a frame with a bad CRC raises ProtocolError after which decoding resumes at the next sync."""

    def __init__(self, max_payload: int = MAX_PAYLOAD_LIMIT) -> None:
        self.buffer = bytearray()
        self.max_payload = max_payload

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(SYNC)
            if start < 0:
                # keep a trailing 0xA5: it may be the first half of a sync
                del self.buffer[: max(0, len(self.buffer) - 1)]
                return frames
            del self.buffer[:start]
            if len(self.buffer) < len(SYNC) + HEADER.size:
                return frames
            frame_type, seq, length = HEADER.unpack_from(self.buffer, len(SYNC))
            if length > self.max_payload:
                del self.buffer[:1]
                raise ProtocolError(f"frame announces {length} payload bytes (limit {self.max_payload})")
            total = OVERHEAD + length
            if len(self.buffer) < total:
                return frames
            body = bytes(self.buffer[len(SYNC): total - CRC.size])
            (crc,) = CRC.unpack_from(self.buffer, total - CRC.size)
            if crc != crc32(body):
                del self.buffer[:1]
                raise ProtocolError(f"reply with bad CRC (type 0x{frame_type:02x}, seq {seq})")
            del self.buffer[:total]
            frames.append(Frame(frame_type, seq, body[HEADER.size:]))


# -- payloads -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    protocol_version: int
    family: str
    levels: int
    level: int
    input_len: int
    output_len: int
    max_payload: int
    weight_bytes: int
    weights_crc: int
    model_hash: str
    firmware_version: str
    board: str


_HELLO = struct.Struct("<BBBBIIHII16s")


def _short_string(data: bytes, offset: int) -> tuple[str, int]:
    n = data[offset]
    return data[offset + 1: offset + 1 + n].decode("ascii", "replace"), offset + 1 + n


def parse_hello(payload: bytes) -> Hello:
    _check(payload, HELLO, 1 + _HELLO.size + 2)
    v, fam, n, cur, inp, outp, maxp, wbytes, wcrc, mhash = _HELLO.unpack_from(payload, 1)
    fw, off = _short_string(payload, 1 + _HELLO.size)
    board, _ = _short_string(payload, off)
    return Hello(v, FAMILIES.get(fam, str(fam)), n, cur, inp, outp, maxp, wbytes, wcrc, mhash.hex(), fw, board)


@dataclass(frozen=True)
class LevelInfo:
    index: int
    alpha: float
    keep: float
    width: float
    bits: int | None


_LEVEL = struct.Struct("<BfffB")


def parse_level_info(payload: bytes) -> LevelInfo:
    _check(payload, LEVEL_INFO, 1 + _LEVEL.size)
    index, alpha, keep, width, bits = _LEVEL.unpack_from(payload, 1)
    return LevelInfo(index, alpha, keep, width, bits or None)


def set_level_payload(index: int | None = None, alpha: float | None = None) -> bytes:
    if (index is None) == (alpha is None):
        raise ValueError("give exactly one of index or alpha")
    if index is not None:
        if not 0 <= index <= 255:
            raise ProtocolError(f"level index {index} does not fit one byte")
        return struct.pack("<BB", BY_INDEX, index)
    return struct.pack("<Bf", BY_ALPHA, alpha)


def parse_set_level(payload: bytes) -> tuple[int, int]:
    """-> (level index now active, cycles the switch took)."""
    _check(payload, SET_LEVEL, 6)
    index, cycles = struct.unpack_from("<BI", payload, 1)
    return index, cycles


def infer_payload(values) -> bytes:
    values = list(values)
    return struct.pack(f"<{len(values)}f", *values)


def parse_infer(payload: bytes) -> tuple[list[float], int]:
    """-> (output values, cycles the inference took)."""
    _check(payload, INFER, 5)
    (cycles,) = struct.unpack_from("<I", payload, 1)
    rest = payload[5:]
    if len(rest) % 4:
        raise ProtocolError(f"infer reply carries {len(rest)} output bytes, not whole float32 values")
    return list(struct.unpack(f"<{len(rest) // 4}f", rest)), cycles


STATS_FIELDS = ("frames_ok", "frames_bad", "inferences", "switches", "last_infer_cycles", "last_switch_cycles",
                "uploads_committed", "level", "repeats")
_STATS_V1 = struct.Struct("<IIIIIIIB")
_STATS = struct.Struct("<IIIIIIIBI")  # protocol 2 appends `repeats`


def parse_stats(payload: bytes) -> dict:
    """Device counters; `repeats` (requests answered from the kept reply) is absent from protocol-1 devices."""
    _check(payload, STATS, 1 + _STATS_V1.size)
    layout = _STATS if len(payload) >= 1 + _STATS.size else _STATS_V1
    return dict(zip(STATS_FIELDS, layout.unpack_from(payload, 1)))


def upload_begin_payload(total: int, crc: int) -> bytes:
    return struct.pack("<II", total, crc)


def upload_chunk_payload(offset: int, data: bytes) -> bytes:
    return struct.pack("<I", offset) + data


def _check(payload: bytes, command: int, minimum: int) -> None:
    if not payload:
        raise ProtocolError(f"empty reply to {COMMAND_NAMES.get(command, command)}")
    if payload[0] != OK:
        raise DeviceError(command, payload[0])
    if len(payload) < minimum:
        raise ProtocolError(f"reply to {COMMAND_NAMES.get(command, command)} is {len(payload)} bytes, expected >= {minimum}")
