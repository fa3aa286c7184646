"""Compression maps gamma(alpha): from a point alpha in [0, 1] to a concrete compression level.

This is the one home of "what a level means". It imports neither torch nor numpy, so the
artifact format, the runtime and the device tools can all use it.

Convention (from the paper): a small alpha means more compression; alpha = 1 is the accurate end.

Each map is a small frozen dataclass with a `version`, serialised as JSON through `to_dict` /
`map_from_dict`. Changing what a map computes means bumping its version.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from lcs.errors import ConfigError


def round_half_up(x: float) -> int:
    """Rounding used for channel counts everywhere (Python's round() is banker's rounding; C is not)."""
    return int(math.floor(x + 0.5))


ALPHA_TOLERANCE = 1e-6  # two alphas closer than this name the same level (JSON round trips, 1/6 written as 0.1667)


def same_alpha(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < ALPHA_TOLERANCE


KEEP_ROUNDING = 1e-9  # float noise in (1 - keep) * numel must not zero one weight more than intended


def dropped_count(numel, keep, floor=math.floor):
    """Weights zeroed in a tensor of `numel` at keep fraction `keep`: floor((1 - keep) * numel). The one TopK count
    formula: `floor=torch.floor` with a tensor `keep` gives the same arithmetic inside a graph (alpha-input)."""
    return floor((1.0 - keep) * numel + KEEP_ROUNDING)


def check_alpha(alpha: float, lo: float = 0.0, hi: float = 1.0) -> float:
    alpha = float(alpha)
    if not (lo <= alpha <= hi) or math.isnan(alpha):
        raise ConfigError(f"alpha {alpha:g} is outside the trained range [{lo:g}, {hi:g}]")
    return alpha


@dataclass(frozen=True)
class Level:
    """One concrete compression level: what a device needs to know to run it."""

    family: str
    alpha: float
    keep: float = 1.0  # unstructured: fraction of weights kept in each compressed layer
    width: float = 1.0  # structured: fraction of channels kept in each layer
    bits: int | None = None  # quantization: bit width of weights and activations

    def label(self) -> str:
        if self.family == "unstructured":
            return f"{100 * (1 - self.keep):.1f}% sparse"
        if self.family == "structured":
            return f"width {self.width:.3f}"
        if self.family == "quantization":
            return f"{self.bits} bit"
        return "dense"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UnstructuredMap:
    """Per-layer magnitude TopK: keep fraction = alpha, alpha in [keep_min, 1]."""

    family: ClassVar[str] = "unstructured"
    version: int = 1
    keep_min: float = 0.025
    eval_alphas: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)

    @property
    def alpha_range(self) -> tuple[float, float]:
        return (self.keep_min, 1.0)

    def level(self, alpha: float) -> Level:
        alpha = check_alpha(alpha, *self.alpha_range)
        return Level(self.family, alpha, keep=alpha)

    def alpha_for(self, keep: float) -> float:
        return check_alpha(keep, *self.alpha_range)

    @staticmethod
    def kept_count(numel: int, keep: float) -> int:
        """Weights kept in one tensor: the floor((1 - keep) * numel) smallest magnitudes are zeroed."""
        return numel - int(dropped_count(numel, keep))


@dataclass(frozen=True)
class StructuredMap:
    """Channel slicing: width = width_min + (1 - width_min) * alpha; the first channels are kept."""

    family: ClassVar[str] = "structured"
    version: int = 1
    width_min: float = 0.25
    eval_alphas: tuple[float, ...] = (0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0)

    @property
    def alpha_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def level(self, alpha: float) -> Level:
        alpha = check_alpha(alpha)
        return Level(self.family, alpha, width=self.width_min + (1.0 - self.width_min) * alpha)

    def alpha_for(self, width: float) -> float:
        if not (self.width_min <= width <= 1.0):
            raise ConfigError(f"width {width:g} is outside the trained range [{self.width_min:g}, 1]")
        return (width - self.width_min) / (1.0 - self.width_min)

    @staticmethod
    def channels(full: int, width: float) -> int:
        """Channels kept out of `full` at `width` (round half up, never fewer than one)."""
        return max(1, min(full, round_half_up(width * full)))


@dataclass(frozen=True)
class QuantizationMap:
    """alpha cut into equal bins, bin i (right-closed) means bits_min + i bits; alpha = 0 is bits_min."""

    family: ClassVar[str] = "quantization"
    version: int = 1
    bits_min: int = 3
    bits_max: int = 8
    eval_alphas: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (2 <= self.bits_min <= self.bits_max <= 8):
            raise ConfigError(f"bit range {self.bits_min}..{self.bits_max} must lie within 2..8")
        if not self.eval_alphas:
            object.__setattr__(self, "eval_alphas", tuple(self.alpha_for(b) for b in self.bit_widths))

    @property
    def bins(self) -> int:
        return self.bits_max - self.bits_min + 1

    @property
    def bit_widths(self) -> tuple[int, ...]:
        return tuple(range(self.bits_min, self.bits_max + 1))

    @property
    def alpha_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def bits(self, alpha: float) -> int:
        alpha = check_alpha(alpha)
        index = max(0, math.ceil(alpha * self.bins - 1e-9) - 1)
        return self.bits_min + index

    def level(self, alpha: float) -> Level:
        return Level(self.family, float(alpha), bits=self.bits(alpha))

    def alpha_for(self, bits: int) -> float:
        """The right edge of the bin for `bits` (exactly representable bins: 1/6, 2/6, ...)."""
        if bits not in self.bit_widths:
            raise ConfigError(f"{bits} bits is outside the trained range {self.bits_min}..{self.bits_max}")
        return (bits - self.bits_min + 1) / self.bins

    @staticmethod
    def int_range(bits: int) -> tuple[int, int]:
        """Signed integer grid of a b-bit tensor."""
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


CompressionMap = UnstructuredMap | StructuredMap | QuantizationMap
MAPS: dict[str, type] = {m.family: m for m in (UnstructuredMap, StructuredMap, QuantizationMap)}
FAMILIES = tuple(MAPS)


def make_map(family: str, **options) -> CompressionMap:
    if family not in MAPS:
        raise ConfigError(f"unknown compression family {family!r}; choose one of {', '.join(FAMILIES)}")
    return MAPS[family](**options)


def map_to_dict(cmap: CompressionMap) -> dict:
    return {"family": cmap.family, **asdict(cmap)}


def map_from_dict(data: dict) -> CompressionMap:
    data = dict(data)
    family = data.pop("family", None)
    if family not in MAPS:
        raise ConfigError(f"unknown compression family {family!r}; choose one of {', '.join(FAMILIES)}")
    cls = MAPS[family]
    version = data.get("version", 1)
    if version != cls.version:
        raise ConfigError(f"{family} map version {version} is not supported (this lcs reads version {cls.version})")
    if "eval_alphas" in data:
        data["eval_alphas"] = tuple(data["eval_alphas"])
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"bad {family} map config: {exc}") from None


def level_alphas(text: str | None, cmap: CompressionMap) -> list[float]:
    """`--levels` (comma-separated levels as `parse_level` reads them) -> alphas; None means the family's grid. An
    empty list or a level named twice is refused."""
    if text is None:
        return list(cmap.eval_alphas)
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise ConfigError("--levels is empty (leave the option out for the family's grid)")
    if not all(parts):
        raise ConfigError(f"--levels {text!r} has an empty entry")
    alphas = [parse_level(part, cmap) for part in parts]
    seen: dict[float, str] = {}
    for part, alpha in zip(parts, alphas):
        if alpha in seen:
            raise ConfigError(f"--levels names one level twice: {seen[alpha]} and {part} are both alpha {alpha:g}")
        seen[alpha] = part
    return alphas


def parse_level(text: str, cmap: CompressionMap) -> float:
    """Read one level from the command line: an alpha ('0.5') or a named value ('keep=0.1', 'width=0.5',
    'sparsity=0.9', 'bits=4'). Returns alpha."""
    text = text.strip()
    name, _, value = text.partition("=")
    try:
        if not value:
            return check_alpha(float(name), *cmap.alpha_range)
        number = float(value)
    except ValueError:
        raise ConfigError(f"cannot read level {text!r}: expected an alpha like 0.5 or e.g. keep=0.1, bits=4") from None
    wanted = {"unstructured": ("keep", "sparsity"), "structured": ("width",), "quantization": ("bits",)}[cmap.family]
    if name not in wanted:
        raise ConfigError(f"level {text!r} does not fit the {cmap.family} family (use {' or '.join(wanted)}=...)")
    if name == "sparsity":
        number = 1.0 - number
    if name == "bits":
        if number != int(number):
            raise ConfigError(f"bits must be a whole number, got {value}")
        return cmap.alpha_for(int(number))
    return cmap.alpha_for(number)
