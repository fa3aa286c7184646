"""Shared fixtures. Data sets are bundled in packages, so every fixture runs offline."""

from __future__ import annotations

import pytest
import torch

from lcs.config import DataConfig
from lcs.data import load_data

torch.set_num_threads(min(2, torch.get_num_threads()))

_GPU_DESELECTED: list = []


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are deselected (not skipped) where torch sees no CUDA device, and counted."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        _GPU_DESELECTED.extend(gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=gpu)


def pytest_terminal_summary(terminalreporter):
    if _GPU_DESELECTED:
        terminalreporter.write_line(f"gpu: {len(_GPU_DESELECTED)} test(s) deselected: no CUDA device here "
                                    "(scripts/gpu-check.sh runs them on a GPU machine)")


@pytest.fixture(scope="session")
def digits():
    return load_data(DataConfig("digits"))


@pytest.fixture(scope="session")
def digits_batch(digits):
    return torch.stack([digits.test[i][0] for i in range(32)])


@pytest.fixture(scope="session")
def hostsim_artifact(tmp_path_factory):
    """A tiny unstructured subspace trained on digits (1 epoch, point shape), built as host-sim firmware."""
    from lcs import commands
    from tvm_build.mcu.build import build_firmware

    tmp = tmp_path_factory.mktemp("deploy")
    config, data = commands.train_config(data_source="digits", epochs=1, width=8, shape="point")
    commands.train(config, data, tmp / "ck.safetensors", threads=1, progress=False)
    build = build_firmware(tmp / "ck.safetensors", "host-sim", [0.05, 0.25, 1.0], tmp / "fw")
    return build.artifact, build.binary
