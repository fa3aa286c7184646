"""Where training and evaluation run: the device (cpu, cuda, cuda:N), the precision (fp32, bf16, fp16),
how batches reach the device, and how a step is timed there.

Mixed precision (`--precision bf16|fp16`) is torch's autocast: convolutions and matrix products run in
the low precision on the tensor cores. The subspace's own arithmetic stays in float32, on every device,
so that a level means the same weights as on the CPU and on the boards:

  - the line blend (1 - a) w0 + a w1 and the endpoints themselves (parameters are float32; autocast does
    not touch element-wise ops), so the weights of a level are bit-identical to the CPU path's;
  - TopK masks: chosen on the float32 blended weights (bf16 has 8 significant bits: thousands of
    weights of a layer would tie, and which ones are kept would change);
  - fake quantization: grid (min/max, scale, zero point), rounding and activation ranges in float32
    (a bf16 scale would move every grid point; `layers.compressed_input` casts bf16 activations up
    before quantizing them);
  - norms (group / instance / layer / batch) in float32: their mean and variance over many values;
  - the loss (autocast keeps cross-entropy in float32), the cos^2 regulariser, the gradient re-weighting
    of the line (after fp16's grad scaler unscales), the optimizer step and evaluation (always float32).

Only the product inside a conv / linear sees bf16 (or fp16) copies of its float32 inputs and weights.
On CUDA, "fp32" is torch's default, under which cuDNN convolutions may use TF32
(NVIDIA_TF32_OVERRIDE=0 turns that off).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import (BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, Subset,
                              TensorDataset)

from lcs.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Accel:
    """Placement of a run, not part of its recipe (checkpoints do not store it; metrics record it)."""

    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (training only: evaluation is float32)
    workers: int | None = None  # DataLoader worker processes for file-backed data; None: automatic

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("--workers must be 0 or more")
        parse_device(self.device)


def parse_device(spec: str) -> tuple[str, int | None]:
    """('auto' | 'cpu' | 'cuda', index or None), or a one-line error for anything else."""
    text = str(spec).strip().lower()
    kind, sep, index = text.partition(":")
    if kind in ("auto", "cpu") and not sep:
        return kind, None
    if kind == "cuda" and (not sep or index.isdigit()):
        return kind, int(index) if sep else None
    raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The torch device for `spec`. auto: CUDA when present. Under torchrun, `cuda` (and auto) is the
    GPU of this process's local rank (wrapping round when ranks outnumber GPUs)."""
    kind, index = parse_device(spec)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"--device {spec}: {why} (torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if index is None:
        index = local_rank % count
    elif index >= count:
        raise ConfigError(f"--device {spec}: only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16")


def autocast(precision: str, device: torch.device):
    """The low-precision region of a training step (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range underflows small gradients); bf16 has float32's range."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def fp32_region(x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """`x` in float32 and a context with autocast off, where autocast is on (else `x` and a no-op):
    the parts of a layer that must compute as the CPU path does (see the module docstring)."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return x.float(), torch.autocast(x.device.type, enabled=False)
    return x, contextlib.nullcontext()


# -- data -----------------------------------------------------------------------------------------

def in_memory(dataset: Dataset) -> TensorDataset | None:
    """`dataset` as one TensorDataset when it is in memory: a TensorDataset, or a Subset of one (gathered)."""
    if isinstance(dataset, TensorDataset):
        return dataset
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return TensorDataset(*(t[index] for t in dataset.dataset.tensors))
    return None


def default_workers(dataset: Dataset, device: torch.device) -> int:
    """Worker processes: none for in-memory tensors (a batch is one gather); for file-backed data
    (decoding, transforms) on a GPU, up to 8 per process, sharing the cores with the other local ranks."""
    if isinstance(dataset, TensorDataset) or device.type != "cuda":
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, (os.cpu_count() or 1) // max(1, local) - 1))


def loader(dataset: Dataset, batch_size: int, *, device: torch.device, sampler: Sampler | None = None,
           shuffle: bool = False, drop_last: bool = False, generator: torch.Generator | None = None,
           workers: int | None = None) -> DataLoader:
    """A DataLoader whose batches come in the same order as `DataLoader(dataset, batch_size, shuffle=...,
    sampler=..., drop_last=..., generator=...)` would give them. In-memory tensors are gathered a batch at
    a time (one index per batch instead of one per image); pinned memory when batches go to a GPU."""
    pin = device.type == "cuda"
    tensors = in_memory(dataset)
    if tensors is not None:
        # The same samplers the DataLoader would build, so the same generator draws the same order.
        inner = sampler if sampler is not None else (
            RandomSampler(tensors, generator=generator) if shuffle else SequentialSampler(tensors))
        return DataLoader(tensors, batch_size=None, sampler=BatchSampler(inner, batch_size, drop_last),
                          generator=generator, pin_memory=pin)
    workers = default_workers(dataset, device) if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      drop_last=drop_last, generator=generator, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0)


def to_device(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    return [t.to(device, non_blocking=True) for t in batch]


# -- timing ---------------------------------------------------------------------------------------

class StepClock:
    """Time of training steps. On the CPU, wall time of each step, and this thread's CPU time (less
    sensitive to other processes on a shared machine). On CUDA, a pair of events on the stream per step,
    read once at the end: no synchronisation per step, so the GPU keeps its queue; a step's time is then
    its span on the GPU, including any wait for the CPU to issue its kernels."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._pairs: list = []
        self._seconds = 0.0
        self._cpu_seconds = 0.0
        self._count = 0
        self._started: float | object | None = None
        self._cpu_started = 0.0

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> None:
        if self.cuda:
            self._started = self._event()
        else:
            self._cpu_started = time.thread_time()
            self._started = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._pairs.append((self._started, self._event()))
        else:
            self._seconds += time.perf_counter() - self._started
            self._cpu_seconds += time.thread_time() - self._cpu_started
            self._count += 1

    def mean_seconds(self) -> float:
        if self.cuda:
            if not self._pairs:
                return 0.0
            torch.cuda.synchronize(self.device)
            return sum(a.elapsed_time(b) for a, b in self._pairs) / 1000.0 / len(self._pairs)
        return self._seconds / max(1, self._count)

    def mean_cpu_seconds(self) -> float | None:
        """This thread's CPU time per step (CPU only; None on CUDA, where the GPU's time is what counts)."""
        return None if self.cuda else self._cpu_seconds / max(1, self._count)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
