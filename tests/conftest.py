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
