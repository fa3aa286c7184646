"""On a CUDA device (deselected where there is none, see conftest.py): training and evaluation on the GPU
give device-free checkpoints and the CPU's accuracy per level; bf16 keeps the subspace's float32 parts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcs import checkpoint
from lcs.accel import Accel
from lcs.config import DataConfig, RunConfig, SubspaceConfig, TrainConfig
from lcs.data import model_config_for
from lcs.evaluate import evaluate_levels
from lcs.train import train

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


def config(digits, family="unstructured", epochs=3):
    norm = "instance" if family == "structured" else "group"
    return RunConfig(model=model_config_for(digits.info, norm=norm), data=DataConfig("digits"),
                     subspace=SubspaceConfig(family=family), train=TrainConfig(epochs=epochs))


@pytest.fixture
def strict_fp32():
    """No TF32 in cuDNN convolutions and matrix products (torch lets cuDNN use it by default): the same
    weights must then give the CPU's predictions up to summation order."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("family", ["unstructured", "structured", "quantization"])
def test_gpu_training_is_device_free_and_levels_match_on_cpu(digits, family, tmp_path, strict_fp32):
    out = tmp_path / f"{family}.safetensors"
    result = train(config(digits, family), data=digits, out=out, accel=Accel("cuda"), compare_steps=5)
    assert result.device.startswith("cuda") and result.images_per_second > 0 and result.plain_step_seconds > 0
    ck = checkpoint.load(out)
    assert all(t.device.type == "cpu" for t in ck.model.state_dict().values())
    alphas = list(ck.model.cmap.eval_alphas)
    on_cpu = evaluate_levels(ck.model, digits.test, alphas)
    on_gpu = evaluate_levels(ck.model.to("cuda"), digits.test, alphas, device=torch.device("cuda"))
    for a, b in zip(on_cpu, on_gpu):  # the same weights: at most one image in 359 may flip (summation order)
        assert abs(a.accuracy - b.accuracy) <= 1 / 359 + 1e-9, (a.level, a.accuracy, b.accuracy)
        assert a.zero_fraction == pytest.approx(b.zero_fraction)
    assert max(r.accuracy for r in on_cpu) > 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_mixed_precision_trains_float32_weights(digits, precision):
    result = train(config(digits, "quantization"), data=digits, accel=Accel("cuda", precision))
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in result.model.parameters())
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert max(row["accuracy"] for row in result.eval) > 0.5


def test_gpu_topk_mask_matches_cpu():
    from lcs.subspace.compress import topk_mask

    w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0))  # no magnitude ties
    for keep in (0.025, 0.1, 0.5):
        assert torch.equal(topk_mask(w, keep), topk_mask(w.cuda(), keep).cpu())


def test_gpu_fake_quant_matches_cpu_up_to_a_rounding_tie():
    """The same grid on both devices. Seen on an H200: CUDA divides by a Python number as a multiply by its
    reciprocal, so the scale (hi - lo) / (qmax - qmin) can differ by one ulp and every nonzero grid value with it;
    the grid index of each element must still agree (a value exactly on a half step may round the other way)."""
    from lcs.subspace.compress import fake_quant, quant_params

    w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    for bits in (3, 4, 8):
        codes = []
        for x in (w, w.cuda()):
            scale, zero = quant_params(*torch.aminmax(x), bits)
            codes.append(torch.round(fake_quant(x, bits) / scale).cpu())
        differ = codes[0] != codes[1]
        assert differ.float().mean() < 1e-3, (bits, int(differ.sum()))
        assert torch.allclose(fake_quant(w, bits), fake_quant(w.cuda(), bits).cpu(), rtol=1e-6, atol=0)


@pytest.mark.ddp
def test_torchrun_two_ranks_on_cuda(tmp_path, digits):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lcs", "train", "--data", "digits", "--epochs", "4", "--device", "cuda", "--no-progress", "-o", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1 and "2 processes" in proc.stdout
    ck = checkpoint.load(out)
    assert max(row["accuracy"] for row in ck.metrics["eval"]) > 0.5
