"""Shared fixtures. Data sets are bundled in packages, so every fixture runs offline.

The trained-and-built models here are session-wide and cached by their arguments: every test file that needs "a tiny
model built for board X" asks `tiny_build` (or `hostsim_artifact`), so each is trained and compiled once per run."""

from __future__ import annotations

import binascii
import struct
from pathlib import Path

import numpy as np
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


# -- one-line errors -----------------------------------------------------------------------------------------

def _one_line_error(result, *needles):
    """A click result that failed the house way: exit 2, one line on stderr starting `error: `, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def one_line_error():
    return _one_line_error


# -- tiny trained models, built for a board ------------------------------------------------------------------

@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """(family, shape, width, norm=) -> a checkpoint trained one epoch on digits; trained once per session
    (norm="batch": the int8 path's model, BatchNorm folded into the convs)."""
    cache: dict = {}

    def train(family: str = "unstructured", shape: str = "line", width: int = 4, norm: str | None = None) -> Path:
        key = (family, shape, width, norm)
        if key not in cache:
            import warnings

            from lcs import commands

            path = tmp_path_factory.mktemp("tiny") / f"{family}-{shape}-{width}-{norm}.safetensors"
            config, data = commands.train_config(data_source="digits", family=family, shape=shape, width=width,
                                                 epochs=1, batch_size=256, norm=norm)
            with warnings.catch_warnings():  # BatchNorm's shared statistics warn; the int8 path folds them
                warnings.simplefilter("ignore")
                commands.train(config, data, path, threads=1, progress=False)
            cache[key] = path
        return cache[key]

    return train


@pytest.fixture(scope="session")
def tiny_build(train_tiny, tmp_path_factory):
    """(target, family, levels, shape=, width=, strategy=) -> an artifact built by `lcs build`; once per session."""
    cache: dict = {}

    def build(target: str, family: str, levels: str, *, shape: str = "line", width: int = 4,
              strategy: str = "per-level") -> Path:
        key = (target, family, levels, shape, width, strategy)
        if key not in cache:
            from tvm_build.build import build as lcs_build

            out = tmp_path_factory.mktemp("built") / f"{target}-{family}.lcsa"
            lcs_build(train_tiny(family, shape, width), target, out, levels=levels, strategy=strategy,
                      progress=False)
            cache[key] = out
        return cache[key]

    return build


@pytest.fixture(scope="session")
def hostsim_artifact(train_tiny, tmp_path_factory):
    """A tiny unstructured LCS+P subspace (width 8) built as host-sim firmware with three levels:
    (artifact, firmware binary)."""
    from tvm_build.mcu.build import build_firmware

    build = build_firmware(train_tiny("unstructured", "point", 8), "host-sim", [0.05, 0.25, 1.0],
                           tmp_path_factory.mktemp("hostsim-fw"))
    return build.artifact, build.binary


# -- firmware checks -----------------------------------------------------------------------------------------

def _tiny_checkpoint(family: str, seed: int = 0):
    """A width-4 small CNN on 8x8 input, LCS+L, untrained, with activation ranges as training would leave them."""
    from lcs.checkpoint import Checkpoint
    from lcs.config import ModelConfig, RunConfig, SubspaceConfig
    from lcs.models import build_model
    from lcs.subspace.model import SubspaceModel

    torch.manual_seed(seed)
    mc = ModelConfig(width=4, image_size=8)
    sc = SubspaceConfig(family=family)
    model = SubspaceModel(build_model(mc), sc).eval()
    for layer in model.weight_layers():
        layer.act_range.lo.fill_(-1.0)
        layer.act_range.hi.fill_(2.0)
        layer.act_range.seen.fill_(True)
    return Checkpoint(RunConfig(model=mc, subspace=sc), model)


@pytest.fixture(scope="session")
def tiny_checkpoint():
    return _tiny_checkpoint


def firmware_tolerance(level) -> float:
    """fp32 levels: 1e-6 (the device blends, masks and quantizes the weights bit-identically to torch; only the
    kernels' summation order differs, measured <= 2.1e-7). Quantized levels quantize activations too: TVM's group
    norm rounds differently from torch's in the last bit, and a value that close to a grid boundary lands on the
    neighbouring grid point (one activation step, ~1e-4 at the output). Bit-exactness is checked between boards."""
    return 1e-6 if level.bits is None else 1e-3


def _check_levels(dev, result) -> list[list[list[float]]]:
    """Every level of a firmware build on the device against torch's outputs; returns the device's outputs."""
    outputs = []
    for i, level in enumerate(result.levels):
        index, _ = dev.set_level(index=i)
        assert index == i
        outputs.append([])
        for k in range(len(result.inputs)):
            out, _ = dev.infer(result.inputs[k].reshape(-1).tolist())
            np.testing.assert_allclose(out, result.expected[i][k], atol=firmware_tolerance(level), rtol=0)
            outputs[-1].append(out)
    return outputs


@pytest.fixture(scope="session")
def check_levels():
    return _check_levels


# -- protocol vectors, shared by the host codec and the C side -----------------------------------------------

def _vectors():
    """(type, seq, payload, frame bytes); CRCs computed independently with binascii."""
    from lcs import protocol as P

    rows = [(P.HELLO, 1, b"", "a55a010100004ed23a98"),
            (P.SET_LEVEL, 7, bytes([0, 3]), "a55a020702000003" + "%08x"),
            (P.STATS, 255, b"", "a55a04ff0000" + "%08x")]
    out = []
    for frame_type, seq, payload, pattern in rows:
        body = struct.pack("<BBH", frame_type, seq, len(payload)) + payload
        crc = struct.pack("<I", binascii.crc32(body)).hex()
        out.append((frame_type, seq, payload, bytes.fromhex(pattern.replace("%08x", crc))))
    return out


@pytest.fixture(scope="session")
def protocol_vectors():
    return _vectors()
