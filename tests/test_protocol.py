"""Host frame codec (lcs/protocol.py) and client (lcs/device.py) without a device: fixed vectors, a fake device on
pyserial's loop:// and a scripted one on a pty. The same vectors (conftest.py) are replayed against the C
firmware in test_firmware_hostsim.py."""

from __future__ import annotations

import binascii
import os
import struct
import threading
import tty

import pytest
import serial

from lcs import protocol as P
from lcs.device import Device, DeviceTimeout

@pytest.mark.parametrize("i", range(3))
def test_encode_matches_vectors(protocol_vectors, i):
    frame_type, seq, payload, frame = protocol_vectors[i]
    assert P.encode(frame_type, seq, payload) == frame


def test_hello_vector_crc_is_zlib_crc32():
    # the first vector is spelled out completely: crc32(01 01 00 00) == 0x983ad24e
    assert binascii.crc32(bytes.fromhex("01010000")) == 0x983AD24E


def test_decoder_handles_split_garbage_and_several_frames():
    frames = P.encode(0x81, 1, b"\x00abc") + P.encode(0x84, 2, b"\x00" * 5)
    dec = P.Decoder()
    out = []
    for b in b"\x00\xa5junk" + frames:  # byte by byte, after noise containing a lone 0xA5
        out += dec.feed(bytes([b]))
    assert [(f.type, f.seq, f.payload) for f in out] == [(0x81, 1, b"\x00abc"), (0x84, 2, b"\x00" * 5)]


def test_decoder_rejects_bad_crc_then_recovers():
    bad = bytearray(P.encode(0x81, 1, b"\x00xyz"))
    bad[-1] ^= 0xFF
    dec = P.Decoder()
    with pytest.raises(P.ProtocolError, match="bad CRC"):
        dec.feed(bytes(bad))
    assert dec.feed(P.encode(0x82, 2, b"\x00")) == [P.Frame(0x82, 2, b"\x00")]


def test_decoder_rejects_oversized_length():
    dec = P.Decoder(max_payload=16)
    with pytest.raises(P.ProtocolError, match="announces 100"):
        dec.feed(b"\xa5\x5a\x01\x01\x64\x00")


def test_payload_parsers():
    hello = (bytes([0]) + struct.pack("<BBBBIIHII16s", 1, 3, 6, 5, 64, 10, 1032, 100, 0xDEADBEEF, bytes(range(16)))
             + b"\x03abc" + b"\x02xy")
    info = P.parse_hello(hello)
    assert (info.family, info.levels, info.level, info.input_len, info.board, info.firmware_version) == \
        ("quantization", 6, 5, 64, "xy", "abc")
    out, cycles = P.parse_infer(b"\x00" + struct.pack("<I2f", 99, 1.5, -2.0))
    assert (out, cycles) == ([1.5, -2.0], 99)
    with pytest.raises(P.DeviceError, match="level out of range"):
        P.parse_set_level(bytes([P.OUT_OF_RANGE]))
    with pytest.raises(P.ProtocolError):
        P.parse_infer(b"\x00" + struct.pack("<I", 1) + b"\x01\x02")  # not whole floats
    with pytest.raises(ValueError):
        P.set_level_payload(index=1, alpha=0.5)


def test_stats_with_and_without_repeats():
    counters = (10, 1, 4, 3, 999, 55, 1)
    v2 = P.parse_stats(b"\x00" + struct.pack("<7IBI", *counters, 2, 6))
    assert v2 == dict(zip(P.STATS_FIELDS, (*counters, 2, 6)))
    v1 = P.parse_stats(b"\x00" + struct.pack("<7IB", *counters, 2))  # protocol 1 had no repeats counter
    assert "repeats" not in v1 and v1["level"] == 2 and v1["uploads_committed"] == 1


class FakeDevice(threading.Thread):
    """Answers like the firmware on the other end of a pty; drops the first `drop` requests (a lossy link)."""

    def __init__(self, fd: int, drop: int = 0) -> None:
        super().__init__(daemon=True)
        self.fd, self.drop, self.seen = fd, drop, []
        self.stop = False

    def run(self) -> None:
        dec = P.Decoder()
        while not self.stop:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            for frame in dec.feed(data):
                self.seen.append(frame)
                if self.drop:
                    self.drop -= 1
                    continue
                if frame.type == P.SET_LEVEL:
                    reply = bytes([P.OK]) + struct.pack("<BI", frame.payload[1], 1234)
                else:
                    reply = bytes([P.UNKNOWN_COMMAND])
                os.write(self.fd, P.encode(frame.type | P.REPLY, frame.seq, reply))


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_client_retries_lost_request_and_matches_seq(pty_pair):
    master, path = pty_pair
    fake = FakeDevice(master, drop=1)
    fake.start()
    with Device.open(path, timeouts={P.SET_LEVEL: 0.3}) as dev:
        assert dev.set_level(index=4) == (4, 1234)
        assert dev.set_level(index=2) == (2, 1234)
    fake.stop = True
    sent = [f for f in fake.seen if f.type == P.SET_LEVEL]
    assert len(sent) == 3 and sent[0] == sent[1]  # resent as the same frame, same seq: the device can tell a retry
    assert sent[2].seq == (sent[0].seq + 1) & 0xFF  # a new request gets the next seq


def test_client_reports_device_error_and_timeout(pty_pair):
    master, path = pty_pair
    fake = FakeDevice(master)
    fake.start()
    with Device.open(path, retries=0, timeouts={P.STATS: 0.2}) as dev:
        with pytest.raises(P.DeviceError, match="unknown command"):
            dev.stats()
        fake.drop = 5
        with pytest.raises(DeviceTimeout, match="no reply to stats"):
            dev.stats()
    fake.stop = True


def test_loop_url_roundtrip():
    port = serial.serial_for_url("loop://", timeout=0.1)
    port.write(P.encode(P.INFER | P.REPLY, 9, b"\x00" + struct.pack("<If", 5, 0.25)))
    dev = Device(port)
    frame = dev.read_frame(1.0)
    assert frame.seq == 9 and P.parse_infer(frame.payload) == ([0.25], 5)
