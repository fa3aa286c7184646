"""Checkpoints: safetensors with the config inside; strict, clear loading."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lcs import checkpoint
from lcs.config import ModelConfig, RunConfig, SubspaceConfig
from lcs.errors import CheckpointError


def make(family="quantization", shape="line"):
    cfg = RunConfig(model=ModelConfig(in_channels=1, image_size=8), subspace=SubspaceConfig(shape=shape, family=family))
    return cfg, checkpoint.build(cfg)


def test_round_trip_keeps_config_tensors_and_metrics(tmp_path):
    cfg, model = make()
    path = checkpoint.save(tmp_path / "m.safetensors", cfg, model, {"acc": 0.5})
    ck = checkpoint.load(path)
    assert ck.config == cfg and ck.metrics == {"acc": 0.5}
    for (n, a), (_, b) in zip(model.state_dict().items(), ck.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")


def test_not_safetensors(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.load(p)


def test_foreign_safetensors(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(CheckpointError, match="not an lcs checkpoint"):
        checkpoint.load(p)


def test_truncated_file(tmp_path):
    cfg, model = make()
    p = checkpoint.save(tmp_path / "m.safetensors", cfg, model)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(p)


def test_tensors_that_do_not_match_the_config(tmp_path):
    cfg, model = make(shape="point")
    line_cfg = cfg.replace(subspace=SubspaceConfig(shape="line", family="quantization"))
    p = tmp_path / "m.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": checkpoint.FORMAT, "format_version": "1", "config": line_cfg.to_json(), "metrics": "{}"}
    save_file(state, str(p), metadata=meta)
    with pytest.raises(CheckpointError, match="missing .*weight1"):
        checkpoint.load(p)


def test_config_from_the_future_is_refused(tmp_path):
    cfg, model = make()
    data = cfg.to_dict()
    data["version"] = 99
    p = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p),
              metadata={"format": checkpoint.FORMAT, "format_version": "1", "config": json.dumps(data)})
    with pytest.raises(CheckpointError, match="config version 99"):
        checkpoint.load(p)
