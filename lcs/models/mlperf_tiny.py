"""The three MLPerf Tiny networks (topologies of mlcommons/tiny v0.5/v1.0; see
shared notes mlperf-tiny.md): ResNet-8 (CIFAR-10 shaped), DS-CNN-S (keyword spotting, 49x10x1 MFCCs)
and MobileNetV1 alpha 0.25 (visual wake words, 96x96x3).

Every conv is bias-free and followed by the config's norm, as in the project's other models; with
`norm=batch` the norm folds into the conv at inference (the int8 path needs that, see
`lcs.quant.int8.from_torch`). The shortcut 1x1 convs of ResNet-8 carry a bias and no norm, as in the
reference. All nets are resolution-agnostic (global average pool before the classifier)."""

from __future__ import annotations

from typing import Callable

from torch import nn

Norm = Callable[[int], nn.Module]


def _cbr(cin: int, cout: int, k: int, stride: int, norm: Norm, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), norm(cout)]
    return layers + [nn.ReLU(inplace=False)] if relu else layers


class ResStack(nn.Module):
    """conv-norm-relu, conv-norm, plus the input (or a strided 1x1 conv of it), relu."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(cin, cout, 3, stride, norm), *_cbr(cout, cout, 3, 1, norm, relu=False))
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=True) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + skip)


class ResNet8(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, norm: Norm, filters=(16, 32, 64)) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.stem = nn.Sequential(*_cbr(in_channels, f1, 3, 1, norm))
        self.stacks = nn.Sequential(ResStack(f1, f1, 1, norm), ResStack(f1, f2, 2, norm), ResStack(f2, f3, 2, norm))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(f3, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.stacks(self.stem(x))).flatten(1))


class DSCNN(nn.Module):
    """DS-CNN-S: conv 10x4 s2 'same' (TF padding: 4 rows above, 5 below, 1 column each side on 49x10),
    then four depthwise-separable blocks of 64 channels."""

    def __init__(self, in_channels: int, num_classes: int, norm: Norm, channels: int = 64, blocks: int = 4) -> None:
        super().__init__()
        c = channels
        stem = [nn.ZeroPad2d((1, 1, 4, 5)), nn.Conv2d(in_channels, c, (10, 4), 2, 0, bias=False), norm(c), nn.ReLU()]
        body = []
        for _ in range(blocks):
            body += _cbr(c, c, 3, 1, norm, groups=c) + _cbr(c, c, 1, 1, norm)
        self.features = nn.Sequential(*stem, *body)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


# (pointwise filters at alpha 1, depthwise stride) of MobileNetV1's 13 blocks
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                 (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, norm: Norm, alpha: float = 0.25) -> None:
        super().__init__()
        c = int(32 * alpha)
        layers = _cbr(in_channels, c, 3, 2, norm)
        for filters, stride in _MOBILENET_V1:
            cout = int(filters * alpha)
            layers += _cbr(c, c, 3, stride, norm, groups=c) + _cbr(c, cout, 1, 1, norm)
            c = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
