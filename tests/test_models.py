"""Model builders and their conversion into subspaces."""

import pytest
import torch

from lcs.config import ModelConfig, SubspaceConfig
from lcs.errors import ConfigError
from lcs.models import MODEL_NAMES, build_model
from lcs.subspace.layers import SubspaceConv2d, SubspaceLinear, SubspaceNorm
from lcs.subspace.model import SubspaceModel


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("size", [8, 28])
def test_small_cnn_fits_a_microcontroller(size):
    net = build_model(ModelConfig(in_channels=1, image_size=size))
    assert n_params(net) <= 100_000
    assert net(torch.zeros(2, 1, size, size)).shape == (2, 10)


def test_cpreresnet20_has_the_reference_shape():
    net = build_model(ModelConfig(name="cpreresnet20", in_channels=3, image_size=32))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert net.classifier.in_features == 256 and len(net.blocks) == 6
    assert len(convs) == 1 + 6 * 3 + 3  # stem, three convs per block, three shortcut convs
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet-v2"])
@pytest.mark.parametrize("family", ["unstructured", "structured", "quantization"])
def test_torchvision_models_become_subspaces(name, family):
    cfg = ModelConfig(name=name, in_channels=3, image_size=32, norm="instance" if family == "structured" else "group")
    sub = SubspaceModel(build_model(cfg), SubspaceConfig(family=family))
    kinds = {type(m) for m in sub.net.modules()}
    assert {SubspaceConv2d, SubspaceLinear, SubspaceNorm} <= kinds
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in sub.net.modules())
    sub.eval()
    x = torch.randn(1, 3, 32, 32)
    for alpha in sub.cmap.alpha_range:
        sub.set_alpha(alpha)
        assert torch.isfinite(sub(x)).all()


def test_unknown_model_lists_the_choices():
    with pytest.raises(ConfigError, match="small-cnn"):
        build_model(ModelConfig(name="alexnet"))
    assert set(MODEL_NAMES) == {"small-cnn", "cpreresnet20", "resnet8", "ds-cnn", "mobilenet-v1-0.25", "resnet18",
                                "mobilenet-v2"}
