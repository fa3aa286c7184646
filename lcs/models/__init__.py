"""Model builders. Each returns a plain torch network; `lcs.subspace.model.SubspaceModel` turns it
into a subspace. The registry below is the one list of model names the CLI accepts."""

from __future__ import annotations

from typing import Callable

from torch import nn

from lcs.config import ModelConfig
from lcs.errors import ConfigError
from lcs.models.cpreresnet import cpreresnet20
from lcs.models.mlperf_tiny import DSCNN, MobileNetV1, ResNet8
from lcs.models.norms import make_norm
from lcs.models.small_cnn import SmallCNN
from lcs.models.torchvision_models import mobilenet_v2, resnet18

BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "small-cnn": lambda cfg: SmallCNN(cfg.in_channels, cfg.num_classes, cfg.width, cfg.image_size,
                                      lambda c: make_norm(cfg, c)),
    "cpreresnet20": lambda cfg: cpreresnet20(cfg.in_channels, cfg.num_classes, lambda c: make_norm(cfg, c)),
    "resnet8": lambda cfg: ResNet8(cfg.in_channels, cfg.num_classes, lambda c: make_norm(cfg, c)),
    "ds-cnn": lambda cfg: DSCNN(cfg.in_channels, cfg.num_classes, lambda c: make_norm(cfg, c)),
    "mobilenet-v1-0.25": lambda cfg: MobileNetV1(cfg.in_channels, cfg.num_classes, lambda c: make_norm(cfg, c)),
    "resnet18": resnet18,
    "mobilenet-v2": mobilenet_v2,
}
MODEL_NAMES = tuple(BUILDERS)


def build_model(cfg: ModelConfig) -> nn.Module:
    """A plain torch network for `cfg` (no subspace yet)."""
    if cfg.name not in BUILDERS:
        raise ConfigError(f"unknown model {cfg.name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return BUILDERS[cfg.name](cfg)
