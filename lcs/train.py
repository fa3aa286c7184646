"""Training a compressible subspace (and the baselines it is compared with).

The loop, top to bottom: load data, build the subspace model, then for every batch draw one or
more alphas (the sampler), run the compressed network at each, add the cross-entropy losses and
the beta * cos^2(w0, w1) regulariser, and take an SGD step under a warm-up + cosine schedule.

Runs on the CPU or a GPU (`Accel`: device and precision, lcs/accel.py), on one process, or under
`torchrun` with DDP (NCCL between GPUs, gloo on CPUs): every rank draws the same alphas from the same
seed, so all ranks train the same levels on different data.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from lcs import accel as acc
from lcs import checkpoint
from lcs.accel import Accel
from lcs.config import RunConfig, TrainConfig
from lcs.data import DataSplit, check_fits, load_data
from lcs.errors import ConfigError
from lcs.evaluate import evaluate_levels
from lcs.subspace.levels import CompressionMap
from lcs.subspace.model import SubspaceModel


# -- alpha samplers -------------------------------------------------------------------------------

@dataclass
class Draw:
    """One point to train at in this step."""

    alpha: float  # position on the line and nominal level
    effective: float | None = None  # compression actually applied (warm-up); None: same as alpha
    quantize_acts: bool = True
    layer_bits: list[int] | None = None  # mixed precision: one bit width per compressed layer


def default_sampler(cfg: RunConfig) -> str:
    t, s = cfg.train, cfg.subspace
    if t.sampler:
        return t.sampler
    if t.method == "fixed":
        return "fixed"
    if t.method == "us" or s.family == "structured":
        return "sandwich"
    if s.family == "unstructured":
        return "biased-endpoints" if s.shape == "line" else "delayed-uniform"
    return "discrete" if s.shape == "line" else "per-layer-bits"


def check_sampler(sampler: str, t: TrainConfig) -> None:
    """Refuse a sampler setting that leaves levels untrained: the sandwich rule with 2 samples a step draws only the
    two ends, and the widths between them come out near chance (19 % at width 0.5, issue 17)."""
    if sampler == "sandwich" and t.samples_per_step < 3:
        raise ConfigError(f"the sandwich rule needs at least 3 samples per step (got {t.samples_per_step}: only the two "
                          "ends would train); for two passes use max-and-random or min-and-random")


def draw_alphas(sampler: str, rng: random.Random, progress: float, cfg: RunConfig, cmap: CompressionMap,
                model: SubspaceModel) -> list[Draw]:
    """The alphas to train at for one step. `progress` runs from 0 to 1 over the whole training."""
    t = cfg.train
    lo, hi = cmap.alpha_range
    warm = t.compression_warmup
    warming = warm > 0 and progress < warm
    # Compression warm-up: TopK anneals from dense to its target; activation quantization waits.
    anneal = max(0.0, 1.0 - progress / warm) if warm > 0 else 0.0

    def unstructured_warmup(alpha: float) -> Draw:
        return Draw(alpha, effective=alpha + (1.0 - alpha) * anneal)

    def between() -> float:
        """A level between the ends: uniform, or uniform in log keep (TrainConfig.alpha_spacing); structured
        "grid" (TrainConfig.width_draw): a grid width strictly between the ends."""
        if cmap.family == "structured" and t.width_draw == "grid":
            inner = [a for a in width_grid(t, cmap) if lo < a < hi]
            return rng.choice(inner) if inner else rng.choice((lo, hi))
        if cmap.family == "unstructured" and t.alpha_spacing == "log":
            return lo * (hi / lo) ** rng.random()
        return rng.uniform(lo, hi)

    if sampler == "fixed":
        alpha = t.fixed_alpha
        if cmap.family == "unstructured":
            return [unstructured_warmup(max(alpha, lo))]
        return [Draw(alpha, quantize_acts=not warming)]
    if sampler == "biased-endpoints":
        if rng.random() < t.endpoint_prob:
            # 50/50 keeps the reference's draw (rng.choice), so the default recipe's alphas stay the same
            alpha = rng.choice((lo, hi)) if t.low_end_share == 0.5 else (lo if rng.random() < t.low_end_share else hi)
        else:
            alpha = between()
        return [unstructured_warmup(alpha) if cmap.family == "unstructured" else Draw(alpha, quantize_acts=not warming)]
    if sampler == "uniform":
        return [Draw(between(), quantize_acts=not warming)]
    if sampler == "sandwich":
        n = max(2, t.samples_per_step)
        return [Draw(a, quantize_acts=not warming) for a in [lo, hi] + [between() for _ in range(n - 2)]]
    if sampler == "endpoint-and-random":  # two passes: one end of the line (either, at random) and a level between
        n = max(2, t.samples_per_step)
        return [Draw(a, quantize_acts=not warming) for a in [rng.choice((lo, hi))] + [between() for _ in range(n - 1)]]
    if sampler in ("max-and-random", "min-and-random"):
        # Two passes (structured, issue 17): one end of the line every step (max: the widest, the distillation teacher
        # when distilling; min: the narrowest) and one other: the other end in a share `endpoint_prob` of the steps,
        # else a level between.
        first, last = (hi, lo) if sampler == "max-and-random" else (lo, hi)
        other = last if rng.random() < t.endpoint_prob else between()
        return [Draw(first, quantize_acts=not warming), Draw(other, quantize_acts=not warming)]
    if sampler == "discrete":
        return [Draw(rng.choice(cmap.eval_alphas), quantize_acts=not warming)]
    if sampler == "delayed-uniform":  # unstructured LCS+P: dense until the warm-up ends
        return [Draw(hi)] if warming else [Draw(between())]
    if sampler == "per-layer-bits":  # quantized LCS+P: 8 bit until the warm-up ends, then mixed precision
        if cmap.family != "quantization":
            raise ConfigError("the per-layer-bits sampler needs the quantization family")
        if warming:
            return [Draw(hi, quantize_acts=False)]
        return [Draw(hi, layer_bits=model.random_layer_bits(rng))]
    raise ConfigError(f"unknown sampler {sampler!r}")


def width_grid(t: TrainConfig, cmap: CompressionMap) -> tuple[float, ...]:
    """The alphas of TrainConfig.width_draw "grid": the map's evaluation grid, or width_grid evenly spaced ones."""
    if t.width_grid == 0:
        return tuple(cmap.eval_alphas)
    lo, hi = cmap.alpha_range
    return tuple(lo + (hi - lo) * k / (t.width_grid - 1) for k in range(t.width_grid))


