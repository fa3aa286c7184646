"""The compression functions f(w, gamma) in torch: TopK masks, affine fake quantization, and the
activation range tracker. The device-side code (C and numpy) mirrors these formulas exactly:

    lo = min(t.min(), 0); hi = max(t.max(), 0)
    scale = (hi - lo) / (qmax - qmin)            (1.0 when hi == lo)
    zero  = clamp(qmin - round(lo / scale), qmin, qmax)
    q     = clamp(round(t / scale) + zero, qmin, qmax)      round = half to even
    t'    = (q - zero) * scale
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from lcs.subspace.levels import QuantizationMap, UnstructuredMap


def blend(p0, p1, alpha):
    """The line: w(alpha) = (1 - alpha) w0 + alpha w1 (w0 alone for a point subspace, p1 None). Exact at both ends,
    and the same arithmetic for torch tensors, numpy arrays and graph inputs: the subspace layers, the alpha-input
    graph and the MCU device network all call this one."""
    if p1 is None:
        return p0
    return (1.0 - alpha) * p0 + alpha * p1


def topk_mask(weight: torch.Tensor, keep: float) -> torch.Tensor:
    """A 0/1 mask keeping the `kept_count` largest magnitudes of `weight` (equal magnitudes at the boundary: which
    of them stay is torch.topk's choice)."""
    numel = weight.numel()
    kept = UnstructuredMap.kept_count(numel, keep)
    if kept >= numel:
        return torch.ones_like(weight)
    dropped = numel - kept
    if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64):
        mask = _threshold_mask(weight, dropped, kept)
        if mask is not None:
            return mask
    magnitude = weight.detach().abs().flatten()
    if dropped < kept:
        # Select the smaller side: the dropped smallest. A partial selection costs with the count selected, and
        # most training draws keep more than half (up to twice as fast per layer at keep 0.9).
        mask = torch.ones(numel, dtype=weight.dtype, device=weight.device)
        mask[torch.topk(magnitude, dropped, largest=False, sorted=False).indices] = 0.0
        return mask.view_as(weight)
    mask = torch.zeros(numel, dtype=weight.dtype, device=weight.device)
    if kept > 0:
        mask[torch.topk(magnitude, kept, sorted=False).indices] = 1.0
    return mask.view_as(weight)


def _threshold_mask(weight: torch.Tensor, dropped: int, kept: int) -> torch.Tensor | None:
    """On a CPU: 1 where |weight| lies above its `dropped`-th smallest value, found by numpy's selection (about ten
    times faster than torch.topk), the mask one comparison instead of a scatter, all in numpy on the tensor's memory
    (a numpy call costs a fraction of a torch op's dispatch, and a training step makes a dozen of them per layer).
    That is the topk set exactly unless magnitudes tie across the boundary (or are NaN): then the count is off and
    this returns None."""
    magnitude = np.abs(weight.detach().numpy().reshape(-1))
    threshold = np.partition(magnitude, dropped - 1)[dropped - 1]
    mask = torch.empty(weight.shape, dtype=weight.dtype)
    out = mask.numpy().reshape(-1)
    np.greater(magnitude, threshold, out=out)
    return mask if np.count_nonzero(out) == kept else None


def quant_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the signed b-bit affine grid covering [lo, hi] (0 always included)."""
    qmin, qmax = QuantizationMap.int_range(bits)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero


def quantize(t: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of `t` on the grid (as a float tensor holding whole numbers)."""
    qmin, qmax = QuantizationMap.int_range(bits)
    return torch.clamp(torch.round(t / scale) + zero, qmin, qmax)


