"""A subspace model at one level, as the plain network a compiler or a device runs.

`materialize(model, alpha)` returns an ordinary torch network (Conv2d, Linear, GroupNorm /
BatchNorm2d, plus `QuantizeInput` in front of quantized layers) whose weights are the blended,
masked, sliced and quantized weights of that level. It computes exactly what the subspace model
computes at alpha in eval mode; compilers (tvm_build) export this, never the subspace layers.

`level_weights(model, alpha)` gives the same level as named arrays plus, for quantized layers,
integer codes with their scale and zero point: what a device stores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lcs.subspace.compress import quant_params, quantize
from lcs.subspace.layers import SubspaceConv2d, SubspaceLinear, SubspaceNorm, _WeightLayer
from lcs.subspace.levels import QuantizationMap
from lcs.subspace.model import SubspaceModel, _replace


class QuantizeInput(nn.Module):
    """Fake-quantize a tensor on a fixed grid (the activation range learned in training)."""

    def __init__(self, scale: float, zero: float, bits: int) -> None:
        super().__init__()
        self.scale, self.zero, self.bits = float(scale), float(zero), int(bits)
        self.qmin, self.qmax = QuantizationMap.int_range(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zero, self.qmin, self.qmax)
        return (q - self.zero) * self.scale

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={self.scale:.6g}, zero={self.zero:g}"


@dataclass
class LayerWeights:
    """One conv/linear layer at one level, as a device stores it."""

    name: str
    weight: torch.Tensor  # float weight actually used (blended, sliced, masked, snapped)
    bias: torch.Tensor | None
    bits: int | None = None
    codes: torch.Tensor | None = None  # int8 codes on the b-bit grid (quantized layers)
    scale: float | None = None
    zero: float | None = None
    act_scale: float | None = None  # input quantization grid (quantized layers)
    act_zero: float | None = None


@torch.no_grad()
def _input_channels(model: SubspaceModel, example: torch.Tensor) -> dict[str, int]:
    """Channels (or features) entering each subspace layer at the current level."""
    seen: dict[str, int] = {}

    def record(name: str):
        def hook(module, args) -> None:
            seen.setdefault(name, args[0].shape[1])
        return hook

    hooks = [m.register_forward_pre_hook(record(name))
             for name, m in model.net.named_modules() if isinstance(m, (_WeightLayer, SubspaceNorm))]
    try:
        model.net(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def level_weights(model: SubspaceModel, alpha: float, example: torch.Tensor) -> list[LayerWeights]:
    model.eval()
    model.set_alpha(alpha)
    channels = _input_channels(model, example)
    out = []
    for name, layer in model.net.named_modules():
        if not isinstance(layer, _WeightLayer):
            continue
        in_c = channels[name]
        w, b = layer.blended("weight"), layer.blended("bias")
        if isinstance(layer, SubspaceConv2d) and layer.depthwise:
            w = w[:in_c]
            out_c = in_c
        else:
            out_c = layer.out_features_at(w.shape[0])
            groups = layer.groups if isinstance(layer, SubspaceConv2d) else 1
            w = w[:out_c, : in_c // groups]
        b = b[:out_c] if b is not None else None
        entry = LayerWeights(name, layer.compressed_weight(w).clone(), None if b is None else b.clone())
        s = layer.state
        if layer.compressible and s.bits is not None:
            scale, zero = quant_params(w.min(), w.max(), s.bits)
            entry.bits, entry.codes = s.bits, quantize(w, scale, zero, s.bits).to(torch.int8)
            entry.scale, entry.zero = float(scale), float(zero)
            if s.quantize_acts and bool(layer.act_range.seen):
                a_scale, a_zero = quant_params(layer.act_range.lo, layer.act_range.hi, s.bits)
                entry.act_scale, entry.act_zero = float(a_scale), float(a_zero)
        out.append(entry)
    return out


@torch.no_grad()
def materialize(model: SubspaceModel, alpha: float, example: torch.Tensor) -> nn.Module:
    """The plain torch network of one level (eval mode). `example` is one input batch (shape only)."""
    model.eval()
    weights = {lw.name: lw for lw in level_weights(model, alpha, example)}
    channels = _input_channels(model, example)
    net = copy.deepcopy(model.net).eval()
    for name, layer in list(net.named_modules()):
        if isinstance(layer, SubspaceConv2d):
            lw = weights[name]
            out_c, in_per_group = lw.weight.shape[:2]
            groups = channels[name] if layer.depthwise else layer.groups
            new = nn.Conv2d(in_per_group * groups, out_c, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, groups, lw.bias is not None, layer.padding_mode)
        elif isinstance(layer, SubspaceLinear):
            lw = weights[name]
            new = nn.Linear(lw.weight.shape[1], lw.weight.shape[0], lw.bias is not None)
        elif isinstance(layer, SubspaceNorm):
            c = channels[name]
            gamma, beta = layer.blended("weight")[:c].clone(), layer.blended("bias")[:c].clone()
            if layer.kind == "batch":
                new = nn.BatchNorm2d(c, layer.eps)
                new.running_mean.copy_(layer.running_mean[:c])
                new.running_var.copy_(layer.running_var[:c])
            else:
                new = nn.GroupNorm(layer.groups_at(c), c, layer.eps)
            new.weight.copy_(gamma)
            new.bias.copy_(beta)
            _replace(net, name, new.eval())
            continue
        else:
            continue
        new.weight.copy_(lw.weight)
        if lw.bias is not None:
            new.bias.copy_(lw.bias)
        if lw.act_scale is not None:
            new = nn.Sequential(QuantizeInput(lw.act_scale, lw.act_zero, lw.bits), new)
        _replace(net, name, new.eval())
    return net
