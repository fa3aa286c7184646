"""Subspace layers and the model wrapper: blending, compression per layer, gradients, export."""

import pytest
import torch
from torch import nn

from lcs.config import ModelConfig, SubspaceConfig
from lcs.errors import ConfigError
from lcs.models import build_model
from lcs.subspace.export import level_weights, materialize
from lcs.subspace.layers import SubspaceConv2d, SubspaceLinear
from lcs.subspace.levels import QuantizationMap, StructuredMap, UnstructuredMap
from lcs.subspace.model import BatchNormWarning, SubspaceModel

MNIST = ModelConfig(in_channels=1, image_size=28)


def subspace(family="unstructured", shape="line", model=MNIST, **kw):
    torch.manual_seed(0)
    return SubspaceModel(build_model(model), SubspaceConfig(shape=shape, family=family, **kw))


def x28(n=4):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def plain_with_endpoint(sub: SubspaceModel, endpoint: int) -> nn.Module:
    """The plain network loaded with one endpoint's parameters."""
    plain = build_model(MNIST)
    suffix = "1" if endpoint else ""
    state = {}
    for name, tensor in plain.state_dict().items():
        module, _, param = name.rpartition(".")
        src = dict(sub.net.named_parameters()).get(f"{module}.{param}{suffix}")
        state[name] = src.detach() if src is not None else dict(sub.net.named_parameters())[name].detach()
    plain.load_state_dict(state)
    return plain.eval()


def test_alpha_0_and_1_reproduce_the_endpoints():
    sub = subspace("structured").eval()
    x = x28()
    sub.set_alpha(0.0, effective=1.0)  # position alpha = 0, no slicing: endpoint 0 exactly
    assert torch.equal(sub(x), plain_with_endpoint(sub, 0)(x))
    sub.set_alpha(1.0)
    assert torch.equal(sub(x), plain_with_endpoint(sub, 1)(x))
    sub.set_alpha(0.5, effective=1.0)
    assert not torch.allclose(sub(x), plain_with_endpoint(sub, 1)(x))


def test_gradients_reach_both_endpoints_in_proportion_to_alpha():
    sub = subspace("structured")
    sub.set_alpha(0.3, effective=1.0)
    sub(x28()).square().mean().backward()
    for layer in sub.weight_layers():
        g0, g1 = layer.weight.grad, layer.weight1.grad
        assert g0.abs().sum() > 0 and g1.abs().sum() > 0
        # w(alpha) = (1 - alpha) w0 + alpha w1  =>  dL/dw1 = alpha/(1 - alpha) dL/dw0
        torch.testing.assert_close(g1, g0 * (0.3 / 0.7), rtol=1e-4, atol=1e-7)


def test_point_subspace_has_one_weight_set_and_no_regulariser():
    sub = subspace(shape="point")
    assert not any(n.endswith("weight1") for n, _ in sub.named_parameters())
    assert float(sub.cos2()) == 0.0
    line = subspace(shape="line")
    assert sum(p.numel() for p in line.parameters()) > 1.9 * sum(p.numel() for p in sub.parameters())


def test_cos2_is_global_over_layers():
    sub = subspace()
    pairs = sub.regularised_pairs()
    dot = sum(float((a * b).sum().detach()) for a, b in pairs)
    n0 = sum(float((a * a).sum().detach()) for a, _ in pairs)
    n1 = sum(float((b * b).sum().detach()) for _, b in pairs)
    assert float(sub.cos2().detach()) == pytest.approx(dot * dot / (n0 * n1), rel=1e-4)
    assert len(pairs) == len(list(sub.weight_layers()))


@pytest.mark.parametrize("keep", [0.025, 0.1, 0.5, 0.9])
def test_topk_sparsity_is_exact_per_layer_and_spares_stem_and_head(keep):
    sub = subspace().eval()
    sub.set_alpha(keep)
    for layer in sub.weight_layers():
        w = layer.compressed_weight(layer.blended("weight"))
        nonzero = int((w != 0).sum())
        if layer.role in ("stem", "head"):
            assert nonzero == w.numel()
        else:
            assert nonzero == UnstructuredMap.kept_count(w.numel(), keep)
            # the kept weights are the largest magnitudes
            full = layer.blended("weight").abs().flatten()
            assert full[w.flatten() != 0].min() >= full[w.flatten() == 0].max()


