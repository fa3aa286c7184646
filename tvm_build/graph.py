"""The torch side of a build: which network is exported for each level, and its weights as named arrays.

Every compiled module takes its weights as run-time inputs (`main(x, *params)`), in the order of `ParamSpec`s
recorded in the manifest. Two forms:

* per level (`level_network`): the plain network `lcs.subspace.export.materialize` returns, fp32 weights. Shapes
  may differ between levels (structured width), so each level gets its own module.
* weights as input (`weights_template`): the same network with quantized layers rewritten to take int8 codes plus a
  float32 scale and zero point (dequantized in the graph), activation grids as inputs, and BatchNorm statistics as
  inputs. All levels of the unstructured and quantization families then share one module; only the weights differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lcs.errors import ConfigError, LcsError
from lcs.subspace.export import QuantizeInput, level_weights, materialize


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    from_torch: str = ""  # how the stored array was made from torch's parameter, e.g. "permute_dims(2,3,1,0)"

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        return {**out, "from_torch": self.from_torch} if self.from_torch else out


class _Dequant(nn.Module):
    """A layer whose weight arrives as int8 codes: w = (codes - zero) * scale, exactly as the subspace computes it."""

    def __init__(self, layer: nn.Module, codes: torch.Tensor, scale: float, zero: float) -> None:
        super().__init__()
        self.codes = nn.Parameter(codes.to(torch.int8).clone(), requires_grad=False)
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float32), requires_grad=False)
        self.zero = nn.Parameter(torch.tensor(zero, dtype=torch.float32), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    def weight(self) -> torch.Tensor:
        return (self.codes.to(torch.float32) - self.zero) * self.scale


class DequantConv2d(_Dequant):
    def __init__(self, conv: nn.Conv2d, codes: torch.Tensor, scale: float, zero: float) -> None:
        super().__init__(conv, codes, scale, zero)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class DequantLinear(_Dequant):
    def forward(self, x):
        return nn.functional.linear(x, self.weight(), self.bias)


class GridInput(nn.Module):
    """`QuantizeInput` with its grid (scale, zero, qmin, qmax) as run-time inputs, so the bit width can change."""

    def __init__(self, q: QuantizeInput) -> None:
        super().__init__()
        for name, value in (("scale", q.scale), ("zero", q.zero), ("qmin", q.qmin), ("qmax", q.qmax)):
            setattr(self, name, nn.Parameter(torch.tensor(float(value)), requires_grad=False))

    def forward(self, x):
        q = torch.clamp(torch.round(x / self.scale) + self.zero, self.qmin, self.qmax)
        return (q - self.zero) * self.scale


class BatchNormInput(nn.Module):
    """Inference BatchNorm with its statistics as inputs (torch.export would bake buffers in as constants)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = bn.eps
        self.mean = nn.Parameter(bn.running_mean.detach().clone(), requires_grad=False)
        self.var = nn.Parameter(bn.running_var.detach().clone(), requires_grad=False)
        self.weight = nn.Parameter(bn.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bn.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return nn.functional.batch_norm(x, self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps)


def _swap(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def level_network(model, alpha: float, example: torch.Tensor) -> nn.Module:
    """The plain fp32 network of one level (per-level strategy)."""
    net = materialize(model, alpha, example).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def weights_template(model, alpha: float, example: torch.Tensor) -> nn.Module:
    """The network of one level with every level-dependent quantity as a parameter (weights-as-input strategy)."""
    net = level_network(model, alpha, example)
    for lw in level_weights(model, alpha, example):
        holder = net.get_submodule(lw.name)
        path = lw.name
        if isinstance(holder, nn.Sequential) and isinstance(holder[0], QuantizeInput):
            _swap(net, f"{lw.name}.0", GridInput(holder[0]))
            path, holder = f"{lw.name}.1", holder[1]
        if lw.codes is not None:
            cls = DequantConv2d if isinstance(holder, nn.Conv2d) else DequantLinear
            _swap(net, path, cls(holder, lw.codes, lw.scale, lw.zero))
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            _swap(net, name, BatchNormInput(module))
    return net.eval()


def param_arrays(net: nn.Module) -> dict[str, np.ndarray]:
    """The network's parameters as numpy arrays, in registration order (= torch.export's PARAMETER order)."""
    return {name: p.detach().cpu().numpy().copy() for name, p in net.named_parameters()}


def param_specs(arrays: dict[str, np.ndarray], from_torch: dict[str, str] | None = None) -> list[ParamSpec]:
    return [ParamSpec(name, tuple(int(d) for d in a.shape), str(a.dtype), (from_torch or {}).get(name, ""))
            for name, a in arrays.items()]


def check_same_specs(first: list[ParamSpec], other: list[ParamSpec], what: str) -> None:
    if first != other:
        diff = next(((a, b) for a, b in zip(first, other) if a != b), None)
        detail = f"{diff[0].name} {diff[0].shape} vs {diff[1].name} {diff[1].shape}" if diff else \
            f"{len(first)} vs {len(other)} parameters"
        raise ConfigError(f"{what}: levels differ in weight shapes ({detail}); one module cannot serve them all. "
                          f"Use --strategy per-level (structured width changes shapes)")


def export_order(ep) -> list[str]:
    """Parameter order of an exported program (the order Relax's main takes them after x)."""
    return [s.target for s in ep.graph_signature.input_specs if s.kind.name == "PARAMETER"]


def sample_inputs(config, count: int = 4, seed: int = 0) -> np.ndarray:
    """`count` batch-1 inputs: real test images of the checkpoint's data set when it can be read, else noise."""
    shape = (1, config.model.in_channels, config.model.image_size, config.model.image_size)
    try:
        from lcs.data import load_data

        test = load_data(config.data).test
        xs = [np.asarray(test[i][0], dtype=np.float32).reshape(shape) for i in range(min(count, len(test)))]
        if len(xs) == count:
            return np.stack(xs)
    except (LcsError, OSError):  # data not available where the build runs: fall back to seeded noise
        pass
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
