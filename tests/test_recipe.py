"""The recipe choices that make a line converge at a short budget (benchmarks/README.md has the evidence)."""

import random

import pytest
import torch

from lcs.config import ModelConfig, RunConfig, SubspaceConfig, TrainConfig
from lcs.errors import ConfigError
from lcs.models import build_model
from lcs.subspace.model import SubspaceModel
from lcs.train import draw_alphas


def line_model(**kw):
    torch.manual_seed(0)
    return SubspaceModel(build_model(ModelConfig(in_channels=1, image_size=8)), SubspaceConfig(shape="line", **kw))


def grads_at(model, alpha=0.4):
    model.zero_grad()
    model.set_alpha(alpha, effective=1.0)
    model(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))).logsumexp(1).mean().backward()
    return [(p0.grad.clone(), p1.grad.clone()) for p0, p1 in model.line_pairs]


def test_half_and_half_is_plain_sgd_on_the_endpoints():
    model = line_model()
    before = grads_at(model)
    model.split_line_gradients(0.5, 0.5)
    for (g0, g1), (p0, p1) in zip(before, model.line_pairs):
        assert torch.equal(p0.grad, g0) and torch.equal(p1.grad, g1)


def test_centre_and_spread_move_at_their_own_rates():
    model = line_model()
    before = grads_at(model)
    centre, spread = 1.0, 0.25
    model.split_line_gradients(centre, spread)
    for (g0, g1), (p0, p1) in zip(before, model.line_pairs):
        # an SGD step -lr * grad moves c = (w0 + w1) / 2 by -lr * centre * dL/dc, d = (w1 - w0) / 2 by -lr * spread * dL/dd
        torch.testing.assert_close((p0.grad + p1.grad) / 2, centre * (g0 + g1))
        torch.testing.assert_close((p1.grad - p0.grad) / 2, spread * (g1 - g0))


def test_endpoint_init_copy_starts_a_short_line_independent_does_not():
    copy, independent = line_model(endpoint_init="copy"), line_model(endpoint_init="independent")
    for layer in copy.weight_layers():
        rel = float(((layer.weight1 - layer.weight).std() / layer.weight.std()).detach())
        assert 0.05 < rel < 0.2
    for layer in independent.weight_layers():
        assert float(((layer.weight1 - layer.weight).std() / layer.weight.std()).detach()) > 0.5
    assert float(copy.cos2().detach()) > 0.9 > float(independent.cos2().detach())


def test_log_spacing_samples_the_sparse_end_as_often_as_the_dense_end():
    def below_10_percent(spacing):
        cfg = RunConfig(model=ModelConfig(in_channels=1, image_size=8), train=TrainConfig(alpha_spacing=spacing))
        model = line_model()
        rng = random.Random(0)
        draws = [draw_alphas("biased-endpoints", rng, 0.9, cfg, model.cmap, model)[0].alpha for _ in range(4000)]
        between = [a for a in draws if a not in (0.025, 1.0)]
        return sum(a < 0.1 for a in between) / len(between)

    assert below_10_percent("log") == pytest.approx(0.375, abs=0.04)  # log(0.1/0.025) / log(1/0.025)
    assert below_10_percent("linear") == pytest.approx(0.077, abs=0.02)  # (0.1 - 0.025) / 0.975


def test_recipe_fields_are_validated():
    with pytest.raises(ConfigError):
        SubspaceConfig(endpoint_init="zeros")
    with pytest.raises(ConfigError):
        TrainConfig(alpha_spacing="cubic")


def test_split_folded_into_the_blend_backward_matches_the_separate_split():
    """train.py folds split_line_gradients into the fused blend's backward (one process, beta 0): the same
    gradients up to float rounding, and the forward (the blended weights) unchanged, bit for bit."""
    centre, spread = 1.0, 0.25
    model = line_model()
    expected = grads_at(model)
    model.split_line_gradients(centre, spread)
    expected = [(p0.grad.clone(), p1.grad.clone()) for p0, p1 in model.line_pairs]
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model.set_alpha(0.4, effective=1.0)
    out = model(x)
    model.folded_split = (centre, spread)
    assert torch.equal(model(x), out)
    for (g0, g1), (f0, f1) in zip(expected, grads_at(model)):
        torch.testing.assert_close(f0, g0, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(f1, g1, rtol=1e-5, atol=1e-7)
    model.set_alpha(0.4)
    next(model.layers()).state.alpha = 0.5  # a layer moved on its own: no fused blend, so the folded split cannot apply
    with pytest.raises(RuntimeError, match="fused blend"):
        model(x)
