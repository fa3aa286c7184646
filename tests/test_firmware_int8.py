"""int8 firmware (`lcs build --int8`): every level runs the integer kernels behind main.c's wire protocol, and the
device's answers equal the host integer reference bit for bit (deploy's self-test at tolerance 0) on host-sim and
under QEMU; the micro:bit runs one within its 16 KB of RAM."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lcs.artifact import open_artifact
from lcs.cli import cli
from lcs.int8.firmware_c import device_input
from lcs.int8.graph import Graph, Tensor

LEVELS = "0.1,0.5,1.0"


def _cli(*args):
    with warnings.catch_warnings():  # a BatchNorm checkpoint warns on every load
        warnings.simplefilter("ignore")
        return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bn_checkpoint(train_tiny):
    return train_tiny("unstructured", "point", 4, norm="batch")


def _build_and_deploy(ckpt, target, tmp_path, *extra):
    out = tmp_path / f"{target}.lcsa"
    built = _cli("build", ckpt, "--target", target, "--int8", "--levels", LEVELS, "-o", out, "--no-progress", "--json",
                 *extra)
    assert built.exit_code == 0, built.output
    deployed = _cli("deploy", out, "--sim", target, "--json", "--no-progress")
    assert deployed.exit_code == 0, deployed.output
    return open_artifact(out), json.loads(deployed.stdout[deployed.stdout.index("{"):])


def _check(art, report):
    fw = art.manifest.raw["firmware"]
    assert art.manifest.firmware.precision == "int8"
    assert fw["int8"]["calibration"] == {"source": "digits", "split": "train", "samples": 256}
    # each level's accuracy measured with the integer reference on the test split (one epoch leaves it near chance)
    assert all(0.0 <= lv.accuracy <= 1.0 for lv in art.levels)
    assert report["passed"] and len(report["levels"]) == 3
    for lv in report["levels"]:
        assert lv["max_abs_error"] == 0.0 and lv["tolerance"] == 0.0  # bit-identical to the integer reference
        assert lv["switch_cycles"] is not None
    return fw


def test_int8_firmware_on_host_sim_equals_the_integer_reference(bn_checkpoint, tmp_path):
    """The derived store (LCS+P: the codes once, each level materialized in RAM at its switch), bit for bit."""
    art, report = _build_and_deploy(bn_checkpoint, "host-sim", tmp_path, "--int8-store", "derived")
    fw = _check(art, report)
    assert fw["int8"]["sparse_layers"][0]  # the 90 %-sparse level runs the sparse kernel, on entries built in RAM
    assert fw["int8"]["store_bytes"] == fw["weight_bytes"]
    store = fw["int8"]["store"]
    assert store["mode"] == "derived" and store["requested"] == "derived" and store["ram_buffer_bytes"] > 0, store
    # every level's data in one copy of the codes: far below 3 levels x 1 B (the tiny model's per-channel
    # numbers weigh more than ResNet-8's, where the store is 1.06 B per weight)
    assert fw["int8"]["bytes_per_model_weight"] < 1.5
    assert "precision int8" in _cli("info", art.path).output


@pytest.mark.qemu
@pytest.mark.parametrize("target", ["mps2-an386", "mps2-an385", "microbit"])  # DSP, portable, M0 (no unaligned loads)
def test_int8_derived_store_under_qemu_equals_the_integer_reference(bn_checkpoint, target, tmp_path):
    art, report = _build_and_deploy(bn_checkpoint, target, tmp_path, "--int8-store", "derived")
    fw = _check(art, report)
    assert fw["int8"]["store"]["mode"] == "derived"
    assert report["levels"][-1]["switch_cycles"] <= 0.01 * report["levels"][-1]["infer_cycles"]  # dense: from flash


@pytest.fixture(scope="module")
def quant_checkpoint(train_tiny):
    return train_tiny("quantization", "point", 4, norm="batch")


@pytest.mark.parametrize("target", ["host-sim", pytest.param("mps2-an386", marks=pytest.mark.qemu)])
def test_int8_quantization_levels_derived_at_switch_equal_the_integer_reference(quant_checkpoint, target, tmp_path):
    """LCS+P quantization: the 3- and 5-bit levels regridded from the stored 8-bit codes at each switch, bit for bit."""
    art, report = _build_and_deploy(quant_checkpoint, target, tmp_path, "--int8-store", "derived")
    fw = _check(art, report)
    store = fw["int8"]["store"]
    assert store["mode"] == "derived" and store["ram_buffer_bytes"] > 0 and "thresholds_kept" not in store, store
    assert fw["int8"]["bytes_per_model_weight"] < 1.5  # one copy of the codes (the tiny model's scales weigh more)
    if target != "host-sim":  # the 3- and 5-bit levels are built at the switch; the 8-bit one reads flash
        assert all(lv["switch_cycles"] > 100 for lv in report["levels"][:2])
        assert report["levels"][-1]["switch_cycles"] <= 0.01 * report["levels"][-1]["infer_cycles"]


def test_int8_store_auto_takes_ready_where_the_level_buffer_does_not_fit(bn_checkpoint, tmp_path, monkeypatch):
    """The RAM check: a board with room for the ready store but not for the derived store's level buffer gets the
    ready store, and the manifest says why with the numbers; asking for derived there is one clear error."""
    import dataclasses

    import targets
    from lcs.errors import LcsError
    from tvm_build.mcu import build_int8

    monkeypatch.setattr(build_int8, "SWITCH_LIMIT", 100.0)  # the tiny model's switch estimate is not the point here
    from lcs.checkpoint import load

    host = targets.load("mps2-an386")  # compiled, not run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = load(bn_checkpoint)
        mc = ckpt.config.model  # random calibration images: no data set to load, no accuracy to measure
        calib = (torch.rand(8, mc.in_channels, mc.image_size, mc.image_size), {"source": "random", "samples": 8})
        kw = {"measure": False, "write_artifact": False, "calibration": calib, "sparse_from": 0.75}  # one variant
        ready = build_int8.build_int8_firmware(ckpt, host, [0.1, 1.0], tmp_path / "r", store="ready", **kw)
        tight = dataclasses.replace(host, ram_bytes=ready.sizes.ram + 64)
        auto = build_int8.build_int8_firmware(ckpt, tight, [0.1, 1.0], tmp_path / "a", **kw)
        store = auto.int8["store"]
        assert store["mode"] == "ready" and auto.sizes.ram <= tight.ram_bytes
        assert "derived store's largest level needs a" in store["reason"] and "B RAM buffer" in store["reason"]
        assert f"> {tight.ram_bytes:,} B" in store["reason"], store["reason"]
        with pytest.raises(LcsError, match="--int8-store derived: the derived store's largest level needs"):
            build_int8.build_int8_firmware(ckpt, tight, [0.1, 1.0], tmp_path / "d", store="derived", **kw)


def test_int8_store_derived_refuses_a_model_that_is_not_lcs_p(one_line_error, train_tiny, tmp_path):
    line = train_tiny("unstructured", "line", 4)  # the checkpoint test_tvm_build trains too
    one_line_error(_cli("build", line, "--target", "host-sim", "--int8", "--int8-store", "derived", "--no-progress",
                        "-o", tmp_path / "l.lcsa"), "--int8-store derived: the derived store needs an LCS+P unstructured")
    one_line_error(_cli("build", line, "--target", "host-sim", "--fp32", "--int8-store", "ready", "-o",
                        tmp_path / "m.lcsa"), "--int8-store chooses the weight store of an int8 build; drop --fp32")


@pytest.mark.qemu
@pytest.mark.parametrize("target", ["mps2-an385", "mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547",
                                    "netduinoplus2", "microbit"])
def test_int8_firmware_under_qemu_equals_the_integer_reference(bn_checkpoint, target, tmp_path):
    art, report = _build_and_deploy(bn_checkpoint, target, tmp_path)
    fw = _check(art, report)
    assert fw["int8"]["dsp"] == (target not in ("mps2-an385", "microbit"))  # M3 and M0: the portable kernels
    if target == "microbit":  # issue 18: an int8 model within the micro:bit's 16 KB RAM / 256 KB flash
        assert fw["ram_bytes"] <= 16 * 1024 and fw["flash_bytes"] <= 256 * 1024
    store = fw["int8"]["store"]  # auto: the tiny model's switch would cost too much of its inference to derive
    assert store["mode"] == "ready" and "of an inference (limit 0.13" in store["reason"], store
    for lv in report["levels"]:  # switching picks a table: a few instructions, not a fraction of an inference
        assert lv["switch_cycles"] <= 0.01 * lv["infer_cycles"]


def test_group_norm_model_runs_int8_on_host_sim(train_tiny, tmp_path):
    """The project's default norm: GroupNorm runs as the integer GroupNorm kernel, bit for bit."""
    art, report = _build_and_deploy(train_tiny("unstructured", "point", 8), "host-sim", tmp_path)
    assert report["passed"] and all(lv["max_abs_error"] == 0.0 for lv in report["levels"])
    assert art.manifest.firmware.precision == "int8"


