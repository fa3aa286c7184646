"""Shared fixtures. Data sets are bundled in packages, so every fixture runs offline."""

from __future__ import annotations

import pytest
import torch

from lcs.config import DataConfig
from lcs.data import load_data

torch.set_num_threads(min(2, torch.get_num_threads()))


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
