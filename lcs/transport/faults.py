"""A fault-injecting proxy between the host and a serial port: drops, flips or duplicates bytes with a seeded RNG.

    dev = Device.open(url, port_wrapper=lambda port: FaultyPort(port, rate=0.01, seed=1))

Every byte that passes (either direction) is, with probability `rate`, dropped, XOR-ed with a random non-zero value,
or sent twice (one third each). Counters say what happened, so a test can check that faults really occurred.
It wraps the few pyserial methods `lcs.device.Device` uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class FaultCounts:
    bytes: int = 0
    dropped: int = 0
    flipped: int = 0
    duplicated: int = 0

    @property
    def faults(self) -> int:
        return self.dropped + self.flipped + self.duplicated


class PortWrapper:
    """Passes the pyserial surface Device uses through to `port`; subclasses change what write/read do."""

    def __init__(self, port) -> None:
        self.port = port

    def write(self, data: bytes) -> int:
        return self.port.write(data)

    def read(self, size: int = 1) -> bytes:
        return self.port.read(size)

    @property
    def in_waiting(self) -> int:
        return self.port.in_waiting

    def flush(self) -> None:
        self.port.flush()

    def reset_input_buffer(self) -> None:
        self.port.reset_input_buffer()

    def close(self) -> None:
        self.port.close()


class FaultyPort(PortWrapper):
    def __init__(self, port, *, rate: float, seed: int = 0, directions: str = "both") -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {rate} is not a probability")
        self.port, self.rate, self.rng = port, rate, random.Random(seed)
        self.to_device = directions in ("both", "to-device")
        self.to_host = directions in ("both", "to-host")
        self.counts = FaultCounts()
        self.enabled = True

    def _mangle(self, data: bytes) -> bytes:
        if not self.enabled or not data:
            return data
        out = bytearray()
        rng, rate, counts = self.rng, self.rate, self.counts
        for byte in data:
            counts.bytes += 1
            if rng.random() >= rate:
                out.append(byte)
                continue
            kind = rng.randrange(3)
            if kind == 0:
                counts.dropped += 1
            elif kind == 1:
                counts.flipped += 1
                out.append(byte ^ rng.randrange(1, 256))
            else:
                counts.duplicated += 1
                out += bytes((byte, byte))
        return bytes(out)

    # -- what the faults change ----------------------------------------------------------------------------
    def write(self, data: bytes) -> int:
        self.port.write(self._mangle(bytes(data)) if self.to_device else data)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        data = self.port.read(size)
        return self._mangle(data) if self.to_host else data