def with_teacher(draws: list[Draw], cmap: CompressionMap, progress: float, cfg: RunConfig) -> list[Draw]:
    """In-place distillation: the step's draws with the densest point of the line first (added when the sampler did
    not draw it): its outputs are the soft targets of the other draws."""
    hi = cmap.alpha_range[1]
    for i, d in enumerate(draws):
        if d.alpha == hi and d.layer_bits is None and d.effective in (None, hi):
            return [d] + draws[:i] + draws[i + 1:]
    warm = cfg.train.compression_warmup
    return [Draw(hi, quantize_acts=not (warm > 0 and progress < warm))] + draws


def batch_shares(draws: list[Draw], hi: float, n: int, split: str, lo: float | None = None,
                 low_share: float = 0.0) -> list[slice | None]:
    """TrainConfig.split_batch: which part of the batch each draw trains on (None: all of it). "narrow": the first
    draw at the densest point the whole batch, every other draw its own contiguous share; "all": every draw a share.
    The shares split the batch, each at least one sample (fewer samples than shares: no split). `low_share` > 0
    (TrainConfig.low_end_batch): the first draw at `lo` gets that fraction of the batch, the others equal shares."""
    shares: list[slice | None] = [None] * len(draws)
    if split == "none" or len(draws) < 2:
        return shares
    widest = next((i for i, d in enumerate(draws) if d.alpha == hi and d.effective in (None, hi)), None)
    others = [i for i in range(len(draws)) if split == "all" or i != widest]
    if (split == "narrow" and widest is None) or n < len(others):
        return shares
    low = next((i for i in others if draws[i].alpha == lo), None) if low_share > 0 and len(others) > 1 else None
    if low is None:
        bounds = [round(k * n / len(others)) for k in range(len(others) + 1)]
        sizes = [bounds[k + 1] - bounds[k] for k in range(len(others))]
    else:
        rest = len(others) - 1
        first = min(max(1, round(low_share * n)), n - rest)
        bounds = [round(k * (n - first) / rest) for k in range(rest + 1)]
        equal = iter(bounds[k + 1] - bounds[k] for k in range(rest))
        sizes = [first if i == low else next(equal) for i in others]
    start = 0
    for i, size in zip(others, sizes):
        shares[i] = slice(start, start + size)
        start += size
    return shares


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum p_teacher log p_student, mean over the batch (KL to the teacher up to a constant)."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def draw_loss(logits: torch.Tensor, y: torch.Tensor, t: TrainConfig, teacher: torch.Tensor | None) -> torch.Tensor:
    """One draw's loss: cross-entropy, mixed with the soft cross-entropy against the teacher's probabilities
    (detached) when distilling."""
    ce = F.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
    if teacher is None or t.distill == 0:
        return ce
    soft = soft_cross_entropy(logits, teacher)
    return soft if t.distill == 1 else (1 - t.distill) * ce + t.distill * soft


