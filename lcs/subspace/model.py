"""Turning a plain torch network into a compressible subspace, and setting alpha on it.

`SubspaceModel(net, cfg)` swaps every Conv2d, Linear and norm layer of `net` for its subspace
twin (layers.py). The first conv is the stem and the last conv/linear the head; both stay
uncompressed unless the config says otherwise. `set_alpha` is the one call that moves the
whole model to a point of the subspace.
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from typing import Iterator, Sequence

import torch
from torch import nn

from lcs.config import SubspaceConfig
from lcs.errors import ConfigError
from lcs.subspace.layers import SubspaceConv2d, SubspaceLayer, SubspaceLinear, SubspaceNorm, _float32, _WeightLayer
from lcs.subspace.levels import Level

_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.BatchNorm1d)


class BatchNormWarning(UserWarning):
    pass


class SubspaceModel(nn.Module):
    def __init__(self, net: nn.Module, cfg: SubspaceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cmap = cfg.compression_map()
        self.net = _convert(net, cfg)
        self.level: Level = self.cmap.level(1.0)
        # The layer list, walked once: set_alpha runs every training pass, and a module-tree walk per call costs
        # as much as several small kernels.
        self._layers: tuple[SubspaceLayer, ...] = tuple(m for m in self.net.modules() if isinstance(m, SubspaceLayer))
        self.line_slots = [(layer, name) for layer in self.layers() for name, _, _ in layer.endpoint_pairs()]
        self._compressed_weight_layers = tuple(m for m in self._layers if isinstance(m, _WeightLayer) and m.compressible)
        self.line_pairs = [(p0, p1) for layer in self.layers() for _, p0, p1 in layer.endpoint_pairs()]
        # Blend every line parameter in one multi-tensor op per forward (see forward). Off under DDP (train.py).
        self.fused_blend = True
        # (centre, spread) while training folds split_line_gradients into the fused blend's backward (train.py);
        # None: the blend's gradients are the formula's own.
        self.folded_split: tuple[float, float] | None = None
        # (flat, n) while training keeps every endpoint in one flat parameter, all w0 in flat[:n] and all w1 in
        # flat[n:2n] in line_pairs order (train.FlatParameters): the fused blend then runs on the two blocks.
        self.flat_line = None
        self.set_alpha(1.0)

    @property
    def flat_line(self) -> tuple[torch.Tensor, int] | None:
        return self._flat_line

    @flat_line.setter
    def flat_line(self, value: tuple[torch.Tensor, int] | None) -> None:
        self._flat_line = value
        self._flat_blend: _FlatBlend | None = None  # built on the next forward; dropped with the flat tensor

    # -- the subspace ---------------------------------------------------------------------------
    def layers(self) -> Iterator[SubspaceLayer]:
        return iter(self._layers)

    def weight_layers(self) -> Iterator[_WeightLayer]:
        return (m for m in self.net.modules() if isinstance(m, _WeightLayer))

    def set_alpha(self, alpha: float, *, effective: float | None = None, quantize_acts: bool = True,
                  track_acts: bool = False) -> Level:
        """Move the whole model to alpha: blend the endpoints at alpha and compress at gamma(alpha).

        `effective` overrides the compression alpha alone (training warm-up anneals it towards 1
        while the line position stays at alpha).
        """
        level = self.cmap.level(alpha)
        comp = level if effective is None else self.cmap.level(effective)
        for layer in self.layers():
            s = layer.state
            s.alpha = level.alpha
            s.keep, s.width, s.bits = comp.keep, comp.width, comp.bits
            s.quantize_acts, s.track_acts = quantize_acts, track_acts
        self.level = level
        return level

    def set_layer_bits(self, bits: Sequence[int]) -> None:
        """Mixed precision (quantized LCS+P training): one bit width per compressed weight layer."""
        layers = [m for m in self.weight_layers() if m.compressible]
        if len(bits) != len(layers):
            raise ValueError(f"{len(bits)} bit widths for {len(layers)} layers")
        for layer, b in zip(layers, bits):
            layer.state.bits = int(b)

    def random_layer_bits(self, rng: random.Random) -> list[int]:
        widths = self.cmap.bit_widths
        return [rng.choice(widths) for m in self.weight_layers() if m.compressible]

    def regularised_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """Endpoint pairs under the cos^2 regulariser: the conv/linear weights, or the norm gammas
        when only norms are on the line (as in the reference's structured LCS+L)."""
        want = SubspaceNorm if self.cfg.line_params == "norm" else _WeightLayer
        return [(p0, p1) for layer in self.layers() if isinstance(layer, want)
                for name, p0, p1 in layer.endpoint_pairs() if name == "weight"]

    @torch.no_grad()
    def split_line_gradients(self, centre: float, spread: float) -> None:
        """Re-weight the endpoint gradients as steps of the line's centre c = (w0 + w1) / 2 and its
        half-difference d = (w1 - w0) / 2, with w(alpha) = c + (2 alpha - 1) d. After this, an SGD step
        of rate lr moves c at centre * lr and d at spread * lr. Plain SGD on the endpoints is
        centre = spread = 0.5: the centre learns at half the rate of a single network, and d takes
        steps as large as c's, mostly noise while every level is still nearly dense."""
        # With g_c = g0 + g1 = dL/dc and g_d = g1 - g0 = dL/dd, the new endpoint gradients are
        # centre * g_c -/+ spread * g_d, i.e. (centre + spread) g0 + (centre - spread) g1 and mirrored.
        same, other = centre + spread, centre - spread
        # Not used in this step: no gradient (both endpoints stay in the graph otherwise).
        pairs = [(p0, p1) for p0, p1 in self.line_pairs if p0.grad is not None and p1.grad is not None]
        if not pairs:
            return
        # Multi-tensor ops: a few kernels for all pairs on a GPU; on a CPU the same per-tensor ops as a loop.
        g0 = [p0.grad for p0, _ in pairs]
        g1 = [p1.grad for _, p1 in pairs]
        new0 = torch._foreach_mul(g0, same)
        torch._foreach_add_(new0, g1, alpha=other)
        torch._foreach_mul_(g1, same)
        torch._foreach_add_(g1, g0, alpha=other)
        torch._foreach_copy_(g0, new0)  # in place: gradients may be views of one flat buffer (train.FlatParameters)

    def cos2(self) -> torch.Tensor:
        """cos^2 between the two endpoints, global over the regularised weights (0 for a point)."""
        pairs = self.regularised_pairs()
        if not pairs:
            return torch.zeros(())
        dot = sum((a * b).sum() for a, b in pairs)
        n0 = sum((a * a).sum() for a, _ in pairs)
        n1 = sum((b * b).sum() for _, b in pairs)
        return dot * dot / (n0 * n1 + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused_blend and self.line_pairs and not any(
            layer.state.alpha != self.level.alpha for layer, _ in self.line_slots)  # else layers moved one by one
        if not fused:
            if self.folded_split is not None and self.line_pairs and torch.is_grad_enabled():
                raise RuntimeError("folded_split needs the fused blend (one alpha for all layers, no DDP)")
            return self.net(x)  # each layer blends its own
        a = _float32(self.level.alpha)
        # (1 - a) w0 + a w1 for all line parameters at once: the per-layer formula (same values, bit for bit),
        # in a handful of GPU kernels instead of three per parameter forward and two backward. Under DDP each
        # layer blends its own instead, so that gradients are ready, and reduced, layer by layer.
        flat_blend = None
        if self.flat_line is not None:
            if self._flat_blend is None or not self._flat_blend.serves(self.flat_line):
                self._flat_blend = _FlatBlend(*self.flat_line, [p0.shape for p0, _ in self.line_pairs])
            flat_blend = self._flat_blend
            blended = flat_blend.forward(a, self.folded_split)
        else:
            blended = _LineBlend.apply(a, self.folded_split, *[p0 for p0, _ in self.line_pairs],
                                       *[p1 for _, p1 in self.line_pairs])
        for (layer, name), value in zip(self.line_slots, blended):
            layer.blend_cache[name] = value
        # Every layer's weight compression (TopK mask, fake quantization) here, one after the other, instead of
        # between the convolutions: the same ops on the same tensors, but on a CPU a small op run right after the
        # convolutions costs several times what it costs after another small op (caches), and a line step makes
        # a dozen of them per compressed layer. The layer picks its compressed weight up if it uses this tensor.
        # The flat blend's weights are leaves outside autograd: compressed in place there (no autograd node, no new
        # tensor), the flat blend gives each leaf's gradient its TopK mask (d(w m)/dw = m; the quantizer passes
        # gradients straight through).
        for layer in self._compressed_weight_layers:
            s = layer.state
            weight = layer.blend_cache.get("weight")
            if weight is None or (s.keep >= 1.0 and s.bits is None):
                continue
            if flat_blend is not None:
                flat_blend.mask_gradient(weight, layer.compress_(weight))
                layer.blend_cache["compressed_weight"] = (weight, weight)
            else:
                layer.blend_cache["compressed_weight"] = (weight, layer.compressed_weight(weight))
        try:
            return self.net(x)
        finally:
            for layer, _ in self.line_slots:
                layer.blend_cache.clear()

    # -- reporting ------------------------------------------------------------------------------
    @torch.no_grad()
    def compression_stats(self) -> dict:
        """At the current level: zero fraction of conv/linear weights actually used, and their count."""
        total = zeros = 0
        for layer in self.weight_layers():
            w = layer.compressed_weight(layer.blended("weight"))
            total += w.numel()
            zeros += int((w == 0).sum())
        return {"weights": total, "zero_fraction": zeros / max(total, 1)}


class _LineBlend(torch.autograd.Function):
    """compress.blend ((1 - a) w0 + a w1, the one formula) for many endpoint pairs at once, forward and backward
    as multi-tensor ops: the same element-wise products and sums, so the same bits (tests/test_accel.py).
    Inputs: a, the folded split (or None), then all w0, then all w1 (same order). Gradients: g (1 - a) and g a, as
    the formula's; with `split` = (centre, spread), those gradients already re-weighted as
    SubspaceModel.split_line_gradients would (the same linear map, applied per pass instead of once per step: two
    scalar multiplies per parameter instead of four more multi-tensor ops over all of them)."""

    @staticmethod
    def forward(ctx, a: float, split: tuple[float, float] | None, *endpoints: torch.Tensor):
        n = len(endpoints) // 2
        ctx.a, ctx.split = a, split
        f0, f1 = _factors(endpoints[0], 1.0 - a, a)
        return tuple(torch._foreach_add(torch._foreach_mul(endpoints[:n], f0), torch._foreach_mul(endpoints[n:], f1)))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        f0, f1 = _factors(grads[0], *_split_factors(ctx.a, ctx.split))
        return (None, None, *torch._foreach_mul(grads, f0), *torch._foreach_mul(grads, f1))


class _FlatBlend:
    """The line blend on one flat parameter holding all w0 in flat[:n] and all w1 in flat[n:2n] (train.FlatParameters),
    outside autograd: the blended weights are computed under no_grad into one buffer whose per-parameter views are
    leaf tensors, so autograd accumulates their gradients into one flat gradient buffer (in place, as for any
    parameter), and a callback at the end of the backward pass adds (1 - a) g and a g (or the folded split's factors)
    to the endpoints' gradient. The same element-wise products and sums as compress.blend and _LineBlend (the same
    bits), without the per-output cost of a many-output autograd Function (views, cat, a zero-filled gradient of
    the whole flat parameter), and with the two endpoint blocks as the rows of one (2, n) view: one product for
    both, with a (2, 1) column of factors.

    One backward per forward: a second forward before the first one's backward rewrites the blended weights,
    which autograd reports as an in-place modification."""

    def __init__(self, flat: torch.Tensor, n: int, shapes: list) -> None:
        self.flat, self.n = flat, n
        self.value = torch.empty(n, dtype=flat.dtype, device=flat.device)
        self.grad = torch.zeros_like(self.value)
        self.products = torch.empty(2, n, dtype=flat.dtype, device=flat.device)  # f0 w0 and f1 w1; then f0 g, f1 g
        self.leaves = []
        offset = 0
        for shape in shapes:
            size = math.prod(shape)
            leaf = self.value[offset:offset + size].view(shape).requires_grad_(True)
            leaf.grad = self.grad[offset:offset + size].view(shape)  # accumulated in place (AccumulateGrad)
            leaf.register_post_accumulate_grad_hook(self._accumulated)
            self.leaves.append(leaf)
            offset += size
        self.factors = _column(flat, 1.0, 0.0)
        self.queued = False
        self.masks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (gradient view, mask) of this forward's leaves

    def serves(self, flat_line: tuple[torch.Tensor, int]) -> bool:
        return flat_line[0] is self.flat and flat_line[1] == self.n

    def forward(self, a: float, split: tuple[float, float] | None) -> list[torch.Tensor]:
        backward_follows = torch.is_grad_enabled()
        with torch.no_grad():
            # (1 - a) w0 + a w1: each product rounded, then their sum, as compress.blend
            torch.mul(self.flat[:2 * self.n].view(2, self.n), _column(self.flat, 1.0 - a, a), out=self.products)
            torch.add(self.products[0], self.products[1], out=self.value)
            if backward_follows:
                self.grad.zero_()
        self.masks.clear()
        self.factors = _column(self.flat, *_split_factors(a, split))
        return self.leaves

    def mask_gradient(self, leaf: torch.Tensor, mask: torch.Tensor | None) -> None:
        """`leaf` (one of this forward's) was multiplied by `mask` in place: its gradient gets the same mask."""
        if mask is not None:
            self.masks.append((leaf.grad, mask))

    def _accumulated(self, _leaf: torch.Tensor) -> None:
        if not self.queued:  # once per backward, after every leaf has its gradient
            self.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._to_endpoints)

    def _to_endpoints(self) -> None:
        self.queued = False
        n, flat = self.n, self.flat
        with torch.no_grad():
            if flat.grad is None:
                flat.grad = torch.zeros_like(flat)
            for grad, mask in self.masks:
                grad.mul_(mask)
            torch.mul(self.grad, self.factors, out=self.products)  # rows: f0 g and f1 g
            flat.grad[:2 * n].view(2, n).add_(self.products)


def _split_factors(a: float, split: tuple[float, float] | None) -> tuple[float, float]:
    """The gradient factors of w0 and w1: (1 - a, a), or with the line's gradient split folded in."""
    if split is None:
        return 1.0 - a, a
    # g0' = same g0 + other g1, g1' = same g1 + other g0 with g0 = (1 - a) g, g1 = a g
    same, other = split[0] + split[1], split[0] - split[1]
    return same * (1.0 - a) + other * a, same * a + other * (1.0 - a)


@functools.lru_cache(maxsize=256)
def _column_cached(f0: float, f1: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([[f0], [f1]], dtype=dtype)


def _column(like: torch.Tensor, f0: float, f1: float) -> torch.Tensor:
    """(f0, f1) as a (2, 1) column of `like`'s dtype, on its device: the factors of a (2, n) block's two rows. On a
    CPU from a small cache (the quantization family's alphas are six values, and half of the unstructured draws are
    an end of the line): one tensor fewer to build per pass. Never written to."""
    if like.device.type != "cpu":
        return torch.tensor([[f0], [f1]], dtype=like.dtype, device=like.device)
    return _column_cached(f0, f1, like.dtype)


def _factors(like: torch.Tensor, f0: float, f1: float):
    """The blend's two factors as `like`'s dtype. On a CPU as 0-d tensors: a Python scalar is converted to the
    tensor's dtype once per tensor there (three more kernel calls each). The same float32 values either way."""
    if like.device.type != "cpu":
        return f0, f1
    return torch.tensor(f0, dtype=like.dtype), torch.tensor(f1, dtype=like.dtype)


def _convert(net: nn.Module, cfg: SubspaceConfig) -> nn.Module:
    line = cfg.shape == "line"
    weight_names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weight_names:
        raise ConfigError("the model has no Conv2d or Linear layer to put in a subspace")
    stem, head = weight_names[0], weight_names[-1]
    line_weights = cfg.line_params == "all"
    warned = False
    for name, module in list(net.named_modules()):
        if isinstance(module, SubspaceLayer):
            raise ConfigError("the model is already a subspace model")
        role = "stem" if name == stem else "head" if name == head else "body"
        compressible = {"stem": cfg.compress_stem, "head": cfg.compress_head}.get(role, True)
        if isinstance(module, nn.Conv2d):
            if cfg.family == "structured" and 1 < module.groups and not (module.groups == module.in_channels == module.out_channels):
                raise ConfigError(f"layer {name}: grouped convolutions cannot be width-sliced (only depthwise)")
            new = SubspaceConv2d.from_conv(module, line=line, role=role, compressible=compressible, line_weights=line_weights,
                                          endpoint_init=cfg.endpoint_init)
        elif isinstance(module, nn.Linear):
            new = SubspaceLinear.from_linear(module, line=line, role=role, compressible=compressible, line_weights=line_weights,
                                            endpoint_init=cfg.endpoint_init)
        elif isinstance(module, _NORMS):
            kind = _norm_kind(module)
            if kind == "batch" and not warned:
                warnings.warn("BatchNorm keeps one set of running statistics for every compression level; "
                              "accuracy away from the levels it saw needs recalibration. Prefer group or instance norm.",
                              BatchNormWarning, stacklevel=3)
                warned = True
            channels = module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features
            groups = module.num_groups if isinstance(module, nn.GroupNorm) else 1
            new = SubspaceNorm(kind, channels, groups, module.eps, getattr(module, "momentum", 0.1) or 0.1, line=line, role=role,
                               endpoint_init=cfg.endpoint_init)
            new.load_affine(getattr(module, "weight", None), getattr(module, "bias", None))
        else:
            continue
        _replace(net, name, new)
    return net


def _norm_kind(module: nn.Module) -> str:
    if isinstance(module, nn.GroupNorm):
        if module.num_groups == module.num_channels:
            return "instance"
        return "layer" if module.num_groups == 1 else "group"
    if isinstance(module, nn.InstanceNorm2d):
        if module.track_running_stats:
            raise ConfigError("InstanceNorm2d with running statistics is not batch-independent; use track_running_stats=False")
        return "instance"
    return "batch"


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
