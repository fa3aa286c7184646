"""The alpha-input strategy: one module `main(x, alpha, *endpoints)` that computes the level inside the graph.

What it supports: the **unstructured** family, line (LCS+L) or point (LCS+P) subspaces, any norm. In the graph:
  w(alpha) = (1 - alpha) * w0 + alpha * w1          (conv, linear and norm affine; float32, as the subspace does)
  mask     = |w| >= the kept_count-th largest |w|    kept_count = numel - dropped_count(numel, alpha), in float64
so the device stores the two endpoints once and can run any alpha in the trained range, not only the built levels.
A magnitude tie at the threshold would keep both tied weights (torch's TopK keeps one); the build compares every
level with the materialized torch network and refuses if that ever changes an output.
Not supported: structured width (shapes depend on alpha; use per-level) and quantization (use weights-as-input,
which stores int8 codes). Sorting the weights each call makes this the slowest strategy per inference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lcs.errors import ConfigError
from lcs.subspace.layers import SubspaceConv2d, SubspaceLinear, SubspaceNorm
from lcs.subspace.compress import blend
from lcs.subspace.levels import UnstructuredMap, dropped_count


def _topk_in_graph(w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    flat = w.abs().flatten()
    n = flat.numel()
    kept = n - dropped_count(n, alpha, torch.floor)  # alpha is float64: the arithmetic of UnstructuredMap.kept_count
    values = torch.sort(flat, descending=True).values
    threshold = torch.gather(values, 0, torch.clamp(kept - 1, min=0).to(torch.int64))
    return w * ((w.abs() >= threshold) & (kept > 0)).to(w.dtype)


class _Endpoints(nn.Module):
    def __init__(self, layer, names=("weight", "bias")) -> None:
        super().__init__()
        for name in names:
            for suffix in ("", "1"):
                p = getattr(layer, name + suffix, None)
                if p is not None:
                    setattr(self, name + suffix, nn.Parameter(p.detach().clone(), requires_grad=False))

    def get(self, name: str, a32):
        p0 = getattr(self, name, None)
        return None if p0 is None else blend(p0, getattr(self, name + "1", None), a32)

    def weight_and_bias(self):
        """Blended at alpha (float32, as the subspace blends), TopK-masked with alpha in float64 when compressible."""
        a64 = self.alpha
        a32 = a64.to(torch.float32)
        w = self.get("weight", a32)
        if self.compressible:
            w = _topk_in_graph(w, a64)
        return w, self.get("bias", a32)


class AlphaConv2d(_Endpoints):
    def __init__(self, layer: SubspaceConv2d, plain: nn.Conv2d) -> None:
        super().__init__(layer)
        self.compressible = bool(layer.compressible)
        self.stride, self.padding, self.dilation, self.groups = plain.stride, plain.padding, plain.dilation, plain.groups
        self.alpha = None

    def forward(self, x):
        w, b = self.weight_and_bias()
        return nn.functional.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class AlphaLinear(_Endpoints):
    def __init__(self, layer: SubspaceLinear, plain: nn.Linear) -> None:
        super().__init__(layer)
        self.compressible = bool(layer.compressible)
        self.alpha = None

    def forward(self, x):
        return nn.functional.linear(x, *self.weight_and_bias())


class AlphaGroupNorm(_Endpoints):
    def __init__(self, layer: SubspaceNorm, plain: nn.GroupNorm) -> None:
        super().__init__(layer)
        self.num_groups, self.eps = plain.num_groups, plain.eps
        self.alpha = None

    def forward(self, x):
        a32 = self.alpha.to(torch.float32)
        return nn.functional.group_norm(x, self.num_groups, self.get("weight", a32), self.get("bias", a32), self.eps)


class AlphaNet(nn.Module):
    """`forward(x, alpha)`: alpha is a float64 tensor of shape (1,)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._alpha_layers = [m for m in net.modules() if isinstance(m, (AlphaConv2d, AlphaLinear, AlphaGroupNorm))]

    def forward(self, x, alpha):
        for m in self._alpha_layers:
            m.alpha = alpha
        return self.net(x)


class AlphaLevel(nn.Module):
    """One level of an AlphaNet: what build.py exports (`export_net`, `export_args`) and checks against."""

    def __init__(self, alpha_net: AlphaNet, alpha: float) -> None:
        super().__init__()
        self.export_net = alpha_net
        self.alpha = float(alpha)
        self.extra_inputs = [{"name": "alpha", "shape": [1], "dtype": "float64", "value": self.alpha}]

    def alpha_tensor(self) -> torch.Tensor:
        return torch.tensor([self.alpha], dtype=torch.float64)

    def export_args(self, example):
        return (example, self.alpha_tensor())

    def forward(self, x):
        return self.export_net(x, self.alpha_tensor())


def build_alpha_net(model, example: torch.Tensor) -> AlphaNet:
    from lcs.subspace.export import materialize

    if not isinstance(model.cmap, UnstructuredMap):
        raise ConfigError(f"strategy alpha-input supports the unstructured family only (this checkpoint is "
                          f"{model.cmap.family}): use --strategy weights-as-input for quantization, per-level for "
                          f"structured width")
    plain = materialize(model, 1.0, example)  # the structure; weights are replaced by endpoints below
    net = copy.deepcopy(plain)
    for name, layer in model.net.named_modules():
        if isinstance(layer, (SubspaceConv2d, SubspaceLinear, SubspaceNorm)):
            target = net.get_submodule(name)
            if isinstance(layer, SubspaceConv2d):
                new = AlphaConv2d(layer, target)
            elif isinstance(layer, SubspaceLinear):
                new = AlphaLinear(layer, target)
            elif isinstance(target, nn.GroupNorm):
                new = AlphaGroupNorm(layer, target)
            else:  # BatchNorm: statistics do not depend on alpha; a line's affine endpoints are not supported here
                if getattr(layer, "weight1", None) is not None:
                    raise ConfigError("strategy alpha-input does not support BatchNorm on a line; use per-level")
                continue
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, new)
    return AlphaNet(net).eval()


@torch.no_grad()
def networks(ckpt, alphas, example: torch.Tensor) -> list[AlphaLevel]:
    """One AlphaLevel per alpha, all sharing one AlphaNet; each is checked against the materialized level."""
    from lcs.subspace.export import materialize

    alpha_net = build_alpha_net(ckpt.model, example)
    levels = []
    for alpha in alphas:
        level = AlphaLevel(alpha_net, alpha)
        expected = materialize(ckpt.model, alpha, example)(example)
        diff = float((level(example) - expected).abs().max())
        if not diff <= 1e-5:
            raise ConfigError(f"alpha-input graph differs from the subspace at alpha {alpha:g} by {diff:.3g} "
                              f"(a magnitude tie at the TopK threshold?); use --strategy weights-as-input")
        levels.append(level)
    return levels
