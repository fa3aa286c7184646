"""Subspace layers: conv, linear and norm whose parameters sit on a line (LCS+L) or a point (LCS+P),
and which apply the current compression level in their forward pass.

How alpha reaches a layer: `SubspaceModel.set_alpha` (model.py) writes each layer's `state`
(a `LayerState`); layers only read it. Line parameters are named `weight`/`bias` (endpoint 0,
the efficient end) and `weight1`/`bias1` (endpoint 1, the accurate end).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lcs.accel import fp32_region
from lcs.subspace.compress import RangeTracker, blend, fake_quant, fake_quant_, topk_mask
from lcs.subspace.levels import StructuredMap

# Endpoint init "copy" (config.SubspaceConfig.endpoint_init): noise added to endpoint 1's weights,
# relative to the weight tensor's standard deviation. Small enough that the line starts short,
# large enough that the two endpoints are different networks from the first step.
COPY_NOISE = 0.1


def _float32(value: float) -> float:
    """The nearest float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _first(t: torch.Tensor, *sizes: int) -> torch.Tensor:
    """The leading block of `t` (structured width): t[:sizes[0], :sizes[1]]. The tensor itself when that is
    all of it: a full-size slice still costs a copy into a zero tensor in the backward pass."""
    shape = t.shape
    if sizes[0] >= shape[0] and (len(sizes) == 1 or sizes[1] >= shape[1]):
        return t
    return t[tuple(slice(0, n) for n in sizes)]


@dataclass
class LayerState:
    """What one layer runs at right now."""

    alpha: float = 1.0  # position on the line (ignored by point subspaces)
    keep: float = 1.0  # unstructured TopK keep fraction
    width: float = 1.0  # structured width fraction
    bits: int | None = None  # quantization bit width (None: float)
    quantize_acts: bool = False  # fake-quantize this layer's input as well
    track_acts: bool = False  # update the activation range (training)


class SubspaceLayer(nn.Module):
    """Common machinery: endpoint parameters, blending, and the per-layer state."""

    line_names: tuple[str, ...] = ()

    def _init_subspace(self, line: bool, role: str, compressible: bool) -> None:
        self.line = line
        self.role = role  # "stem", "body" or "head"
        self.compressible = compressible  # weights masked/quantized (stem and head usually not)
        self.state = LayerState()
        self.blend_cache: dict[str, torch.Tensor] = {}  # filled by SubspaceModel.forward (one fused blend)

    def add_endpoint(self, name: str, init: torch.Tensor) -> None:
        self.register_parameter(name + "1", nn.Parameter(init.detach().clone()))

    def blended(self, name: str) -> torch.Tensor | None:
        cached = self.blend_cache.get(name)
        if cached is not None:
            return cached
        p0 = self._parameters.get(name)  # not getattr: nn.Module's attribute lookup costs a step's worth of calls
        p1 = self._parameters.get(name + "1")
        if p0 is None or p1 is None:
            return p0
        # alpha as the float32 every device holds (firmware ctrl vectors, alpha-input graphs), so their
        # (1 - alpha) w0 + alpha w1 gives bit-identical weights. Exact at both ends ((1 - 1) * w0 + 1 * w1
        # == w1), and both endpoints stay in the graph (DDP needs every parameter in every step).
        return blend(p0, p1, _float32(self.state.alpha))

    def endpoint_pairs(self):
        """(name, p0, p1) for each of this layer's line parameters."""
        for name in self.line_names:
            p1 = getattr(self, name + "1", None)
            if p1 is not None:
                yield name, getattr(self, name), p1


class _WeightLayer(SubspaceLayer):
    """Shared by conv and linear: compress a weight, fake-quantize the input."""

    def _setup_weight_layer(self, line: bool, role: str, compressible: bool, line_weights: bool,
                            endpoint_init: str) -> None:
        self._init_subspace(line, role, compressible)
        self.line_names = ("weight", "bias") if line and line_weights else ()
        self.act_range = RangeTracker()
        for name in self.line_names:
            p = getattr(self, name)
            if p is None:
                continue
            if name != "weight":
                self.add_endpoint(name, p)
            elif endpoint_init == "copy":
                self.add_endpoint(name, p + COPY_NOISE * p.detach().std() * torch.randn_like(p))
            else:  # reference: an independent draw, N(0, sqrt(2 / fan_out))
                fan_out = p.shape[0] * math.prod(p.shape[2:])
                self.add_endpoint(name, torch.randn_like(p) * math.sqrt(2.0 / fan_out))

    def compressed_weight(self, weight: torch.Tensor) -> torch.Tensor:
        s = self.state
        if not self.compressible:
            return weight
        early = self.blend_cache.get("compressed_weight")  # SubspaceModel.forward compressed this very tensor
        if early is not None and early[0] is weight:
            return early[1]
        if s.keep < 1.0:
            weight = weight * topk_mask(weight, s.keep)
        if s.bits is not None:
            weight = fake_quant(weight, s.bits)
        return weight

    @torch.no_grad()
    def compress_(self, weight: torch.Tensor) -> torch.Tensor | None:
        """compressed_weight in place on a tensor outside autograd (the flat blend's leaves): the same values.
        Returns the TopK mask (its gradient's factor), or None."""
        s = self.state
        mask = None
        if s.keep < 1.0:
            mask = topk_mask(weight, s.keep)
            weight.mul_(mask)
        if s.bits is not None:
            fake_quant_(weight, s.bits)
        return mask

    def compressed_input(self, x: torch.Tensor) -> torch.Tensor:
        s = self.state
        if not self.compressible or s.bits is None:
            return x
        # Ranges and the grid in float32 under mixed precision (lcs/accel.py says why).
        x, fp32 = fp32_region(x)
        with fp32:
            if s.track_acts and self.training:
                self.act_range.update(x)
            if s.quantize_acts and self.act_range.is_seen():
                return fake_quant(x, s.bits, self.act_range.lo, self.act_range.hi)
        return x

    def out_features_at(self, full: int) -> int:
        """Structured width: how many outputs this layer produces (the head keeps all)."""
        if self.role == "head" or self.state.width >= 1.0:
            return full
        return StructuredMap.channels(full, self.state.width)


