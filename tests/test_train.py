"""Samplers, schedule, and short real training runs on the bundled digits."""

import random

import pytest

from lcs import checkpoint
from lcs.config import DataConfig, RunConfig, SubspaceConfig, TrainConfig
from lcs.data import model_config_for
from lcs.evaluate import accuracy
from lcs.train import default_sampler, draw_alphas, lr_factor, train


def run_config(digits, family="unstructured", shape="line", **train_kw):
    norm = "instance" if family == "structured" else "group"
    return RunConfig(model=model_config_for(digits.info, norm=norm), data=DataConfig("digits"),
                     subspace=SubspaceConfig(shape=shape, family=family), train=TrainConfig(**train_kw))


def draws(digits, sampler, progress, family="unstructured", shape="line", n=400, **kw):
    cfg = run_config(digits, family, shape, sampler=sampler, **kw)
    model = checkpoint.build(cfg)
    rng = random.Random(0)
    return [draw_alphas(sampler, rng, progress, cfg, model.cmap, model) for _ in range(n)], model


def test_default_samplers_follow_the_paper(digits):
    expect = {("unstructured", "line"): "biased-endpoints", ("unstructured", "point"): "delayed-uniform",
              ("structured", "line"): "sandwich", ("structured", "point"): "sandwich",
              ("quantization", "line"): "discrete", ("quantization", "point"): "per-layer-bits"}
    for (family, shape), sampler in expect.items():
        assert default_sampler(run_config(digits, family, shape)) == sampler
    assert default_sampler(run_config(digits, method="fixed")) == "fixed"


def test_biased_endpoints_half_at_the_ends_and_warmup_anneals_topk(digits):
    steps, _ = draws(digits, "biased-endpoints", progress=0.9)
    alphas = [d[0].alpha for d in steps]
    at_ends = sum(a in (0.025, 1.0) for a in alphas) / len(alphas)
    assert 0.4 < at_ends < 0.6
    assert all(0.025 <= a <= 1.0 for a in alphas)
    assert all(d[0].effective == pytest.approx(d[0].alpha) for d in steps)  # warm-up over at 80 %
    early, _ = draws(digits, "biased-endpoints", progress=0.0, n=20)
    assert all(d[0].effective == pytest.approx(1.0) for d in early)  # dense at the start
    mid, _ = draws(digits, "biased-endpoints", progress=0.4, n=20)
    assert all(d[0].effective == pytest.approx(d[0].alpha + (1 - d[0].alpha) * 0.5) for d in mid)


def test_sandwich_has_both_ends_and_two_random_widths(digits):
    steps, _ = draws(digits, "sandwich", 0.5, family="structured", n=10)
    for d in steps:
        assert len(d) == 4 and d[0].alpha == 0.0 and d[1].alpha == 1.0
        assert all(0 <= x.alpha <= 1 for x in d[2:])


def test_discrete_sampler_draws_every_bit_width_equally(digits):
    steps, model = draws(digits, "discrete", 0.9, family="quantization", n=600)
    bits = [model.cmap.bits(d[0].alpha) for d in steps]
    counts = [bits.count(b) for b in range(3, 9)]
    assert min(counts) > 60
    before, _ = draws(digits, "discrete", 0.5, family="quantization", n=5)
    assert not any(d[0].quantize_acts for d in before)  # activation quantization waits for 80 %


def test_point_schedules(digits):
    before, _ = draws(digits, "delayed-uniform", 0.5, shape="point", n=5)
    assert all(d[0].alpha == 1.0 for d in before)
    after, _ = draws(digits, "delayed-uniform", 0.85, shape="point", n=50)
    assert len({d[0].alpha for d in after}) > 40
    mixed, model = draws(digits, "per-layer-bits", 0.9, family="quantization", shape="point", n=20)
    layers = sum(1 for m in model.weight_layers() if m.compressible)
    for d in mixed:
        assert len(d[0].layer_bits) == layers and set(d[0].layer_bits) <= set(range(3, 9))
    assert len({tuple(d[0].layer_bits) for d in mixed}) > 1


