"""Device, precision and data placement (lcs/accel.py) on the CPU: the flags, the one-line errors, the
batch order of the loader, and the parts of the subspace that stay float32 under autocast."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from lcs import accel, checkpoint
from lcs.cli import cli
from lcs.config import DataConfig, RunConfig, SubspaceConfig, TrainConfig
from lcs.data import load_data, model_config_for
from lcs.errors import ConfigError
from lcs.evaluate import accuracy
from lcs.subspace.compress import fake_quant, topk_mask
from lcs.train import backend_for, train


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_device_spellings():
    assert accel.parse_device("cpu") == ("cpu", None)
    assert accel.parse_device("auto") == ("auto", None)
    assert accel.parse_device("cuda") == ("cuda", None)
    assert accel.parse_device("CUDA:3") == ("cuda", 3)
    for bad in ("gpu", "cuda:x", "cpu:0", "", "cuda:-1", "mps"):
        with pytest.raises(ConfigError, match="unknown device"):
            accel.parse_device(bad)
    assert accel.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown precision"):
        accel.Accel(precision="fp8")


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accel.resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="use --device cpu"):
            accel.resolve_device(spec)
    assert backend_for(torch.device("cpu")) == "gloo"
    monkeypatch.setenv("LCS_DIST_BACKEND", "mpi")
    with pytest.raises(ConfigError, match="LCS_DIST_BACKEND"):
        backend_for(torch.device("cpu"))


def test_bad_device_and_precision_are_one_line_exit_2(tmp_path, monkeypatch):
    out = tmp_path / "never.safetensors"
    one_line_error(run("train", "--data", "digits", "--device", "gpu", "-o", out), "unknown device 'gpu'")
    one_line_error(run("train", "--data", "digits", "--precision", "fp8", "-o", out), "--precision")
    one_line_error(run("train", "--data", "digits", "--workers", "-1", "-o", out), "--workers")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(run("train", "--data", "digits", "--device", "cuda", "-o", out), "--device cuda", "use --device cpu")
    one_line_error(run("eval", out, "--device", "cuda:1"), "--device cuda:1")
    one_line_error(run("train", "--data", "synthetic:abc", "--device", "cpu", "-o", out), "synthetic:N")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cpu_bf16_training_writes_a_device_free_checkpoint_and_reports_speed(tmp_path, digits):
    out = tmp_path / "bf16.safetensors"
    r = run("train", "--data", "digits", "--epochs", "2", "--device", "cpu", "--precision", "bf16", "-o", out,
            "--no-progress")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(f"wrote {out}")
    assert "images/s on cpu, bf16" in lines[1] and "a plain step of the same network and batch" in lines[1]
    ck = checkpoint.load(out)
    assert all(t.device.type == "cpu" for t in ck.model.state_dict().values())
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())  # the weights stay float32
    ck.model.set_alpha(1.0)
    assert accuracy(ck.model, digits.test) > 0.5  # chance is 0.1
    train_metrics = ck.metrics["train"]
    assert train_metrics["precision"] == "bf16" and train_metrics["device"] == "cpu"
    assert train_metrics["images_per_second"] > 0 and train_metrics["plain_step_ms"] > 0
    summary = json.loads(run("train", "--data", "digits", "--epochs", "1", "--device", "cpu", "-o",
                             tmp_path / "j.safetensors", "--json").output)
    assert summary["precision"] == "fp32" and summary["step_ratio"] == pytest.approx(
        summary["step_ms"] / summary["plain_step_ms"], rel=0.01)


def test_cpu_fp16_with_grad_scaler_trains(digits):
    # fp16 convolutions are emulated on most CPUs (slow): a few steps on a few images
    small = dataclasses.replace(digits, train=Subset(digits.train, range(192)))
    cfg = RunConfig(model=model_config_for(digits.info), data=DataConfig("digits"),
                    subspace=SubspaceConfig(family="quantization"), train=TrainConfig(epochs=3, batch_size=64))
    before = checkpoint.build(cfg).state_dict()
    result = train(cfg, data=small, accel=accel.Accel("cpu", "fp16"))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.precision == "fp16"
    after = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not torch.equal(after["net.features.1.0.weight"], before["net.features.1.0.weight"])


def test_loader_keeps_the_dataloader_batch_order():
    data = TensorDataset(torch.arange(50.0)[:, None], torch.arange(50))
    for drop_last in (False, True):
        plain = DataLoader(data, batch_size=8, shuffle=True, drop_last=drop_last,
                           generator=torch.Generator().manual_seed(3))
        ours = accel.loader(data, 8, device=torch.device("cpu"), shuffle=True, drop_last=drop_last,
                            generator=torch.Generator().manual_seed(3))
        for _ in range(2):  # two epochs: the generator moves on the same way
            a, b = list(plain), list(ours)
            assert len(a) == len(b) == len(plain)
            assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    subset = Subset(data, list(range(5, 45)))  # a Subset of tensors: gathered once, same order
    plain = DataLoader(subset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(4))
    ours = accel.loader(subset, 8, device=torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x[1], y[1]) for x, y in zip(plain, ours)) and len(plain) == len(ours)
    sampler = DistributedSampler(data, 2, 1, shuffle=True, seed=0)
    plain = DataLoader(data, batch_size=8, sampler=sampler)
    ours = accel.loader(data, 8, device=torch.device("cpu"), sampler=sampler)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(plain, ours))


def test_subspace_arithmetic_stays_float32_under_autocast(digits):
    """Blend, TopK mask, fake quantization, activation ranges and norms give the float32 values under
    bf16 autocast: only the conv / linear product itself runs in bf16."""
    cfg = RunConfig(model=model_config_for(digits.info), data=DataConfig("digits"),
                    subspace=SubspaceConfig(family="quantization"))
    model = checkpoint.build(cfg)
    model.set_alpha(0.4, track_acts=True)
    model.train()
    conv = next(m for m in model.weight_layers() if m.compressible)
    norm = next(m for m in model.layers() if not hasattr(m, "act_range"))
    x = torch.randn(4, conv.in_channels, 8, 8)
    with torch.no_grad():
        w32 = conv.compressed_weight(conv.blended("weight"))
        conv.compressed_input(x)  # the range tracker sees x once (float32)
        q32 = conv.compressed_input(x)
        n32 = norm(torch.randn(4, norm.channels, 8, 8, generator=torch.Generator().manual_seed(0)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w16 = conv.compressed_weight(conv.blended("weight"))
            lo, hi = conv.act_range.lo.clone(), conv.act_range.hi.clone()
            conv.state.track_acts = False
            q16 = conv.compressed_input(x.bfloat16().float())  # the same values, as a bf16 producer would give
            n16 = norm(torch.randn(4, norm.channels, 8, 8, generator=torch.Generator().manual_seed(0)).bfloat16())
            y16 = conv(x)
    assert w16.dtype == torch.float32 and torch.equal(w16, w32)
    assert q16.dtype == torch.float32
    expect = fake_quant(x.bfloat16().float(), conv.state.bits, lo, hi)
    assert torch.equal(q16, expect)
    assert n16.dtype == torch.float32 and torch.allclose(n16, n32, atol=0.05)
    assert y16.dtype == torch.bfloat16  # the product itself is the low-precision part
    assert torch.equal(q32, fake_quant(x, conv.state.bits, conv.act_range.lo, conv.act_range.hi))
    # TopK on float32: the mask of a level is the CPU path's
    w = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(topk_mask(w, 0.1), topk_mask(w, 0.1).float()) and topk_mask(w, 0.1).dtype == torch.float32


def test_range_tracker_host_flag_follows_loaded_state(digits):
    cfg = RunConfig(model=model_config_for(digits.info), data=DataConfig("digits"),
                    subspace=SubspaceConfig(family="quantization"))
    model = checkpoint.build(cfg)
    tracker = next(m for m in model.weight_layers() if m.compressible).act_range
    assert not tracker.is_seen()
    tracker.update(torch.randn(10))
    assert tracker.is_seen() and bool(tracker.seen)
    fresh = checkpoint.build(cfg)
    model.load_state_dict(fresh.state_dict())  # back to "never seen"
    assert not tracker.is_seen()


def test_synthetic_data_is_deterministic_and_shaped_like_cifar():
    a, b = load_data(DataConfig("synthetic:200", seed=1)), load_data(DataConfig("synthetic:200", seed=1))
    assert a.info.in_channels == 3 and a.info.image_size == 32 and a.info.num_classes == 10
    assert len(a.train) == 200 and len(a.test) == 40
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], load_data(DataConfig("synthetic:200", seed=2)).train.tensors[0])


@pytest.mark.parametrize("family", ["unstructured", "quantization"])
def test_fused_line_blend_is_the_per_layer_blend_bit_for_bit(digits, family):
    """SubspaceModel.forward blends every line parameter in one multi-tensor op and compresses every layer's
    weight right after it; the outputs and gradients must be those of the per-layer blend (compress.blend) and
    of each layer compressing its own weight, exactly."""
    cfg = RunConfig(model=model_config_for(digits.info), data=DataConfig("digits"),
                    subspace=SubspaceConfig(family=family))
    x = torch.stack([digits.test[i][0] for i in range(16)])
    y = torch.tensor([digits.test[i][1] for i in range(16)])
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = checkpoint.build(cfg)
        model.fused_blend = fused
        model.set_alpha(0.3)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