def test_compress_stem_and_head_when_asked():
    sub = subspace(compress_stem=True, compress_head=True).eval()
    sub.set_alpha(0.1)
    for layer in sub.weight_layers():
        w = layer.compressed_weight(layer.blended("weight"))
        assert int((w != 0).sum()) == UnstructuredMap.kept_count(w.numel(), 0.1)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_structured_width_slices_first_channels_and_inputs_follow(alpha):
    sub = subspace("structured", model=ModelConfig(in_channels=1, image_size=28, norm="instance")).eval()
    width = StructuredMap().level(alpha).width
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, (i[0].shape[1], o.shape[1])))
             for name, m in sub.net.named_modules() if isinstance(m, (SubspaceConv2d, SubspaceLinear))]
    sub.set_alpha(alpha)
    out = sub(x28())
    for h in hooks:
        h.remove()
    assert out.shape == (4, 10)  # the head keeps all outputs
    convs = [(n, m) for n, m in sub.net.named_modules() if isinstance(m, SubspaceConv2d)]
    assert seen[convs[0][0]][0] == 1  # the stem keeps its input channels
    prev_out = None
    for name, conv in convs:
        cin, cout = seen[name]
        assert cout == StructuredMap.channels(conv.out_channels, width)
        if prev_out is not None:
            assert cin == prev_out
        prev_out = cout
    assert seen["classifier"][0] == prev_out


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_quantized_weights_sit_on_the_signed_grid(bits):
    sub = subspace("quantization").eval()
    sub.set_alpha(QuantizationMap().alpha_for(bits))
    lo, hi = QuantizationMap.int_range(bits)
    for lw, layer in zip(level_weights(sub, QuantizationMap().alpha_for(bits), x28(1)), sub.weight_layers()):
        if layer.role in ("stem", "head"):
            assert lw.codes is None
            continue
        assert lw.codes.dtype == torch.int8
        assert lo <= int(lw.codes.min()) and int(lw.codes.max()) <= hi
        assert len(torch.unique(lw.weight)) <= 2 ** bits
        torch.testing.assert_close(lw.weight, (lw.codes.float() - lw.zero) * lw.scale)


def test_activation_ranges_track_an_ema_and_quantize_inputs():
    sub = subspace("quantization").train()
    sub.set_alpha(QuantizationMap().alpha_for(4), track_acts=True)
    sub(x28())
    body = [m for m in sub.weight_layers() if m.role == "body"]
    assert all(bool(m.act_range.seen) for m in body)
    first_hi = float(body[0].act_range.hi)
    sub(x28() * 3)
    assert float(body[0].act_range.hi) != first_hi  # moved, by the EMA
    sub.eval()
    inputs = {}
    h = body[0].register_forward_pre_hook(lambda m, a: inputs.setdefault("x", a[0]))
    sub(x28())
    h.remove()
    q = body[0].compressed_input(inputs["x"])
    assert len(torch.unique(q)) <= 16


def test_batchnorm_is_warned_about():
    with pytest.warns(BatchNormWarning):
        subspace(model=ModelConfig(in_channels=1, image_size=28, norm="batch"))


def test_grouped_conv_cannot_be_width_sliced():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ConfigError, match="grouped"):
        SubspaceModel(net, SubspaceConfig(family="structured"))


@pytest.mark.parametrize("family", ["unstructured", "structured", "quantization"])
@pytest.mark.parametrize("name", ["small-cnn", "cpreresnet20"])
def test_materialized_level_equals_the_subspace_model(family, name):
    cfg = ModelConfig(name=name, in_channels=1, image_size=28, norm="instance" if family == "structured" else "group")
    sub = subspace(family, model=cfg)
    sub.train()
    sub.set_alpha(1.0, track_acts=True)
    sub(x28(8))  # give quantized layers an activation range
    sub.eval()
    x = x28(3)
    for alpha in sub.cmap.eval_alphas[::3]:
        sub.set_alpha(alpha)
        expected = sub(x)
        plain = materialize(sub, alpha, x[:1])
        assert not any(isinstance(m, (SubspaceConv2d, SubspaceLinear)) for m in plain.modules())
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-5)


def test_fake_quant_snaps_to_the_grid_and_passes_gradients_straight_through():
    from lcs.subspace.compress import fake_quant, quant_params, quantize

    t = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = fake_quant(t, 4)
    scale, zero = quant_params(t.detach().min(), t.detach().max(), 4)
    assert torch.equal(out.detach(), (quantize(t.detach(), scale, zero, 4) - zero) * scale)
    assert len(torch.unique(out.detach())) <= 16
    (out * torch.arange(t.numel()).view_as(t)).sum().backward()
    assert torch.equal(t.grad, torch.arange(t.numel(), dtype=t.dtype).view_as(t))