class SubspaceConv2d(nn.Conv2d, _WeightLayer):
    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, line: bool, role: str, compressible: bool, line_weights: bool = True,
                  endpoint_init: str = "copy"):
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
        )
        layer.load_state_dict(conv.state_dict())
        layer._setup_weight_layer(line, role, compressible, line_weights, endpoint_init)
        return layer

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.blended("weight"), self.blended("bias")
        in_c, groups = x.shape[1], self.groups
        if self.depthwise:
            out_c, groups = in_c, in_c
            weight = _first(weight, out_c)
        else:
            out_c = self.out_features_at(self.out_channels)
            weight = _first(weight, out_c, in_c // groups)
        if bias is not None:
            bias = _first(bias, out_c)
        x = self.compressed_input(x)
        return F.conv2d(x, self.compressed_weight(weight), bias, self.stride, self.padding, self.dilation, groups)


class SubspaceLinear(nn.Linear, _WeightLayer):
    @classmethod
    def from_linear(cls, linear: nn.Linear, *, line: bool, role: str, compressible: bool, line_weights: bool = True,
                  endpoint_init: str = "copy"):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.load_state_dict(linear.state_dict())
        layer._setup_weight_layer(line, role, compressible, line_weights, endpoint_init)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.blended("weight"), self.blended("bias")
        out_f = self.out_features_at(self.out_features)
        weight = _first(weight, out_f, x.shape[-1])
        if bias is not None:
            bias = _first(bias, out_f)
        x = self.compressed_input(x)
        return F.linear(x, self.compressed_weight(weight), bias)


class SubspaceNorm(SubspaceLayer):
    """Group, instance, layer (one group) or batch norm over the first c channels of its input.

    Group, instance and layer norm use no running statistics, so every compression level runs
    without recalibration. Batch norm shares one set of running statistics across levels (the
    US-Nets baseline) and is warned about.
    """

    def __init__(self, kind: str, channels: int, groups: int = 1, eps: float = 1e-5, momentum: float = 0.1,
                 *, line: bool = False, role: str = "body", endpoint_init: str = "copy") -> None:
        super().__init__()
        self.kind, self.channels, self.eps, self.momentum = kind, channels, eps, momentum
        self.groups = {"group": max(1, min(groups, channels)), "instance": channels, "layer": 1}.get(kind, 1)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
        self._init_subspace(line, role, compressible=False)
        self.line_names = ("weight", "bias") if line else ()
        # "copy": endpoint 1 equals endpoint 0 (load_affine keeps them equal); reference: gamma 0.5, beta 0.
        self.copy_endpoints = line and endpoint_init == "copy"
        if line:
            self.add_endpoint("weight", torch.full((channels,), 1.0 if self.copy_endpoints else 0.5))
            self.add_endpoint("bias", torch.zeros(channels))

    def load_affine(self, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        with torch.no_grad():
            for name, value in (("weight", weight), ("bias", bias)):
                if value is None:
                    continue
                getattr(self, name).copy_(value)
                if self.copy_endpoints:
                    getattr(self, name + "1").copy_(value)

    def groups_at(self, c: int) -> int:
        """Groups for c live channels: sliced widths need not divide the full group count."""
        if self.kind == "instance":
            return c
        return math.gcd(self.groups, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight, bias = _first(self.blended("weight"), c), _first(self.blended("bias"), c)
        x, fp32 = fp32_region(x)  # statistics in float32 under mixed precision, on every device
        with fp32:
            if self.kind == "batch":
                return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias,
                                    self.training, self.momentum, self.eps)
            return F.group_norm(x, self.groups_at(c), weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.channels}, groups={self.groups}, line={self.line}"