# -- schedule -------------------------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to the base rate, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# -- distributed ----------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    backend: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def local_rank() -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @classmethod
    def from_env(cls, device: torch.device | None = None) -> "Dist":
        """This process's place under torchrun (one process: rank 0 of 1). The first call joins the
        process group, with the backend `backend_for(device)`."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            backend = backend_for(device or torch.device("cpu"))
            if backend == "nccl":
                torch.cuda.set_device(device)
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), dist.get_backend())


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo on CPUs. NCCL refuses two ranks on one GPU, so ranks that share a GPU
    (more local processes than GPUs) use gloo, which also reduces CUDA tensors. LCS_DIST_BACKEND
    (nccl or gloo) overrides the choice."""
    chosen = os.environ.get("LCS_DIST_BACKEND", "").strip().lower()
    if chosen:
        if chosen not in ("nccl", "gloo"):
            raise ConfigError(f"LCS_DIST_BACKEND={chosen!r}: use nccl or gloo")
        return chosen
    if device.type != "cuda":
        return "gloo"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return "nccl" if local <= torch.cuda.device_count() else "gloo"


def _check_runs(model: SubspaceModel, data: DataSplit, config: RunConfig) -> None:
    """Fail early, in one line, when the model cannot run on this data at all (e.g. a deep net whose
    feature maps shrink to 1x1 on tiny images, where instance norm has nothing to normalise)."""
    x = torch.stack([data.train[i][0] for i in range(min(2, len(data.train)))])
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # the probe must not move BN statistics
    try:
        with torch.no_grad():
            for alpha in model.cmap.alpha_range:
                model.set_alpha(alpha)
                model(x)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"model {config.model.name} cannot run on {data.info.name} "
                          f"({data.info.in_channels}x{data.info.image_size}x{data.info.image_size}): {first}") from None
    finally:
        for name, value in model.named_buffers():
            value.copy_(buffers[name])


# -- the loop -------------------------------------------------------------------------------------

class FlatParameters:
    """Every parameter of `model` made a view of one flat tensor (`param`, for the optimizer) and its gradient a
    view of one flat gradient (`param.grad`). Backward accumulates into the views in place, so zero the flat
    gradient (zero_grad(set_to_none=False)), never set a parameter's grad to None. `release` gives each
    parameter and gradient storage of its own again (checkpoints save parameters one by one)."""

    def __init__(self, model: torch.nn.Module) -> None:
        # A line's endpoints first, as two blocks (all w0, then all w1, in line_pairs order): the model then blends
        # the two blocks as one (2, n) tensor outside autograd and routes the gradient back after backward
        # (SubspaceModel.flat_line, model._FlatBlend).
        pairs = getattr(model, "line_pairs", [])
        line = [p0 for p0, _ in pairs] + [p1 for _, p1 in pairs]
        listed = {id(p) for p in line}
        self.params = line + [p for p in model.parameters() if p.requires_grad and id(p) not in listed]
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self.params):
            raise ConfigError("parameters of mixed dtype or device cannot share one flat buffer")
        data = torch.cat([p.detach().reshape(-1) for p in self.params])
        grad = torch.zeros_like(data)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.data = data[offset:offset + n].view_as(p)
            p.grad = grad[offset:offset + n].view_as(p)
            offset += n
        self.param = torch.nn.Parameter(data)
        self.param.grad = grad
        self.model = model
        if pairs and all(p.requires_grad for p in line):
            model.flat_line = (self.param, sum(p0.numel() for p0, _ in pairs))

    def release(self) -> None:
        if getattr(self.model, "flat_line", None) is not None:
            self.model.flat_line = None
        for p in self.params:
            p.data = p.data.clone()
            p.grad = None
        self.param.grad = None