def test_topk_mask_threshold_selection_keeps_exactly_the_count_even_with_ties():
    """On a CPU topk_mask selects by a threshold from numpy's partition; magnitudes tied across the boundary (or a
    count that comes out wrong for any reason) fall back to torch.topk, so the kept count is always exact."""
    from lcs.subspace.compress import topk_mask

    g = torch.Generator().manual_seed(3)
    tied = torch.tensor([1.0, -1.0, 1.0, 1.0, 2.0, -2.0, 3.0, 0.5, 0.0, 0.0])
    cases = [tied, torch.zeros(7), torch.randn(257, generator=g).double(), torch.randn(4, 3, 3, 3, generator=g)]
    for w in cases:
        order = w.abs().flatten()
        for keep in (0.95, 0.7, 0.5, 0.3, 0.11, 0.025):
            kept = UnstructuredMap.kept_count(w.numel(), keep)
            mask = topk_mask(w, keep)
            assert mask.shape == w.shape and mask.dtype == w.dtype and int(mask.sum()) == kept
            if 0 < kept < w.numel():  # every kept magnitude at least every dropped one
                assert order[mask.flatten() > 0].min() >= order[mask.flatten() == 0].max()


def test_fake_quant_host_grid_on_cpu_gives_the_tensor_grids_bits():
    """On a CPU fake_quant computes the grid on host floats and snaps in fewer kernels: same bits as the tensor
    formula (quant_params / quantize), for weights (own range) and activations (a given range), every width."""
    from lcs.subspace.compress import fake_quant, quant_params, quantize

    g = torch.Generator().manual_seed(5)
    cases = [torch.randn(300, generator=g) * 10.0 ** k + shift for k in (-3, 0, 2) for shift in (0.0, 0.7)]
    cases += [torch.rand(50, generator=g), -torch.rand(50, generator=g), torch.zeros(20), torch.full((9,), 3.0)]
    for t in cases:
        for bits in range(2, 9):
            for lo, hi in ((None, None), (t.min() * 0.5, t.max() * 0.7)):
                scale, zero = quant_params(t.min() if lo is None else lo, t.max() if hi is None else hi, bits)
                assert torch.equal(fake_quant(t, bits, lo, hi), (quantize(t, scale, zero, bits) - zero) * scale)


def test_in_place_fake_quant_gives_the_reference_grid_with_ties_and_range_edges():
    """fake_quant_ (the flat blend's weights, snapped in place outside autograd) gives the reference quantizer's
    values, (quantize - zero) * scale on the t.min()/t.max() grid that export.level_weights stores: on random
    tensors, on values exactly half-way between two levels (round half to even), and at both ends of the range;
    float64 takes the tensor formula instead of the host grid."""
    from lcs.subspace.compress import fake_quant, fake_quant_, quant_params, quantize

    g = torch.Generator().manual_seed(7)
    cases = [torch.randn(3, 4, 3, 3, generator=g) * 10.0 ** k + shift for k in (-3, 0, 2) for shift in (0.0, 0.7)]
    cases += [torch.rand(40, generator=g), -torch.rand(40, generator=g), torch.zeros(9), torch.randn(64, generator=g).double()]
    for bits in range(2, 9):
        qmin, qmax = QuantizationMap.int_range(bits)
        base = torch.randn(200, generator=g)
        scale, zero = quant_params(base.min(), base.max(), bits)
        # exact half-way points (k + 0.5 - zero) * scale, the two range ends, and just inside/outside them
        ties = (torch.arange(qmin, qmax).float() + 0.5 - zero) * scale
        ends = torch.stack([base.min(), base.max(), (qmin - zero) * scale, (qmax - zero) * scale])
        for t in cases + [torch.cat([base, ties, ends]), torch.cat([base, ends.nextafter(ends + 1)])]:
            scale, zero = quant_params(t.min(), t.max(), bits)
            expect = (quantize(t, scale, zero, bits) - zero) * scale
            snapped = t.clone()
            assert fake_quant_(snapped, bits) is snapped
            assert torch.equal(snapped, expect) and torch.equal(snapped, fake_quant(t, bits))


def test_topk_mask_keeps_the_largest_magnitudes_from_either_side():
    """topk_mask selects the dropped side when fewer are dropped than kept: the same set as keeping the largest."""
    from lcs.subspace.compress import topk_mask

    w = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(2))
    order = w.abs().flatten().argsort(descending=True)
    for keep in (0.9, 0.6, 0.5, 0.4, 0.1, 0.025):
        kept = UnstructuredMap.kept_count(w.numel(), keep)
        expected = torch.zeros(w.numel())
        expected[order[:kept]] = 1.0
        assert torch.equal(topk_mask(w, keep), expected.view_as(w))