class _SnapToGrid(torch.autograd.Function):
    """Forward: the grid value of each element. Backward: the identity (straight-through estimator).
    One fresh tensor updated in place, instead of t + (snapped - t).detach(): a training step with quantized
    activations spends a large share of its extra time here."""

    @staticmethod
    def forward(ctx, t, scale, zero, qmin: int, qmax: int):
        if isinstance(scale, float):
            # Host numbers (fake_quant on a CPU): clamp(round(t / s) + z, qmin, qmax) - z is
            # clamp(round(t / s), qmin - z, qmax - z) exactly (whole numbers; a rounded sum too large to be exact
            # is clamped either way): two kernels fewer, same bits.
            return (t / scale).round_().clamp_(qmin - zero, qmax - zero).mul_(scale)
        return (t / scale).round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


_FLOAT32 = struct.Struct("<f")


def _f32(x: float) -> float:
    return _FLOAT32.unpack(_FLOAT32.pack(x))[0]


def quant_params_float32(lo: float, hi: float, bits: int) -> tuple[float, float] | None:
    """quant_params on host floats, each step rounded to float32 as the tensor ops round it (one float32 + - * /
    computed in float64 and then rounded is the correctly rounded float32 result), so the same bits. None for a
    non-finite range (the tensor path decides what that gives)."""
    qmin, qmax = QuantizationMap.int_range(bits)
    lo, hi = min(_f32(lo), 0.0), max(_f32(hi), 0.0)
    scale = _f32(_f32(hi - lo) / (qmax - qmin))
    if not math.isfinite(scale):
        return None
    scale = scale if scale > 0 else 1.0
    ratio = _f32(lo / scale)
    if not math.isfinite(ratio):
        return None
    zero = float(min(max(qmin - round(ratio), qmin), qmax))  # round(): half to even, as torch.round
    return scale, zero


def min_max(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t.min() and t.max() as 0-d tensors (the same values, NaN included, as torch.aminmax). One pass for both ends,
    except for large tensors on a CPU, where two single reductions are faster (a 200k-element activation: 22 us
    against 32)."""
    if t.device.type == "cpu" and t.numel() >= 32768:
        return torch.amin(t), torch.amax(t)
    return torch.aminmax(t)


def fake_quant(t: torch.Tensor, bits: int, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize and dequantize `t`; the gradient passes straight through (identity)."""
    if lo is None or hi is None:
        lo, hi = min_max(t.detach())
    qmin, qmax = QuantizationMap.int_range(bits)
    if t.device.type == "cpu" and t.dtype == torch.float32:
        # On a CPU, reading the range costs nothing, and the grid's dozen 0-d tensor ops (a kernel dispatch each)
        # become host arithmetic: most of a quantized training step's extra time was here. Same bits.
        params = quant_params_float32(float(lo), float(hi), bits)
        if params is not None:
            return _SnapToGrid.apply(t, params[0], params[1], qmin, qmax)
    scale, zero = quant_params(lo, hi, bits)
    return _SnapToGrid.apply(t, scale, zero, qmin, qmax)


def fake_quant_(t: torch.Tensor, bits: int) -> torch.Tensor:
    """fake_quant(t, bits) in place, for a tensor outside autograd (the same values)."""
    lo, hi = min_max(t)
    qmin, qmax = QuantizationMap.int_range(bits)
    if t.device.type == "cpu" and t.dtype == torch.float32:
        params = quant_params_float32(float(lo), float(hi), bits)
        if params is not None:
            scale, zero = params
            return t.div_(scale).round_().clamp_(qmin - zero, qmax - zero).mul_(scale)
    scale, zero = quant_params(lo, hi, bits)
    return t.div_(scale).round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)


class RangeTracker(torch.nn.Module):
    """Exponential moving average of an activation's min and max (one range shared by all bit widths)."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self._seen = False  # host copy of `seen` once it is true: reading a GPU flag waits for the GPU

    def is_seen(self) -> bool:
        if not self._seen:
            self._seen = bool(self.seen)
        return self._seen

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._seen = False  # re-read from the loaded buffer

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        lo, hi = min_max(x.float())  # float32 like the buffers
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        if not self.is_seen():
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
            self._seen = True
        else:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)
