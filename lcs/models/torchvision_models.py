"""torchvision's resnet18 and mobilenet_v2 as subspace-ready networks: the norm comes from the
config (torchvision's `norm_layer` hook), the stem takes the data's channels, and for small images
(< 64 px) the stem keeps full resolution as CIFAR variants do."""

from __future__ import annotations

from torch import nn

from lcs.config import ModelConfig
from lcs.models.norms import make_norm


def resnet18(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=cfg.num_classes, norm_layer=lambda c: make_norm(cfg, c))
    small = cfg.image_size < 64
    net.conv1 = nn.Conv2d(cfg.in_channels, 64, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
    if small:
        net.maxpool = nn.Identity()
    return net


def mobilenet_v2(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    net = tv_mobilenet_v2(num_classes=cfg.num_classes, norm_layer=lambda c: make_norm(cfg, c))
    first = net.features[0][0]
    stride = 1 if cfg.image_size < 64 else 2
    net.features[0][0] = nn.Conv2d(cfg.in_channels, first.out_channels, 3, stride, 1, bias=False)
    return net
