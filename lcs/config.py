"""Small typed configs. A `RunConfig` is saved inside every checkpoint and artifact manifest and is
enough to rebuild the model. No torch here."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field

from lcs.errors import ConfigError
from lcs.subspace.levels import CompressionMap, make_map, map_from_dict

CONFIG_VERSION = 1
NORMS = ("group", "instance", "layer", "batch")
SHAPES = ("line", "point")
WIDTH_DRAWS = ("uniform", "grid")
SPLIT_BATCH = ("none", "narrow", "all")
ENDPOINT_INITS = ("copy", "independent")
METHODS = ("lcs", "fixed", "us")
SAMPLERS = ("biased-endpoints", "sandwich", "endpoint-and-random", "max-and-random", "min-and-random", "discrete",
            "uniform", "fixed", "delayed-uniform", "per-layer-bits")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small-cnn"
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    width: int = 16  # base channel count of the small CNN (ignored by torchvision models)
    norm: str = "group"
    norm_groups: int = 8  # group norm: groups per layer, capped at the channel count

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist5k"  # digits | mnist5k | cifar10:PATH | folder:PATH
    seed: int = 0
    augment: bool = False


@dataclass(frozen=True)
class SubspaceConfig:
    shape: str = "line"  # line (LCS+L, two endpoints) or point (LCS+P, one weight set)
    family: str = "unstructured"
    map: dict = field(default_factory=dict)  # options for the compression map (see levels.py)
    compress_stem: bool = False
    compress_head: bool = False
    line_params: str = "all"  # "all": conv, linear and norm affine on the line; "norm": only norm affine
    # How endpoint 1 starts. "copy": endpoint 0 plus 10 % noise, so the line starts short and every
    # point on it is already a usable network (converges in a few epochs). "independent": the
    # reference's separate draw, N(0, sqrt(2 / fan_out)) weights and norm gamma 0.5.
    endpoint_init: str = "copy"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown subspace shape {self.shape!r}; choose line or point")
        if self.endpoint_init not in ENDPOINT_INITS:
            raise ConfigError(f"unknown endpoint init {self.endpoint_init!r}; choose one of {', '.join(ENDPOINT_INITS)}")
        if self.line_params not in ("all", "norm"):
            raise ConfigError(f"line_params must be 'all' or 'norm', got {self.line_params!r}")
        self.compression_map()  # validates family and options

    def compression_map(self) -> CompressionMap:
        return make_map(self.family, **self.map)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lcs"  # lcs | fixed (one level, the paper's baseline) | us (slimmable, shared BN)
    epochs: int = 20
    batch_size: int = 32  # small batches: 4x the steps of 128 per epoch; a short line run needs the steps
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0  # linear learning-rate warm-up, then cosine decay to 0
    sampler: str = ""  # empty: the family's default (see train.default_sampler)
    samples_per_step: int = 4  # sandwich rule
    fixed_alpha: float = 1.0  # method "fixed": the one level trained
    # Weight of cos^2(w0, w1) for line subspaces. The reference's 1.0 pushes the endpoints apart
    # (orthogonal), which a short run cannot afford: every point between them must be trained too.
    beta: float = 0.0
    # Line subspaces: learning-rate factors of the line's centre (w0 + w1) / 2 and half-difference
    # (w1 - w0) / 2 (SubspaceModel.split_line_gradients). The reference (plain SGD on both endpoints)
    # is 0.5 / 0.5.
    line_centre_lr: float = 1.0
    line_spread_lr: float = 0.25
    # Fraction of training over which compression is phased in (TopK anneals, activation quantization waits). The
    # reference's 0.8 leaves the sparsest levels 20 % of the steps at their final mask; 0.6: +1.3 points at 5 % keep
    # (benchmarks/README.md, issue 17).
    compression_warmup: float = 0.6
    # How the samplers draw unstructured keep fractions between the ends: "log" (uniform in log keep,
    # as many draws between 2.5 % and 10 % keep as between 25 % and 100 %, where accuracy changes
    # little) or "linear" (the reference: uniform in keep, under 4 % of draws below 10 % keep).
    alpha_spacing: str = "log"
    label_smoothing: float = 0.0
    # In-place distillation (US-Nets): every step also trains the densest point of the line with
    # cross-entropy, and every other point of the step learns (1 - distill) * CE + distill * the
    # soft cross-entropy against the densest point's detached outputs. 0 (default): off, one pass per draw.
    # 0.5 (`lcs train --distill 0.5`, issue 17): +0.3 to +0.9 points at every unstructured level and quantization
    # within 0.5 points of per-level models, but two passes a step where the sampler draws one (about 2x a standard
    # step), so it is a choice, not the default (benchmarks/README.md).
    distill: float = 0.0
    # biased-endpoints sampler: how often an end of the line is drawn, and which share of those
    # draws is the compressed end (the reference: 0.5 and 0.5). max-/min-and-random: how often the second pass is
    # the line's other end.
    endpoint_prob: float = 0.5
    low_end_share: float = 0.5
    # Average the weights over the last `weight_average` fraction of training (every step's weights,
    # uniform, as SWA) and keep the average. 0: off, the last step's weights.
    weight_average: float = 0.0
    # Structured family: where the samplers draw widths between the ends. "uniform" (the paper): any width; most of
    # them give a group norm a channel count that is not a multiple of its groups, so it normalises over other groups
    # (often one: layer norm) than at the grid's widths. "grid": only the widths of a grid, the map's evaluation grid
    # (width_grid 0) or width_grid evenly spaced widths, both ends included (4: 0.25 / 0.5 / 0.75 / 1).
    width_draw: str = "uniform"
    width_grid: int = 0
    # Split the batch among a step's draws (issue 17, structured). "none": every draw trains on the whole batch.
    # "narrow": the densest point on the whole batch, every other draw on its own share of it (3 passes: half the
    # batch each). "all": every draw on its own share. On a CPU a narrow pass costs 0.5-1.0 of a full one at batch 32
    # (per-convolution fixed costs; width 0.75's channel counts hit a slow kernel), less at 16.
    split_batch: str = "none"
    # Loss weight of a draw at the line's compressed end (alpha at its low end; 1: every draw weighs the same), so
    # the narrowest width gets a larger say in the channels every width shares.
    low_end_weight: float = 1.0
    # split_batch: the fraction of the batch the draw at the compressed end trains on (0: an equal share).
    low_end_batch: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.sampler and self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        # a NaN or infinite hyperparameter trains a NaN network without a word: refuse it by name
        for name, low, strict in (("lr", 0.0, True), ("momentum", 0.0, False), ("weight_decay", 0.0, False),
                                  ("warmup_epochs", 0.0, False), ("beta", 0.0, False),
                                  ("line_centre_lr", 0.0, False), ("line_spread_lr", 0.0, False),
                                  ("label_smoothing", 0.0, False), ("fixed_alpha", 0.0, False),
                                  ("distill", 0.0, False), ("endpoint_prob", 0.0, False),
                                  ("low_end_share", 0.0, False), ("weight_average", 0.0, False),
                                  ("low_end_weight", 0.0, True), ("low_end_batch", 0.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
            if value < low or (strict and value == low):
                raise ConfigError(f"{name.replace('_', '-')} must be {'>' if strict else '>='} {low:g}, got {value!r}")
        if not (0.0 <= self.fixed_alpha <= 1.0):
            raise ConfigError(f"alpha {self.fixed_alpha:g} is outside [0, 1]")
        if self.alpha_spacing not in ("log", "linear"):
            raise ConfigError(f"alpha spacing must be 'log' or 'linear', got {self.alpha_spacing!r}")
        for name in ("distill", "endpoint_prob", "low_end_share", "low_end_batch", "label_smoothing"):
            if getattr(self, name) > 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)!r}")
        if self.split_batch not in SPLIT_BATCH:
            raise ConfigError(f"split batch must be one of {', '.join(SPLIT_BATCH)}, got {self.split_batch!r}")
        if self.width_draw not in WIDTH_DRAWS:
            raise ConfigError(f"width draw must be one of {', '.join(WIDTH_DRAWS)}, got {self.width_draw!r}")
        if isinstance(self.width_grid, bool) or not isinstance(self.width_grid, int) or self.width_grid == 1 \
                or self.width_grid < 0:
            raise ConfigError(f"width grid must be 0 (the evaluation grid) or at least 2 widths, got {self.width_grid!r}")
        if self.weight_average >= 1.0:
            raise ConfigError(f"weight-average must be a fraction in [0, 1), got {self.weight_average!r}")
        if not (0.0 <= self.compression_warmup < 1.0):
            raise ConfigError("compression warm-up must be a fraction in [0, 1)")


# The structured family's LCS recipe (issue 17; benchmarks/README.md, 3 seeds): three passes a step, widths drawn
# from a 4-width grid (at other widths a group norm normalises over other groups than at any evaluated width), the
# widest width on the whole batch and the two narrower draws on shares of it, the narrowest on 5/8. Against the
# 4-pass sandwich over any width: within 0.5 points of per-level models at every width (was -0.4 to -1.5) at
# about 2.0x a standard step (was 3.45x). The US-Nets baseline and fixed models keep the TrainConfig defaults.
STRUCTURED_LCS_TRAIN = {"samples_per_step": 3, "width_draw": "grid", "width_grid": 4, "split_batch": "narrow",
                        "low_end_batch": 0.625}


def family_train_defaults(family: str, method: str) -> dict:
    """TrainConfig fields whose default depends on the family and method (empty: the dataclass defaults)."""
    return dict(STRUCTURED_LCS_TRAIN) if family == "structured" and method == "lcs" else {}


# TrainConfig fields added after checkpoints were first written (issue 17), with the values those checkpoints were
# trained with: a saved config without them reads back as the recipe it was trained with, whatever today's defaults.
LEGACY_TRAIN = {"distill": 0.0, "endpoint_prob": 0.5, "low_end_share": 0.5, "weight_average": 0.0,
               "width_draw": "uniform", "width_grid": 0,
               "split_batch": "none", "low_end_weight": 1.0,
               "low_end_batch": 0.0}


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError("config must be a JSON object")
        version = data.get("version")
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not supported (this lcs reads version {CONFIG_VERSION})")
        try:
            return cls(
                model=_build(ModelConfig, data.get("model", {})),
                data=_build(DataConfig, data.get("data", {})),
                subspace=_build(SubspaceConfig, data.get("subspace", {})),
                train=_build(TrainConfig, {**LEGACY_TRAIN, **data.get("train", {})}),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad config: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)


def _build(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    return cls(**data)


def load_board(name: str):
    """A board from targets/ (`targets.Board`, the board's typed config), or a one-line ConfigError naming the valid
    ones: the one board lookup of build, firmware build and simulate."""
    import targets

    try:
        return targets.load(name)
    except targets.UnknownTarget as exc:
        raise ConfigError(str(exc)) from None


__all__ = [
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "SubspaceConfig",
    "TrainConfig",
    "map_from_dict",
]
