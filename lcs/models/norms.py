"""The norm a model config asks for, as a plain torch layer."""

from torch import nn

from lcs.config import ModelConfig


def make_norm(cfg: ModelConfig, channels: int) -> nn.Module:
    if cfg.norm == "batch":
        return nn.BatchNorm2d(channels)
    if cfg.norm == "instance":
        return nn.GroupNorm(channels, channels)  # instance norm with affine, no running stats
    if cfg.norm == "layer":
        return nn.GroupNorm(1, channels)
    groups = min(cfg.norm_groups, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)
