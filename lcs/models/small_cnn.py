"""A CNN sized for microcontrollers: 33k parameters at width 16, about 40 KB of fp32 activations
at peak for 28x28 input (the stem has stride 2 so the widest map is 14x14)."""

from __future__ import annotations

from typing import Callable

from torch import nn


def conv_block(cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    # conv -> norm -> relu: post-activation norm keeps every compressed conv's output normalised.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, image_size: int,
                 norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        c = width
        stem_stride = 2 if image_size >= 16 else 1
        self.features = nn.Sequential(
            conv_block(in_channels, c, stem_stride, norm),
            conv_block(c, 2 * c, 1, norm),
            conv_block(2 * c, 2 * c, 2, norm),
            conv_block(2 * c, 4 * c, 1, norm),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