class WeightAverage:
    """The uniform average of the parameters over the steps it is given (SWA without BN re-estimation: the models here
    normalise per sample, or keep their running statistics as trained)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.mean: list[torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def add(self) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = [p.detach().clone() for p in self.params]
        else:
            torch._foreach_lerp_(self.mean, [p.detach() for p in self.params], 1.0 / self.count)

    @torch.no_grad()
    def apply(self) -> None:
        """Copy the average into the parameters (in place: they may be views of one flat tensor)."""
        if self.mean is not None:
            torch._foreach_copy_([p.data for p in self.params], self.mean)


@dataclass
class TrainResult:
    config: RunConfig
    model: SubspaceModel  # on the CPU again after training, whatever device trained it
    history: list[dict] = field(default_factory=list)
    step_seconds: float = 0.0  # mean time of one optimizer step (after the first few)
    step_cpu_seconds: float | None = None  # the same steps' CPU time of the training thread (CPU only)
    eval: list[dict] = field(default_factory=list)  # accuracy per level on the test split (LevelResult rows)
    checkpoint: Path | None = None
    images_per_second: float = 0.0  # training images through all ranks per second, after the 3 warm-up steps
    plain_step_seconds: float | None = None  # the same network without the subspace, same batch (compare_steps)
    device: str = "cpu"
    precision: str = "fp32"
    world: int = 1
    backend: str = ""

    def timing(self) -> dict:
        plain = self.plain_step_seconds
        return {"device": self.device, "precision": self.precision, "world_size": self.world, "backend": self.backend,
                "images_per_second": round(self.images_per_second, 1), "step_ms": round(1e3 * self.step_seconds, 3),
                "plain_step_ms": None if plain is None else round(1e3 * plain, 3),
                "step_ratio": None if not plain else round(self.step_seconds / plain, 3)}


ProgressHook = Callable[[int, int, dict], None]


def train(config: RunConfig, *, data: DataSplit | None = None, out: str | Path | None = None,
          on_step: ProgressHook | None = None, accel: Accel | None = None, compare_steps: int = 0) -> TrainResult:
    """Train `config` and write the checkpoint to `out` (rank 0). `compare_steps` > 0: afterwards, time
    that many steps of the plain network (no subspace) at the same batch, device and precision."""
    t: TrainConfig = config.train
    accel = accel or Accel()
    device = acc.resolve_device(accel.device, Dist.local_rank())
    acc.check_precision(accel.precision, device)
    world = Dist.from_env(device)
    torch.manual_seed(t.seed)
    rng = random.Random(t.seed)  # same seed on every rank: all ranks train the same alphas
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)  # autocast, the allocator and the step clock all work on this GPU
        # Fixed shapes: cuDNN picks the fastest algorithms once. Not for width slicing, whose every width
        # is a new shape to benchmark.
        torch.backends.cudnn.benchmark = config.subspace.family != "structured"

    data = data or load_data(config.data)
    check_fits(data.info, config.model)
    model = checkpoint.build(config)  # built on the CPU: the same initial weights on every device
    model.train()
    cmap = model.cmap
    sampler = default_sampler(config)
    check_sampler(sampler, t)
    line = config.subspace.shape == "line"
    track_acts = cmap.family == "quantization"

    _check_runs(model, data, config)
    model.to(device)
    net: torch.nn.Module = model
    if world.world > 1:
        model.fused_blend = False  # per-layer blends: DDP reduces each layer's gradients as soon as they are ready
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    data_sampler = DistributedSampler(data.train, world.world, world.rank, shuffle=True, seed=t.seed) if world.world > 1 else None
    loader = acc.loader(data.train, t.batch_size, device=device, sampler=data_sampler, shuffle=data_sampler is None,
                        drop_last=len(data.train) > t.batch_size * world.world,
                        generator=torch.Generator().manual_seed(t.seed), workers=accel.workers)
    steps_per_epoch = len(loader)
    total = t.epochs * steps_per_epoch
    # One process: every parameter a view of one flat tensor, every gradient a view of one flat gradient, and SGD
    # on the flat pair: the same element-wise update in a few kernels instead of several per parameter tensor (a
    # line has twice the plain network's tensors, most of them tiny norm vectors). DDP keeps its own buckets.
    flat = FlatParameters(model) if world.world == 1 else None
    optimizer = torch.optim.SGD([flat.param] if flat else model.parameters(), lr=t.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay)
    warmup_steps = max(1, int(t.warmup_epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup_steps))
    scaler = acc.grad_scaler(accel.precision, device)
    # Losses stay on the device and are read once per epoch (and every `report_every` steps for the
    # progress hook): reading a GPU number every step would make the CPU wait for the GPU.
    report_every = 25 if cuda else 1

    # One process, no regulariser: the line's gradient split rides in the blend's backward (no separate pass
    # over all endpoint gradients). Under DDP the layers blend one by one; the cos^2 term adds gradients of its own.
    fold_split = line and world.world == 1 and t.beta == 0 and model.fused_blend
    model.folded_split = (t.line_centre_lr, t.line_spread_lr) if fold_split else None
    result = TrainResult(config, model, device=acc.describe(device), precision=accel.precision, world=world.world,
                         backend=world.backend)
    # In-place distillation needs a densest point to learn from (not for one fixed level).
    distill = t.distill > 0 and t.method != "fixed"
    averaged = WeightAverage([flat.param] if flat else [p for p in model.parameters() if p.requires_grad])
    average_from = total - int(round(t.weight_average * total)) if t.weight_average > 0 else total + 1
    clock = acc.StepClock(device)
    step, images = 0, 0
    steady_since = time.perf_counter()  # throughput counts from the end of the warm-up steps
    draws_seen = hashlib.sha256() if world.world > 1 else None
    for epoch in range(t.epochs):
        if data_sampler is not None:
            data_sampler.set_epoch(epoch)
        epoch_loss = torch.zeros((), device=device)
        epoch_reg = torch.zeros((), device=device)
        batches = 0
        for x, y in loader:
            if step == 3 and total > 3:  # the first steps warm up (allocations, algorithm choice)
                acc.synchronize(device)
                steady_since, images = time.perf_counter(), 0
            x, y = acc.to_device((x, y), device)
            timed = step >= 3
            if timed:
                clock.start()
            draws = draw_alphas(sampler, rng, step / total, config, cmap, model)
            if distill:
                draws = with_teacher(draws, cmap, step / total, config)
            teacher = None
            if draws_seen is not None:
                draws_seen.update(repr(draws).encode())
            optimizer.zero_grad(set_to_none=flat is None)  # flat: zero the one gradient, keep the views
            loss_sum = torch.zeros((), device=device)
            shares = batch_shares(draws, cmap.alpha_range[1], len(y), t.split_batch, cmap.alpha_range[0],
                                  t.low_end_batch)
            for i, d in enumerate(draws):
                model.set_alpha(d.alpha, effective=d.effective, quantize_acts=d.quantize_acts, track_acts=track_acts)
                if d.layer_bits is not None:
                    model.set_layer_bits(d.layer_bits)
                part = shares[i]
                xs, ys, soft = (x, y, teacher) if part is None else \
                    (x[part], y[part], None if teacher is None else teacher[part])
                with acc.autocast(accel.precision, device):
                    logits = net(xs)
                    loss = draw_loss(logits, ys, t, soft)
                    if t.low_end_weight != 1.0 and d.alpha == cmap.alpha_range[0]:
                        loss = t.low_end_weight * loss
                if distill and i == 0:  # the densest point: the soft targets of the step's other draws
                    teacher = F.softmax(logits.detach().float(), dim=1)
                loss_sum += loss.detach()
                last = i == len(draws) - 1
                if last and line and t.beta > 0:
                    reg_term = t.beta * model.cos2()  # float32 parameters, outside autocast
                    epoch_reg += reg_term.detach()
                    loss = loss + reg_term
                if scaler is not None:
                    loss = scaler.scale(loss)
                # One backward per draw (gradients add up); DDP syncs only on the last one.
                if world.world > 1 and not last:
                    with net.no_sync():
                        loss.backward()
                else:
                    loss.backward()
            if scaler is not None:
                scaler.unscale_(optimizer)  # the line's gradient split works on true gradients
            if line and not fold_split:
                model.split_line_gradients(t.line_centre_lr, t.line_spread_lr)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            schedule.step()
            step += 1
            if step > average_from:
                averaged.add()
            if timed:
                clock.stop()
            mean_loss = loss_sum / len(draws)
            epoch_loss += mean_loss
            batches += 1
            images += len(y) * world.world
            if on_step is not None and world.main and (step % report_every == 0 or batches == steps_per_epoch):
                on_step(step, total, {"epoch": epoch + 1, "loss": float(mean_loss)})
        result.history.append({"epoch": epoch + 1, "loss": float(epoch_loss) / max(1, batches),
                               "cos2": float(epoch_reg) / max(1, batches), "lr": schedule.get_last_lr()[0]})
    averaged.apply()
    model.folded_split = None  # the returned model's gradients are the blend formula's own again
    if flat is not None:
        flat.release()
    acc.synchronize(device)
    result.images_per_second = images / max(1e-9, time.perf_counter() - steady_since)
    result.step_seconds = clock.mean_seconds()
    result.step_cpu_seconds = clock.mean_cpu_seconds()
    if draws_seen is not None:
        _check_same_draws(draws_seen.hexdigest(), world)
    if compare_steps > 0:
        result.plain_step_seconds = plain_step_seconds(config, loader, device, accel.precision, world, compare_steps)
    model.eval()
    if world.main:
        # The final evaluation travels with the checkpoint (builds copy it into the artifact manifest).
        alphas = [config.train.fixed_alpha] if config.train.method == "fixed" else list(cmap.eval_alphas)
        result.eval = [row.to_dict() for row in evaluate_levels(model, data.test, alphas, device=device)]
    model.set_alpha(cmap.alpha_range[1])
    model.to("cpu")  # the checkpoint and the returned model are device-free
    if out is not None and world.main:
        metrics = {"train": {"history": result.history, "step_seconds": result.step_seconds, **result.timing()},
                   "eval": result.eval}
        result.checkpoint = checkpoint.save(out, config, model, metrics)
    if world.world > 1:
        dist.barrier()
    return result


def _check_same_draws(digest: str, world: Dist) -> None:
    """Every rank must have trained the same levels in the same order (the shared seed); a rank that
    drew differently would have averaged gradients of different networks."""
    digests: list = [None] * world.world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks drew different alphas: {digests}")


def plain_step_seconds(config: RunConfig, loader, device: torch.device, precision: str, world: Dist,
                       steps: int) -> float:
    """Mean time of a training step of the plain network (the model without the subspace: one weight
    set, no blending, masks or quantization) with plain SGD, at the same batches, device, precision and
    process group as the LCS steps, timed the same way (after 3 warm-up steps)."""
    t = config.train
    from lcs.models import build_model

    torch.manual_seed(t.seed)
    plain = build_model(config.model).to(device)
    plain.train()
    net: torch.nn.Module = plain
    if world.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(plain, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(plain.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    scaler = acc.grad_scaler(precision, device)
    clock = acc.StepClock(device)
    batches: list = []
    for batch in loader:  # at most `steps` distinct batches, cycled (every rank sees as many)
        batches.append(acc.to_device(batch, device))
        if len(batches) >= steps:
            break
    for i in range(steps + 3):
        x, y = batches[i % len(batches)]
        if i >= 3:
            clock.start()
        optimizer.zero_grad(set_to_none=True)
        with acc.autocast(precision, device):
            loss = F.cross_entropy(net(x), y, label_smoothing=t.label_smoothing)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if i >= 3:
            clock.stop()
    return clock.mean_seconds()
