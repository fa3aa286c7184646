"""The Raspberry Pi 4 artifact really runs: cross-compile for rasp4, run it with lcs.runtime in an arm64 Debian root
under qemu-user (aarch64 TVM wheel, runtime-only, no torch) and compare with x86.

The arm64 root is built once by scripts/arm64-root.sh (about 6 minutes, cached under LCS_CACHE_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

import tvm  # noqa: F401  (TVM is part of the test install: a missing one must fail, not skip)
pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.tvm]
ROOT = Path(__file__).resolve().parents[1]
DEVICE_FILES = ("__init__.py", "artifact.py", "atomic.py", "errors.py", "runtime.py")  # all a Pi needs of lcs


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "arm64-root.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=3600)
    assert proc.returncode == 0, f"scripts/arm64-root.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def artifacts(tiny_build):
    return tiny_build("rasp4", "structured", "0.0,1.0"), tiny_build("host", "structured", "0.0,1.0")


def run_in_arm64(arm64_root, artifact: Path, body: str) -> dict:
    """Run `body` (Python; `rt` is lcs.runtime's Runtime on `artifact`, built for rasp4) in the arm64 root under
    qemu-user with lcs's device files only (no torch); returns the JSON its last line prints."""
    work = Path("root") / f"lcs-test-{uuid.uuid4().hex[:8]}"
    inside = arm64_root / work
    (inside / "lcs").mkdir(parents=True)
    try:
        for name in DEVICE_FILES:
            shutil.copy(ROOT / "lcs" / name, inside / "lcs" / name)
        shutil.copy(artifact, inside / "a.lcsa")
        script = textwrap.dedent(f"""
            import json, platform, sys
            sys.path.insert(0, "/{work}")
            from lcs.runtime import Runtime
            rt = Runtime("/{work}/a.lcsa", expect_target="rasp4")
        """) + textwrap.dedent(body)
        (inside / "run.py").write_text(script)
        proc = subprocess.run(["chroot", str(arm64_root), "/usr/bin/env", "TVM_USE_RUNTIME_LIB=1",
                               "/root/venv/bin/python", f"/{work}/run.py"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def test_rasp4_artifact_runs_under_qemu(arm64_root, artifacts):
    from lcs.runtime import Runtime

    rasp4, host = artifacts
    result = run_in_arm64(arm64_root, rasp4, """
        ref = rt.artifact.reference()
        outs = [[rt.run(x, level=i).tolist() for x in ref["input"]] for i in range(len(rt.levels))]
        try:
            import torch
            has_torch = True
        except ImportError:
            has_torch = False
        print(json.dumps({"machine": platform.machine(), "torch": has_torch, "outs": outs}))
    """)
    assert result["machine"] == "aarch64" and result["torch"] is False
    x86 = Runtime(host)
    ref = x86.artifact.reference()
    for level, outs in enumerate(result["outs"]):
        pi = np.asarray(outs, dtype=np.float32)
        here = np.stack([x86.run(x, level=level) for x in ref["input"]])
        diff = float(np.abs(pi - here).max())
        assert diff <= 1e-4, f"level {level}: aarch64 vs x86 differ by {diff}"
        assert float(np.abs(pi - ref[f"level{level}"]).max()) <= 1e-4


def test_rasp4_int8_artifact_runs_under_qemu(arm64_root, train_tiny, tmp_path):
    """`lcs build --target rasp4 --int8`: the NEON int8 levels, run by lcs.runtime on aarch64, equal the integer
    reference stored in the artifact exactly."""
    from tvm_build.build import build

    art = tmp_path / "rasp4-int8.lcsa"
    manifest = build(train_tiny("quantization"), "rasp4", art, levels="bits=4,bits=8", int8=True, progress=False)
    assert manifest["int8"]["isa"] == "neon" and "-mcpu=cortex-a72" in manifest["int8"]["compiler"]
    result = run_in_arm64(arm64_root, art, """
        print(json.dumps({"executors": rt.executors, "diffs": rt.check()}))
    """)
    assert result == {"executors": ["int8", "int8"], "diffs": [0.0, 0.0]}