def test_device_input_rounds_half_to_even_in_float32():
    g = Graph({"x": Tensor("x", (1, 1, 4), scale=0.5), "y": Tensor("y", (2,), scale=1.0)}, [], "x", "y", True)
    x = np.array([[[[0.25, 0.75, -0.25, 70.0]]]], np.float32)  # 0.5, 1.5, -0.5 (ties) and a clamp
    assert device_input(g, x).ravel().tolist() == [0, 2, 0, 127]


def test_int8_store_refuses_a_linux_target(one_line_error, bn_checkpoint, tmp_path):
    """--int8 on a linux board builds C integer kernels (tests/test_cpu_int8.py); a firmware weight store is no
    part of that build."""
    one_line_error(_cli("build", bn_checkpoint, "--target", "host", "--int8-store", "ready", "-o", tmp_path / "a.lcsa"),
                   "--int8-store chooses a firmware weight store")


@pytest.mark.slow  # trains a width-32 model and links it
def test_int8_build_refuses_what_does_not_fit_the_microbit(train_tiny, tmp_path):
    """issue 18: refused with the numbers (two dense int8 levels of ~130 k weights are over 256 KB of flash)."""
    big = train_tiny("unstructured", "point", 32, norm="batch")
    result = _cli("build", big, "--target", "microbit", "--int8", "--levels", "0.5,1.0", "-o", tmp_path / "b.lcsa")
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]  # after the one progress line
    assert last.startswith("error: the model does not fit microbit (262,144 B flash, 16,384 B RAM)"), last
    assert "B over" in last
    assert not (tmp_path / "b.lcsa").exists()