def test_lr_warms_up_linearly_then_decays_to_zero():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("family", ["unstructured", "structured", "quantization"])
def test_short_training_is_far_above_chance_at_both_ends(digits, family, tmp_path):
    cfg = run_config(digits, family, "line", epochs=10, batch_size=64)
    result = train(cfg, data=digits, out=tmp_path / "m.safetensors")
    model = checkpoint.load(tmp_path / "m.safetensors").model
    lo, hi = model.cmap.alpha_range
    for alpha in (lo, hi):
        model.set_alpha(alpha)
        assert accuracy(model, digits.test) > 0.6, (family, alpha)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert 0 < result.step_cpu_seconds and 0 < result.step_seconds  # CPU: thread time beside wall time


def test_flat_parameters_take_the_same_sgd_steps_and_release_own_storage():
    """train.FlatParameters: SGD on one flat tensor moves every parameter as per-tensor SGD does."""
    import copy

    import torch

    from lcs.config import ModelConfig
    from lcs.models import build_model
    from lcs.subspace.model import SubspaceModel
    from lcs.train import FlatParameters

    torch.manual_seed(0)
    a = SubspaceModel(build_model(ModelConfig(in_channels=1, image_size=8)), SubspaceConfig(shape="line"))
    b = copy.deepcopy(a)
    flat = FlatParameters(b)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD([flat.param], lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for alpha in (0.2, 0.9, 0.5):
        for model, opt, to_none in ((a, opt_a, True), (b, opt_b, False)):
            opt.zero_grad(set_to_none=to_none)
            model.set_alpha(alpha)
            model(x).logsumexp(1).mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7)
    flat.release()
    pointers = {p.data_ptr() for p in b.parameters()}
    assert len(pointers) == len(list(b.parameters())) and all(p.grad is None for p in b.parameters())


@pytest.mark.parametrize("family,line_params", [("unstructured", "all"), ("quantization", "all"), ("structured", "norm"),
                                                 ("structured", "all")])
def test_flat_blend_gives_the_fused_blends_outputs_and_gradients_bit_for_bit(family, line_params):
    """With train.FlatParameters the line blends outside autograd into leaf views (model._FlatBlend) and routes
    their gradients to the endpoints after backward: the same outputs and endpoint gradients, bit for bit, as
    the autograd blend (_LineBlend), with the folded split and several passes per step (the sandwich rule); the
    weights compressed in place there (TopK masks on the gradient, quantizer straight through) and width blocks
    sliced as leaves of their own."""
    import copy

    import torch

    from lcs.config import ModelConfig
    from lcs.models import build_model
    from lcs.subspace.model import SubspaceModel
    from lcs.train import FlatParameters

    torch.manual_seed(0)
    norm = "instance" if family == "structured" else "group"
    a = SubspaceModel(build_model(ModelConfig(in_channels=1, image_size=8, norm=norm)),
                      SubspaceConfig(shape="line", family=family, line_params=line_params))
    b = copy.deepcopy(a)
    flat = FlatParameters(b)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for step in range(2):
        outputs = []
        for model, to_none in ((a, True), (b, False)):
            model.folded_split = (1.0, 0.25)
            model.zero_grad(set_to_none=to_none)
            if model is b:
                flat.param.grad.zero_()
            outs = []
            lo, hi = model.cmap.alpha_range
            for alpha in (lo, hi, lo + (0.3 + 0.2 * step) * (hi - lo)):  # several passes, gradients adding up
                model.set_alpha(alpha, track_acts=True)
                out = model(x)
                out.logsumexp(1).mean().backward()
                outs.append(out.detach())
            outputs.append(outs)
        assert all(torch.equal(o, p) for o, p in zip(*outputs))
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa.grad, pb.grad)
        with torch.no_grad():  # move both the same way, so the second step sees other weights
            for pa, pb in zip(a.parameters(), b.parameters()):
                pa.sub_(0.1 * pa.grad)
                pb.sub_(0.1 * pb.grad)
    flat.release()


def test_endpoint_and_random_draws_one_end_and_levels_between(digits):
    steps, model = draws(digits, "endpoint-and-random", 0.9, family="structured", n=200, samples_per_step=2)
    lo, hi = model.cmap.alpha_range
    assert all(len(step) == 2 and step[0].alpha in (lo, hi) and lo <= step[1].alpha <= hi for step in steps)
    assert 60 < sum(step[0].alpha == lo for step in steps) < 140  # either end, about half the time each
