"""The network the firmware runs: every level of a subspace in one graph, steered by small per-layer
control vectors instead of per-level weights.

Each conv/linear keeps its stored endpoint weights (read-only, in flash) and reads a control vector
`ctrl` (RAM) that the device recomputes on a level switch (firmware_host/src/levels.c):

    ctrl = [alpha, thr, w_scale, w_zero, qmin, qmax, w_qon, a_scale, a_zero, a_qon]

and in the graph
    w   = (1 - alpha) * p0 + alpha * p1                        (LCS+L blending as layers.py; point: p0)
    w   = w if |w| >= thr else 0                                (TopK as a per-layer magnitude threshold)
    w   = w + ((clamp(round(w / s) + z, qmin, qmax) - z) * s - w)   if w_qon     (fake_quant of compress.py)
    x   = (clamp(round(x / as) + az, qmin, qmax) - az) * as             if a_qon     (QuantizeInput of export.py)

These are exactly the formulas of lcs/subspace/compress.py and export.py, so the graph equals
`materialize(model, alpha)` at every level. Norm layers keep both endpoints and blend with their own
one-element ctrl. Only the level-dependent part of the graph depends on ctrl, never on the input, so the
static executor can run it once per switch (tvm_build/mcu/executor.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lcs.errors import ConfigError
from lcs.subspace.compress import blend as _blend
from lcs.subspace.layers import SubspaceConv2d, SubspaceLinear, SubspaceNorm, _WeightLayer
from lcs.subspace.model import SubspaceModel, _replace

CTRL_FIELDS = ("alpha", "thr", "w_scale", "w_zero", "qmin", "qmax", "w_qon", "a_scale", "a_zero", "a_qon")
CTRL_LEN = len(CTRL_FIELDS)


def _snap(t: torch.Tensor, scale, zero, qmin, qmax) -> torch.Tensor:
    return (torch.clamp(torch.round(t / scale) + zero, qmin, qmax) - zero) * scale


class DeviceWeightLayer(nn.Module):
    def __init__(self, layer: _WeightLayer) -> None:
        super().__init__()
        self.is_conv = isinstance(layer, SubspaceConv2d)
        if self.is_conv:
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ConfigError("MCU builds support zero padding given as numbers only")
            self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.compressible = layer.compressible
        self.w0 = nn.Parameter(layer.weight.detach().clone())
        self.w1 = nn.Parameter(layer.weight1.detach().clone()) if hasattr(layer, "weight1") else None
        self.b0 = nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None
        self.b1 = nn.Parameter(layer.bias1.detach().clone()) if getattr(layer, "bias1", None) is not None else None
        self.ctrl = nn.Parameter(torch.zeros(CTRL_LEN))
        seen = bool(layer.act_range.seen)
        self.act_range = (float(layer.act_range.lo), float(layer.act_range.hi)) if seen else None

    out_c: int | None = None  # structured width: outputs of this level (None: all)
    sliced: bool = False  # structured width: slice the weights to this level's channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.ctrl
        alpha = c[0]
        w = _blend(self.w0, self.w1, alpha)
        b = _blend(self.b0, self.b1, alpha) if self.b0 is not None else None
        if self.sliced:  # the first channels are kept (StructuredMap), sliced in the graph
            in_c = x.shape[1] // self.groups if self.is_conv else x.shape[-1]
            out_c = self.out_c or w.shape[0]
            w = w[:out_c, :in_c]
            b = b[:out_c] if b is not None else None
        if self.compressible:
            # |w| >= thr without abs(): TVM's C backend has no fabs lowering
            w = torch.where((w >= c[1]) | (-w >= c[1]), w, torch.zeros_like(w))
            w = torch.where(c[6] > 0, w + (_snap(w, c[2], c[3], c[4], c[5]) - w), w)
            x = torch.where(c[9] > 0, _snap(x, c[7], c[8], c[4], c[5]), x)
        if self.is_conv:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, b)


class DeviceNorm(nn.Module):
    def __init__(self, layer: SubspaceNorm) -> None:
        super().__init__()
        self.kind, self.eps, self.groups = layer.kind, layer.eps, layer.groups
        self.g0 = nn.Parameter(layer.weight.detach().clone())
        self.be0 = nn.Parameter(layer.bias.detach().clone())
        self.g1 = nn.Parameter(layer.weight1.detach().clone()) if hasattr(layer, "weight1") else None
        self.be1 = nn.Parameter(layer.bias1.detach().clone()) if hasattr(layer, "bias1") else None
        self.ctrl = nn.Parameter(torch.zeros(1)) if self.g1 is not None else None
        if self.kind == "batch":
            self.register_buffer("running_mean", layer.running_mean.detach().clone())
            self.register_buffer("running_var", layer.running_var.detach().clone())

    groups_at = None  # structured width: the subspace norm's groups_at (groups for c live channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctrl is not None:
            g, b = _blend(self.g0, self.g1, self.ctrl[0]), _blend(self.be0, self.be1, self.ctrl[0])
        else:
            g, b = self.g0, self.be0
        c = x.shape[1]
        g, b = g[:c], b[:c]
        if self.kind == "batch":
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], g, b, False, 0.0, self.eps)
        return F.group_norm(x, self.groups_at(c) if self.groups_at else self.groups, g, b, self.eps)


@dataclass
class DeviceLayer:
    """What the firmware's level switch needs to know about one layer (in graph order)."""

    name: str
    kind: str  # "weight" | "norm"
    ctrl_param: str | None  # parameter name of its ctrl vector in the exported graph
    w0: str | None = None
    w1: str | None = None
    numel: int = 0
    compressible: bool = False
    act_range: tuple[float, float] | None = None


@dataclass
class DeviceNet:
    module: nn.Module
    layers: list[DeviceLayer] = field(default_factory=list)


def device_net(model: SubspaceModel, width_alpha: float | None = None) -> DeviceNet:
    """The device graph. Structured width: one graph per level (`width_alpha`), channels sliced in the graph from
    the full stored weights, so every level shares one weight bank."""
    structured = model.cmap.family == "structured"
    if structured and width_alpha is None:
        raise ConfigError("structured width needs one device graph per level: pass width_alpha")
    level = model.cmap.level(width_alpha) if structured else None
    net = copy.deepcopy(model.net).eval()
    layers = []
    for name, layer in list(net.named_modules()):
        if isinstance(layer, (SubspaceConv2d, SubspaceLinear)):
            if isinstance(layer, SubspaceConv2d) and layer.depthwise and model.cmap.family == "structured":
                raise ConfigError("depthwise convolutions with structured width are not supported on MCUs")
            new = DeviceWeightLayer(layer)
            new.sliced = structured
            if structured and layer.role != "head" and level.width < 1.0:
                from lcs.subspace.levels import StructuredMap

                new.out_c = StructuredMap.channels(layer.out_channels if new.is_conv else layer.out_features,
                                                   level.width)
            layers.append(DeviceLayer(name, "weight", f"{name}.ctrl", f"{name}.w0",
                                      f"{name}.w1" if new.w1 is not None else None, new.w0.numel(),
                                      new.compressible, new.act_range))
        elif isinstance(layer, SubspaceNorm):
            new = DeviceNorm(layer)
            new.groups_at = layer.groups_at
            layers.append(DeviceLayer(name, "norm", f"{name}.ctrl" if new.ctrl is not None else None))
        else:
            continue
        _replace(net, name, new)
    return DeviceNet(net, layers)
