"""Training a compressible subspace (and the baselines it is compared with).

The loop, top to bottom: load data, build the subspace model, then for every batch draw one or
more alphas (the sampler), run the compressed network at each, add the cross-entropy losses and
the beta * cos^2(w0, w1) regulariser, and take an SGD step under a warm-up + cosine schedule.

Runs on one process, or under `torchrun` with DDP (gloo on CPU): every rank draws the same alphas
from the same seed, so all ranks train the same levels on different data.
"""

from __future__ import annotations

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
from torch.utils.data import DataLoader, DistributedSampler

from lcs import checkpoint
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
        """A level between the ends: uniform, or uniform in log keep (TrainConfig.alpha_spacing)."""
        if cmap.family == "unstructured" and t.alpha_spacing == "log":
            return lo * (hi / lo) ** rng.random()
        return rng.uniform(lo, hi)

    if sampler == "fixed":
        alpha = t.fixed_alpha
        if cmap.family == "unstructured":
            return [unstructured_warmup(max(alpha, lo))]
        return [Draw(alpha, quantize_acts=not warming)]
    if sampler == "biased-endpoints":
        alpha = rng.choice((lo, hi)) if rng.random() < 0.5 else between()
        return [unstructured_warmup(alpha) if cmap.family == "unstructured" else Draw(alpha, quantize_acts=not warming)]
    if sampler == "uniform":
        return [Draw(between(), quantize_acts=not warming)]
    if sampler == "sandwich":
        n = max(2, t.samples_per_step)
        return [Draw(a, quantize_acts=not warming) for a in [lo, hi] + [between() for _ in range(n - 2)]]
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

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())


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

@dataclass
class TrainResult:
    config: RunConfig
    model: SubspaceModel
    history: list[dict] = field(default_factory=list)
    step_seconds: float = 0.0  # mean wall time of one optimizer step (after the first few)
    eval: list[dict] = field(default_factory=list)  # accuracy per level on the test split (LevelResult rows)
    checkpoint: Path | None = None


ProgressHook = Callable[[int, int, dict], None]


def train(config: RunConfig, *, data: DataSplit | None = None, out: str | Path | None = None,
          on_step: ProgressHook | None = None) -> TrainResult:
    t: TrainConfig = config.train
    world = Dist.from_env()
    torch.manual_seed(t.seed)
    rng = random.Random(t.seed)  # same seed on every rank: all ranks train the same alphas

    data = data or load_data(config.data)
    check_fits(data.info, config.model)
    model = checkpoint.build(config)
    model.train()
    cmap = model.cmap
    sampler = default_sampler(config)
    line = config.subspace.shape == "line"
    track_acts = cmap.family == "quantization"

    _check_runs(model, data, config)
    net: torch.nn.Module = model
    if world.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    data_sampler = DistributedSampler(data.train, world.world, world.rank, shuffle=True, seed=t.seed) if world.world > 1 else None
    loader = DataLoader(data.train, batch_size=t.batch_size, shuffle=data_sampler is None, sampler=data_sampler,
                        drop_last=len(data.train) > t.batch_size * world.world,
                        generator=torch.Generator().manual_seed(t.seed))
    steps_per_epoch = len(loader)
    total = t.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    warmup_steps = max(1, int(t.warmup_epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup_steps))

    result = TrainResult(config, model)
    step, timed, timed_seconds = 0, 0, 0.0
    for epoch in range(t.epochs):
        if data_sampler is not None:
            data_sampler.set_epoch(epoch)
        epoch_loss, epoch_reg, batches = 0.0, 0.0, 0
        for x, y in loader:
            started = time.perf_counter()
            draws = draw_alphas(sampler, rng, step / total, config, cmap, model)
            optimizer.zero_grad(set_to_none=True)
            loss_sum, reg = 0.0, 0.0
            for i, d in enumerate(draws):
                model.set_alpha(d.alpha, effective=d.effective, quantize_acts=d.quantize_acts, track_acts=track_acts)
                if d.layer_bits is not None:
                    model.set_layer_bits(d.layer_bits)
                loss = F.cross_entropy(net(x), y, label_smoothing=t.label_smoothing)
                loss_sum += loss.item()
                last = i == len(draws) - 1
                if last and line and t.beta > 0:
                    reg_term = t.beta * model.cos2()
                    reg = reg_term.item()
                    loss = loss + reg_term
                # One backward per draw (gradients add up); DDP syncs only on the last one.
                if world.world > 1 and not last:
                    with net.no_sync():
                        loss.backward()
                else:
                    loss.backward()
            if line:
                model.split_line_gradients(t.line_centre_lr, t.line_spread_lr)
            optimizer.step()
            schedule.step()
            step += 1
            if step > 3:
                timed += 1
                timed_seconds += time.perf_counter() - started
            epoch_loss += loss_sum / len(draws)
            epoch_reg += reg
            batches += 1
            if on_step is not None and world.main:
                on_step(step, total, {"epoch": epoch + 1, "loss": loss_sum / len(draws)})
        result.history.append({"epoch": epoch + 1, "loss": epoch_loss / max(1, batches), "cos2": epoch_reg / max(1, batches),
                               "lr": schedule.get_last_lr()[0]})
    result.step_seconds = timed_seconds / max(1, timed)
    model.eval()
    if world.main:
        # The final evaluation travels with the checkpoint (builds copy it into the artifact manifest).
        alphas = [config.train.fixed_alpha] if config.train.method == "fixed" else list(cmap.eval_alphas)
        result.eval = [row.to_dict() for row in evaluate_levels(model, data.test, alphas)]
    model.set_alpha(cmap.alpha_range[1])
    if out is not None and world.main:
        metrics = {"train": {"history": result.history, "step_seconds": result.step_seconds}, "eval": result.eval}
        result.checkpoint = checkpoint.save(out, config, model, metrics)
    if world.world > 1:
        dist.barrier()
    return result
