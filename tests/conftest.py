"""Shared fixtures. Data sets are bundled in packages, so every fixture runs offline.

The trained-and-built models here are cached by their arguments in a folder every pytest-xdist worker of the run
shares (`shared`): every test file that needs "a tiny model built for board X" asks `tiny_build` (or
`hostsim_artifact`), so each is trained and compiled once per run, by whichever worker asks first."""

from __future__ import annotations

import binascii
import os
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from filelock import FileLock

from lcs.config import DataConfig
from lcs.data import load_data

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# scripts/test.sh runs two workers on a two-core machine: one torch thread each, or the four contend for two cores
torch.set_num_threads(1 if XDIST_WORKER else min(2, torch.get_num_threads()))

_GPU_DESELECTED = {"count": 0}

# The slowest files, started first (seconds in one process on the 2-core machine, loaded, 2026-12-07; the arm64
# root's download comes first, as it leaves the cores to the other worker). `scripts/test.sh` runs `-n 2 --dist
# loadfile --no-loadscope-reorder`: whole files go to the two workers in collection order, so the long ones start
# first and the short ones fill in at the end. Files not listed follow in their usual order.
SLOWEST_FIRST = ("test_rasp4_qemu.py",  # 68 s, most of it downloading and unpacking the arm64 root (fresh machine)
                 "test_tvm_build.py",  # 147 s
                 "test_vendor_boards.py",  # 95 s (+ its share of the tiny width-8 model)
                 "test_faults.py",  # 67 s
                 "test_link_defaults.py",  # 50 s, mostly waiting on timeouts: overlaps well
                 "test_simulate_optimum.py",  # 41 s
                 "test_firmware_qemu.py", "test_firmware_int8.py", "test_cli.py", "test_rpc_deploy.py",
                 "test_runtime.py", "test_deploy.py", "test_firmware_hostsim.py", "test_accel.py", "test_hostile.py", "test_train.py", "test_int8.py")


def pytest_collection_modifyitems(config, items):
    """Slowest files first (a stable sort: tests keep their order within a file). Tests marked `gpu` are deselected
    (not skipped) where torch sees no CUDA device, and counted."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        _GPU_DESELECTED["count"] = len(gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=gpu)
        if hasattr(config, "workeroutput"):  # an xdist worker: it tells the controller, which prints the summary
            config.workeroutput["gpu_deselected"] = len(gpu)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist's controller collects nothing itself; every worker collected (and deselected) the same tests."""
    _GPU_DESELECTED["count"] = max(_GPU_DESELECTED["count"], getattr(node, "workeroutput", {}).get("gpu_deselected", 0))


def pytest_terminal_summary(terminalreporter):
    if _GPU_DESELECTED["count"]:
        terminalreporter.write_line(f"gpu: {_GPU_DESELECTED['count']} test(s) deselected: no CUDA device here "
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
def shared(tmp_path_factory) -> Callable[[str, Callable[[Path], object]], Path]:
    """(name, make) -> a folder of this run that `make(folder)` filled, once for all xdist workers: the first worker
    to ask makes it (in a temporary folder, renamed when complete) while a file lock holds the others back."""
    root = tmp_path_factory.getbasetemp()
    root = (root.parent if XDIST_WORKER else root) / "shared"  # the workers' basetemps are folders of the run's
    root.mkdir(exist_ok=True)

    def get(name: str, make: Callable[[Path], object]) -> Path:
        done = root / name
        with FileLock(root / f"{name}.lock"):
            if not done.is_dir():
                part = root / f"{name}.part"
                shutil.rmtree(part, ignore_errors=True)
                part.mkdir()
                make(part)
                part.rename(done)
        return done

    return get


@pytest.fixture(scope="session")
def train_tiny(shared):
    """(family, shape, width, norm=) -> a checkpoint trained one epoch on digits; trained once per run
    (norm="batch": the int8 path's model, BatchNorm folded into the convs)."""

    def train(family: str = "unstructured", shape: str = "line", width: int = 4, norm: str | None = None) -> Path:
        name = f"{family}-{shape}-{width}-{norm}.safetensors"

        def make(folder: Path) -> None:
            import warnings

            from lcs import commands

            config, data = commands.train_config(data_source="digits", family=family, shape=shape, width=width,
                                                 epochs=1, batch_size=256, norm=norm)
            with warnings.catch_warnings():  # BatchNorm's shared statistics warn; the int8 path folds them
                warnings.simplefilter("ignore")
                commands.train(config, data, folder / name, threads=1, progress=False)

        return shared(f"tiny-{family}-{shape}-{width}-{norm}", make) / name

    return train


@pytest.fixture(scope="session")
def tiny_build(train_tiny, shared):
    """(target, family, levels, shape=, width=, strategy=) -> an artifact built by `lcs build`; once per run."""

    def build(target: str, family: str, levels: str, *, shape: str = "line", width: int = 4,
              strategy: str = "per-level") -> Path:
        name = f"{target}-{family}.lcsa"

        def make(folder: Path) -> None:
            from tvm_build.build import build as lcs_build

            lcs_build(train_tiny(family, shape, width), target, folder / name, levels=levels, strategy=strategy,
                      progress=False)

        key = "-".join([target, family, levels, shape, str(width), strategy]).replace("=", "").replace(",", "_")
        return shared(f"built-{key}", make) / name

    return build


@pytest.fixture(scope="session")
def hostsim_artifact(train_tiny, shared):
    """A tiny unstructured LCS+P subspace (width 8) built as host-sim firmware with three levels:
    (artifact, firmware binary)."""

    def make(folder: Path) -> None:
        from tvm_build.mcu.build import build_firmware

        build_firmware(train_tiny("unstructured", "point", 8), "host-sim", [0.05, 0.25, 1.0], folder)

    folder = shared("hostsim-fw", make)
    return folder / "host-sim.lcsa", folder / "firmware-host-sim"


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
