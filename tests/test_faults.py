"""Fault tolerance on the real host-sim firmware: a proxy that drops, flips and duplicates bytes (seeded), a reset in
the middle of an upload, and many level switches with flat memory on both sides.

At the issue's counts (10,000 frames, 100,000 switches); LCS_FAULT_FRAMES and LCS_SWITCHES change them (e.g. to
scale a quick local run down).
"""

from __future__ import annotations

import os
import random
import tracemalloc

import numpy as np
import pytest

from lcs import protocol as P
from lcs.artifact import open_artifact
from lcs.device import Device, DeviceTimeout, UploadError
from lcs.transport.faults import FaultyPort

pytestmark = [pytest.mark.slow, pytest.mark.tvm]

FAULT_FRAMES = int(os.environ.get("LCS_FAULT_FRAMES", "10000"))
SWITCHES = int(os.environ.get("LCS_SWITCHES", "100000"))
# host-sim answers in about a millisecond; a dropped byte is only noticed by a timeout, so keep them short. A reply
# that comes later than that is harmless: the resent frame is answered from the device's kept reply, not run again.
FAST = {command: 0.01 for command in P.COMMAND_NAMES}
UPLOAD_CHUNK = 64  # at 1 % byte faults a 1 KiB frame almost never arrives whole; 64 B frames do about half the time


@pytest.fixture
def running(hostsim_artifact):
    from lcs.transport.launch import start_host_sim

    _, binary = hostsim_artifact
    with start_host_sim(binary) as proc:
        yield proc


def other_weights(blob: bytes) -> bytes:
    """Another valid weight set of the same size (every parameter halved)."""
    return (np.frombuffer(blob, dtype=np.float32) * np.float32(0.5)).astype(np.float32).tobytes()


def check_outputs(dev, art, level: int, scale: float = 1.0) -> None:
    """The device's outputs at `level` equal the build's reference (scale 1: the artifact's own weights)."""
    ref = art.reference()
    x = ref["input"][0].reshape(-1).tolist()
    assert dev.set_level(index=level)[0] == level
    out, _ = dev.infer(x)
    if scale == 1.0:
        np.testing.assert_allclose(out, ref[f"level{level}"][0], atol=1e-4, rtol=0)
    else:
        assert np.abs(np.asarray(out) - ref[f"level{level}"][0]).max() > 1e-3  # really other weights


def test_faulty_link_never_commits_corrupt_weights_or_wrong_levels(hostsim_artifact, running):
    lcsa, _ = hostsim_artifact
    art = open_artifact(lcsa)
    good = art.read("firmware/weights.bin")
    sets = {P.crc32(good): good, P.crc32(other_weights(good)): other_weights(good)}
    proxies = []
    # 64-byte chunks arrive whole (both ways) about 40 % of the time at 1 % byte faults: allow many resends
    dev = Device.open(running.url, retries=40, backoff=0.001, max_backoff=0.01, timeouts=FAST,
                      port_wrapper=lambda port: proxies.append(FaultyPort(port, rate=0.01, seed=7)) or proxies[0])
    proxy = proxies[0]
    dev.settle_s = 0.002
    frames = {"->": 0, "<-": 0}
    dev.trace = lambda direction, data: data.startswith(P.SYNC) and frames.__setitem__(direction, frames[direction] + 1)
    rng = random.Random(3)
    with dev:
        info = dev.hello()
        held = info.weights_crc
        answered = timeouts = uploads = 0
        wrong_levels = []
        while frames["->"] + frames["<-"] < FAULT_FRAMES:
            roll = rng.random()
            try:
                if roll < 0.001 or not uploads:  # a whole weight set, alternating between two valid ones
                    blob = sets[next(c for c in sets if c != held)]
                    try:
                        held = dev.upload_weights(blob, chunk=UPLOAD_CHUNK)
                        uploads += 1
                        assert dev.hello().weights_crc == held
                    except UploadError:
                        held = dev.hello().weights_crc  # gave up: the device runs one of the two sets, intact
                    assert held in sets, f"the device runs weights with CRC {held:08x}: a corrupt set was committed"
                elif roll < 0.8:
                    want = rng.randrange(info.levels)
                    active, _ = dev.set_level(index=want)
                    if active != want:
                        wrong_levels.append((want, active))
                    stats = dev.stats()
                    if stats["level"] != want:
                        wrong_levels.append((want, stats["level"]))
                else:
                    out, _ = dev.infer([0.0] * info.input_len)
                    assert len(out) == info.output_len and all(np.isfinite(out))
                answered += 1
            except DeviceTimeout as exc:
                assert "no reply to" in str(exc)  # a clear timeout, never a wrong answer
                timeouts += 1
        proxy.enabled = False
        assert wrong_levels == []
        assert uploads >= 1 and dev.retried > 0 and proxy.counts.faults > 0.005 * proxy.counts.bytes
        assert answered > 0.95 * (answered + timeouts)
        assert dev.stats()["repeats"] > 0  # lost replies were resent from the device's kept reply, not run again
        # the running set is a committed one, intact: outputs equal the reference (or clearly differ for the other)
        final = dev.hello().weights_crc
        assert final == held
        check_outputs(dev, art, 2, 1.0 if final == P.crc32(good) else 0.5)


def test_reset_in_the_middle_of_an_upload(hostsim_artifact, running):
    lcsa, _ = hostsim_artifact
    art = open_artifact(lcsa)
    good = art.read("firmware/weights.bin")
    other = other_weights(good)
    with Device.open(running.url, timeouts={P.HELLO: 1.0}) as dev:
        dev.hello()
        # a link that dies half way: the device keeps running its last good weights
        dev.upload_weights(other, chunk=1000, stop_after=5)
        assert dev.hello().weights_crc == P.crc32(good)
        check_outputs(dev, art, 1)

        resets = []

        def reset_once(done: int) -> None:
            if not resets and done >= len(other) // 2:
                resets.append(done)
                dev.reset()  # the device restarts with its image; the upload's state is gone

        assert dev.upload_weights(other, chunk=1000, progress=reset_once) == P.crc32(other)
        assert resets and dev.uploads_restarted == 1  # the host noticed and started again
        assert dev.hello().weights_crc == P.crc32(other)
        check_outputs(dev, art, 1, 0.5)
        assert dev.stats()["uploads_committed"] == 1


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_many_level_switches_keep_memory_flat(hostsim_artifact, running):
    with Device.open(running.url) as dev:
        info = dev.hello()
        levels = info.levels

        def switch(n: int, offset: int) -> None:
            for i in range(n):
                want = (offset + i) % levels
                assert dev.set_level(index=want)[0] == want

        switch(500, 0)  # warm up: every level's buffers touched once
        device_before = vm_rss_kib(running.process.pid)
        tracemalloc.start()
        try:
            switch(200, 500)
            host_before = tracemalloc.get_traced_memory()[0]
            switch(SWITCHES, 700)
            host_after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        device_after = vm_rss_kib(running.process.pid)
        stats = dev.stats()
    assert stats["switches"] >= 700 + SWITCHES and stats["frames_bad"] == 0
    assert host_after - host_before < 64 * 1024, (host_before, host_after)
    assert device_after - device_before <= 64, (device_before, device_after)  # KiB: pages, not per-switch growth
