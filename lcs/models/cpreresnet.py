"""cPreResNet20 (CIFAR pre-activation ResNet with bottlenecks), the reference model of the paper:
depth 20 = 2 bottleneck blocks per stage, stages 16/32/64 with expansion 4, 256 features."""

from __future__ import annotations

from typing import Callable

from torch import nn

Norm = Callable[[int], nn.Module]


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: Norm) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, planes, 1, bias=False)
        self.norm2, self.conv2 = norm(planes), nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.norm3, self.conv3 = norm(planes), nn.Conv2d(planes, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.relu(self.norm1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.norm2(out)))
        out = self.conv3(self.relu(self.norm3(out)))
        return out + shortcut


class CPreResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int, norm: Norm) -> None:
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError("depth must be 9n + 2")
        blocks = (depth - 2) // 9
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        layers, cin = [], 16
        for i, planes in enumerate((16, 32, 64)):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(PreActBottleneck(cin, planes, stride, norm))
                cin = planes * PreActBottleneck.expansion
        self.blocks = nn.Sequential(*layers)
        self.final_norm = norm(cin)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = self.pool(self.relu(self.final_norm(x)))
        return self.classifier(x.flatten(1))


def cpreresnet20(in_channels: int, num_classes: int, norm: Norm) -> CPreResNet:
    return CPreResNet(in_channels, num_classes, 20, norm)
