"""Data sets read offline with fixed splits; local CIFAR-10 and ImageFolder layouts."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lcs.config import DataConfig, ModelConfig
from lcs.data import check_fits, load_data
from lcs.errors import DataError


def test_digits_split_is_fixed_and_stratified(digits):
    assert (digits.info.train_size, digits.info.test_size) == (1438, 359)
    assert digits.info.num_classes == 10 and digits.info.image_size == 8
    again = load_data(DataConfig("digits"))
    assert torch.equal(digits.test.tensors[0], again.test.tensors[0])
    x = digits.train.tensors[0]
    assert x.min() >= 0 and x.max() <= 1


def test_mnist5k_has_the_fixed_4000_1000_split():
    d = load_data(DataConfig("mnist5k"))
    assert (d.info.train_size, d.info.test_size, d.info.image_size) == (4000, 1000, 28)
    assert torch.bincount(d.test.tensors[1]).tolist() == [100] * 10
    other_seed = load_data(DataConfig("mnist5k", seed=1))
    assert not torch.equal(d.test.tensors[1], other_seed.test.tensors[1]) or not torch.equal(
        d.test.tensors[0], other_seed.test.tensors[0])


def _write_cifar(root, n_train=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": rng.integers(0, 255, (n_train, 3072), dtype=np.uint8),
                         "labels": list(rng.integers(0, 10, n_train))}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": rng.integers(0, 255, (n_test, 3072), dtype=np.uint8), "labels": list(range(n_test))}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def test_cifar10_in_torchvisions_layout(tmp_path):
    _write_cifar(tmp_path)
    d = load_data(DataConfig(f"cifar10:{tmp_path}", augment=True))
    assert (d.info.train_size, d.info.test_size, d.info.in_channels, d.info.image_size) == (100, 10, 3, 32)
    x, y = d.train[0]
    assert x.shape == (3, 32, 32)


def test_cifar10_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_data(DataConfig(f"cifar10:{tmp_path}"))


def _write_folder(root, classes=("cat", "dog"), per_class=10, size=(12, 12), mode="L"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new(mode, size, color=i * 10).save(root / c / f"{i}.png")


def test_image_folder_split_and_shape(tmp_path):
    _write_folder(tmp_path)
    d = load_data(DataConfig(str(tmp_path)))
    assert d.info.num_classes == 2 and d.info.in_channels == 1 and d.info.image_size == 12
    assert (d.info.train_size, d.info.test_size) == (16, 4)
    assert d.train[0][0].shape == (1, 12, 12)


def test_image_folder_with_train_and_test_dirs(tmp_path):
    _write_folder(tmp_path / "train", mode="RGB")
    _write_folder(tmp_path / "test", per_class=3, mode="RGB")
    d = load_data(DataConfig(f"folder:{tmp_path}"))
    assert (d.info.train_size, d.info.test_size, d.info.in_channels) == (20, 6, 3)


@pytest.mark.parametrize("source, message", [
    ("/no/such/dir", "does not exist"),
    ("folder:/no/such/dir", "does not exist"),
    ("cifar10", "needs a path"),
    ("imagenet", "unknown data source"),
])
def test_bad_sources(source, message):
    with pytest.raises(DataError, match=message):
        load_data(DataConfig(source))


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(DataConfig(f"folder:{tmp_path / 'empty'}"))


def test_check_fits_names_both_shapes(digits):
    with pytest.raises(DataError, match="1x8x8 images but the model expects 3x32x32"):
        check_fits(digits.info, ModelConfig(in_channels=3, image_size=32))
