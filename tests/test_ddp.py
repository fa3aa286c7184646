"""Training under torchrun with DDP: two CPU processes, gloo."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcs import checkpoint
from lcs.evaluate import accuracy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_two_processes_trains_one_checkpoint(tmp_path, digits):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lcs", "train", "--data", "digits", "--epochs", "6", "--batch-size", "32", "--no-progress",
           "-o", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 writes and reports
    ck = checkpoint.load(out)
    ck.model.set_alpha(1.0)
    assert accuracy(ck.model, digits.test) > 0.25  # chance is 0.1
