"""Hostile and heavy input (issue 14): every class answered in one `error:` line, exit 2, no traceback, nothing
left behind; no code from data runs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from lcs.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, *needles):
    """One line starting `error:`, exit 2, and no exception escaped (CliRunner would hold it)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- 1. a CIFAR-10 batch never runs code ----------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what an attacker's batch does: call os.system on load
        return os.system, (f"touch {self.marker}",)


def _cifar(root, batch_override=None, protocol=pickle.DEFAULT_PROTOCOL):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"x", b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, 4)], b"filenames": [b"a.png"] * 4}
        if batch_override and name in batch_override:
            batch = batch_override[name]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_plain_cifar_batches_load_through_the_restricted_unpickler(tmp_path, protocol):
    from lcs.config import DataConfig
    from lcs.data import load_data

    d = load_data(DataConfig(f"cifar10:{_cifar(tmp_path, protocol=protocol)}"))
    assert (d.info.train_size, d.info.test_size) == (20, 4)
    x, y = d.test[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 10


def test_crafted_cifar_batch_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = {b"data": _Payload(marker), b"labels": [0]}
    root = _cifar(tmp_path / "c", {"data_batch_3": evil})
    out = tmp_path / "out.safetensors"
    line = refused(run("train", "--data", f"cifar10:{root}", "--epochs", "1", "-o", out, "--no-progress"),
                   "data_batch_3")
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
