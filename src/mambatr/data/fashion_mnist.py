"""Fashion-MNIST from its IDX files (Debian package ``dataset-fashion-mnist``), fully in memory.

Splits: ``train`` (55,000) and ``val`` (5,000) partition the 60,000 official training images with a
fixed-seed permutation (see ``train_val_indices``); ``train_full`` is all 60,000; ``test`` is the
10,000 official test images, meant only for final numbers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from mambatr.data.errors import DatasetError, DatasetNotFoundError
from mambatr.data.idx import read_idx

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
SPLITS: tuple[str, ...] = ("train", "val", "test", "train_full")
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Pixel mean / std of the 55,000-image "train" split, scaled to [0, 1], computed once with
#   x = load_fashion_mnist("train")[0].double() / 255; print(x.mean().item(), x.std().item())
# -> 0.28605, 0.35293 (all 60,000 training images: 0.28604, 0.35302).
FASHION_MNIST_MEAN = 0.2861
FASHION_MNIST_STD = 0.3529
VAL_SIZE = 5_000
VAL_SEED = 0
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR"


def train_val_indices(
    total: int = 60_000, val_size: int = VAL_SIZE, seed: int = VAL_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the official training set, each sorted ascending.

    The val set is the first ``val_size`` entries of ``np.random.RandomState(seed).permutation(total)``;
    RandomState is used because numpy freezes its stream, so the split never changes across versions.
    """
    if not 0 < val_size < total:
        raise ValueError(f"val_size must be in (0, {total}), got {val_size}")
    order = np.random.RandomState(seed).permutation(total)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of a split; ``root`` defaults to DEFAULT_ROOT."""
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose from {', '.join(SPLITS)}")
    root = DEFAULT_ROOT if root is None else Path(root)
    if root.is_file():
        raise DatasetError(f"Fashion-MNIST directory {root} is a file: pass the folder holding the IDX files")
    if not root.is_dir():
        raise DatasetNotFoundError(f"Fashion-MNIST directory {root} does not exist: {_INSTALL_HINT}")
    paths = tuple(_find(root, name) for name in _FILES["test" if split == "test" else "train"])
    images, labels = _read_pair(*paths, stamp=tuple(_stamp(path) for path in paths))
    if split in ("train", "val"):
        train, val = train_val_indices(len(images))
        index = train if split == "train" else val
        images, labels = images[index], labels[index]  # fancy indexing copies: the cache stays intact
    else:
        images, labels = images.copy(), labels.copy()
    return torch.from_numpy(images), torch.from_numpy(labels)


def _find(root: Path, name: str) -> Path:
    """``root/name.gz`` or, failing that, the uncompressed ``root/name``."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(f"Fashion-MNIST file {name}[.gz] not found in {root}: {_INSTALL_HINT}")


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime, size): part of the cache key, so a replaced file is read again."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=2)
def _read_pair(images_path: Path, labels_path: Path, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 from an IDX pair, checked for consistency."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(
            f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path.name} has {len(images):,} images but {labels_path.name} has {len(labels):,} labels"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(
            f"{labels_path}: label {labels.max()} is not a class index 0..{len(FASHION_MNIST_CLASSES) - 1}"
        )
    return images, labels.astype(np.int64)