def test_int8_derived_store_builds_levels_only_from_a_checked_weight_set(bn_checkpoint, tmp_path):
    """main.c's upload flow with the derived store: a half-received weight set never reaches a level (a switch rebuilds
    from the running, checked set); a committed one is what the level is rebuilt from (its level-0 output scale
    doubled in the upload: the answers double, exactly)."""
    import struct

    import targets
    from lcs import protocol as P
    from lcs.checkpoint import load
    from lcs.device import Device
    from lcs.transport.launch import start
    from tvm_build.mcu.build_int8 import build_int8_firmware

    board = targets.load("host-sim")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = load(bn_checkpoint)
    mc = ckpt.config.model
    calib = (torch.rand(8, mc.in_channels, mc.image_size, mc.image_size), {"source": "random", "samples": 8})
    b = build_int8_firmware(ckpt, board, [0.1, 1.0], tmp_path, samples=1, measure=False, write_artifact=False,
                            calibration=calib, store="derived")
    x = b.inputs[0].reshape(-1).tolist()
    blob = bytearray(b.bank)
    struct.pack_into("<f", blob, 4, 2 * struct.unpack_from("<f", blob, 4)[0])  # level 0's header: output scale
    with start(b.binary, board) as running, Device.open(running.url) as dev:
        dev.hello()
        dev.set_level(index=0)
        assert np.array_equal(np.float32(dev.infer(x)[0]), b.expected[0][0])
        dev.upload_weights(bytes(blob), chunk=64, stop_after=2)  # link lost half way
        with pytest.raises(P.DeviceError, match="incomplete"):
            dev.request(P.UPLOAD_COMMIT)
        dev.set_level(index=0)
        assert np.array_equal(np.float32(dev.infer(x)[0]), b.expected[0][0])
        assert dev.upload_weights(bytes(blob)) == P.crc32(bytes(blob))
        assert np.array_equal(np.float32(dev.infer(x)[0]), 2 * b.expected[0][0])
        dev.set_level(index=1)  # the dense level, from the new set's flash
        assert np.array_equal(np.float32(dev.infer(x)[0]), b.expected[1][0])

        # a checked weight set whose sparse level would not fit the build's RAM buffer (its thresholds zeroed: every
        # code kept): that switch is refused, no level runs until one succeeds, the dense level still does
        from lcs.int8.derived import derive_levels
        from lcs.int8.firmware_c import derived_firmware_model
        from lcs.int8.level import int8_level

        graphs = [int8_level(ckpt.model.eval(), a, calib[0]) for a in (0.1, 1.0)]
        fm = derived_firmware_model(*derive_levels(graphs, 1), 1, b.levels, "unstructured", 1, dsp=False,
                                    sparse_from=b.int8["sparse_from"], upload_bank=True, input_chw=b.inputs.shape[1:])
        assert fm.bank == b.bank  # the same layout, rebuilt: where level 0's thresholds are
        full = bytearray(b.bank)
        for off, n in fm.threshold_blocks[0]:
            full[off: off + n] = bytes(n)
        dev.set_level(index=0)
        dev.upload_weights(bytes(full))  # its commit rebuilds level 0: refused
        with pytest.raises(P.DeviceError, match="bad argument"):
            dev.infer(x)
        with pytest.raises(P.DeviceError, match="bad argument"):
            dev.set_level(index=0)
        dev.set_level(index=1)
        assert np.array_equal(np.float32(dev.infer(x)[0]), b.expected[1][0])


def test_default_int8_build_without_the_training_data_says_fp32_needs_none(tmp_path):
    """The default MCU build calibrates on the checkpoint's own data: where that data is missing, one line says so
    and names --fp32, and nothing is written."""
    from lcs import checkpoint
    from lcs.config import DataConfig, ModelConfig, RunConfig, SubspaceConfig

    cfg = RunConfig(model=ModelConfig(width=4, image_size=8), subspace=SubspaceConfig(family="unstructured"),
                    data=DataConfig(source=f"folder:{tmp_path / 'gone'}"))
    path = checkpoint.save(tmp_path / "c.safetensors", cfg, checkpoint.build(cfg))
    result = _cli("build", path, "--target", "host-sim", "--levels", "1", "--no-progress", "-o", tmp_path / "c.lcsa")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])  # the progress line, then one error line
    assert "int8 firmware calibrates on the checkpoint's training data" in errors[0] and "--fp32" in errors[0]
    assert not (tmp_path / "c.lcsa").exists()
