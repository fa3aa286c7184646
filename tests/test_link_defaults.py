"""`lcs deploy --device` with its own defaults over a link that faults 1 % of bytes (issue 14): the adaptive link in
`lcs.device` (timeouts learned from the replies, resends until the command's budget, chunks that shrink on errors
and an upload that resumes from the last acknowledged chunk) completes the upload and answers every level switch in
under a second. Nothing here sets a chunk size, a retry count or a timeout."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from lcs import protocol as P
from lcs.artifact import open_artifact
from lcs.deploy import deploy
from lcs.device import Device
from lcs.transport.launch import started_firmware
from lcs.transport.faults import FaultyPort, PortWrapper

pytestmark = [pytest.mark.slow, pytest.mark.tvm]

SWITCHES = 1000


def faulty(proxies: list, seed: int):
    def wrap(port):
        proxies.append(FaultyPort(port, rate=0.01, seed=seed))
        return proxies[-1]

    return wrap


def test_deploy_defaults_survive_one_percent_byte_faults(hostsim_artifact):
    lcsa, _ = hostsim_artifact
    art = open_artifact(lcsa)
    good = art.read(art.manifest.firmware.weights)
    other = (np.frombuffer(good, dtype=np.float32) * np.float32(0.5)).astype(np.float32).tobytes()
    with started_firmware(lcsa, "host-sim") as url:
        with Device.open(url) as dev:  # a clean link first: the device runs other weights, so the upload matters
            dev.upload_weights(other)
            assert dev.hello().weights_crc == P.crc32(other)

        proxies: list[FaultyPort] = []
        # the CLI's deploy() with nothing but the proxy between it and the port
        report = deploy(lcsa, device=url, progress=False, device_options={"port_wrapper": faulty(proxies, 11)})
        proxy = proxies[0]
        assert proxy.counts.faults > 0.005 * proxy.counts.bytes  # faults really happened, on every kind of frame
        assert report.passed and report.uploaded_bytes == len(good)
        assert report.weights_crc == f"{P.crc32(good):08x}" and report.retries > 0

        with Device.open(url) as dev:  # verified over a clean link: the device holds exactly the artifact's set
            info = dev.hello()
            assert info.weights_crc == P.crc32(good)
            x = art.reference()["input"][0].reshape(-1).tolist()
            for level in art.levels:
                dev.set_level(index=level.index)
                out, _ = dev.infer(x)
                np.testing.assert_allclose(out, art.expected(art.reference(), level)[0], atol=1e-4, rtol=0)

        proxies.clear()
        rng = random.Random(5)
        slowest, resent_before = 0.0, 0
        with Device.open(url, port_wrapper=faulty(proxies, 12)) as dev:
            info = dev.hello()
            current = info.level
            for _ in range(SWITCHES):
                want = (current + rng.randrange(1, info.levels)) % info.levels  # always a real switch
                started = time.monotonic()
                active, _ = dev.set_level(index=want)
                slowest = max(slowest, time.monotonic() - started)
                assert active == want
                current = want
            resent = dev.retried - resent_before
        assert proxies[0].counts.faults > 0.005 * proxies[0].counts.bytes
        assert resent > 0  # replies were lost and resent ...
        assert slowest < 1.0, slowest  # ... and still no switch took a second
        print(f"upload {report.uploaded_bytes} B in {report.upload_s:.2f} s; {SWITCHES} switches, {resent} resent, "
              f"slowest {1000 * slowest:.0f} ms")


class Blackout(PortWrapper):
    """Passes bytes through, except that replies are lost while `until` is in the future (a link gone quiet)."""

    def __init__(self, port) -> None:
        super().__init__(port)
        self.until = 0.0

    def read(self, size: int = 1) -> bytes:
        data = self.port.read(size)
        return b"" if time.monotonic() < self.until else data


def test_upload_resumes_from_the_last_acknowledged_chunk(hostsim_artifact):
    """Replies vanish for longer than a chunk's whole budget half way through an upload: the host asks the device
    where it is and goes on from there; the upload is not started over."""
    lcsa, _ = hostsim_artifact
    art = open_artifact(lcsa)
    good = art.read(art.manifest.firmware.weights)
    other = (np.frombuffer(good, dtype=np.float32) * np.float32(0.5)).astype(np.float32).tobytes()
    links: list[Blackout] = []
    begins = []
    with started_firmware(lcsa, "host-sim") as url, \
            Device.open(url, port_wrapper=lambda port: links.append(Blackout(port)) or links[0],
                        timeouts={P.UPLOAD_CHUNK: 0.1}) as dev:
        dev.trace = lambda direction, data: direction == "->" and data[2] == P.UPLOAD_BEGIN and begins.append(1)
        dev.hello()
        quiet = []

        def half_way(done: int) -> None:
            if not quiet and done >= len(other) // 2:
                quiet.append(done)
                links[0].until = time.monotonic() + 0.6  # > 3 x 0.1 s: the chunk in flight times out

        assert dev.upload_weights(other, progress=half_way) == P.crc32(other)
        assert quiet and dev.uploads_restarted == 0 and len(begins) == 1
        assert dev.hello().weights_crc == P.crc32(other)
