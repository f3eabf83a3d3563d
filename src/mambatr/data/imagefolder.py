"""ImageFolder-style dataset (``root/<class>/**/<image>``), like torchvision's, for ImageNet evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from mambatr.data.errors import DatasetError, DatasetNotFoundError, UnreadableImageError

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image and convert it to RGB (grayscale, palette, CMYK and RGBA alike; alpha is dropped)."""
    with open(path, "rb") as file:
        image = Image.open(file)
        return image.convert("RGB")


class ImageFolder(torch.utils.data.Dataset):
    """(transform(image), class index) pairs from ``root/<class>/...`` image files.

    Class folders sorted by name give the class indices (so an ImageNet val folder with its 1,000 synset
    folders gives the standard label order); files are found recursively in sorted order, matching
    torchvision's ImageFolder. Without a transform, items are PIL RGB images.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if self.root.is_file():
            raise DatasetError(f"image folder {self.root} is a file: pass the folder of class folders")
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        if not self.classes:
            raise DatasetError(
                f"{self.root} has no class subfolders: expected {self.root}/<class>/<image files>"
            )
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        for name in self.classes:
            files = _image_files(self.root / name, tuple(ext.lower() for ext in extensions))
            if not files:
                empty.append(name)
            self.samples.extend((path, self.class_to_idx[name]) for path in files)
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DatasetError(f"{self.root}: no images ({', '.join(extensions)}) in class folder(s) {shown}")
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = load_rgb(path)
        except OSError as error:  # PIL's truncated-file and UnidentifiedImageError alike, file not named
            reason = "not an image format PIL reads" if isinstance(error, UnidentifiedImageError) else error
            raise UnreadableImageError(f"{path}: cannot read the image ({reason})") from error
        return (self.transform(image) if self.transform is not None else image), target


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image paths under ``folder``, recursively, in torchvision's order (sorted walk, sorted names)."""
    return [
        os.path.join(directory, name)
        for directory, _, names in sorted(os.walk(folder, followlinks=True))
        for name in sorted(names)
        if name.lower().endswith(extensions)
    ]
