"""ImageFolder-style dataset (``root/<class>/**/<image>``), like torchvision's, for ImageNet evaluation.

Where torchvision's would give a silently wrong dataset, this one skips or refuses (docs/data.md):

- hidden entries (names starting with ``.``: ``.ipynb_checkpoints/``, macOS ``._x.jpg``) are skipped,
  so they neither become classes (which would shift every label after them) nor samples;
- symbolic links are followed, but a link back into a folder it lies in (a loop, which would repeat
  the folder's images endlessly) is refused, and so is one file reached twice (by links or hard links:
  counted twice, or with two labels), each naming the paths;
- 16-bit images are scaled by their real range (0..65535 to 0..255) instead of saturated, and images
  whose pixels have no standard range (32-bit integers, floats) are refused rather than clipped;
- an image over PIL's decompression-bomb limit is an unreadable image naming the file (skippable with
  ``--skip-bad-images``), like a truncated or corrupt one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mambatr.data.errors import DatasetError, DatasetNotFoundError, UnreadableImageError

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image and convert it to 8-bit RGB (grayscale, palette, CMYK and RGBA alike; alpha is
    dropped; 16-bit scaled by its range). ``UnreadableImageError`` naming the file for anything that
    cannot be read as such: truncated, corrupt, not an image, over the decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``), or pixels without a standard range."""
    try:
        with open(path, "rb") as file, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns up to 2x
            return _to_rgb(Image.open(file), path)
    except UnreadableImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = f"over the decompression-bomb limit: {error}"
    except UnidentifiedImageError:
        reason = "not an image format PIL reads"
    except (OSError, ValueError) as error:  # PIL's truncated-file and conversion errors name no file
        reason = str(error)
    raise UnreadableImageError(f"{path}: cannot read the image ({reason})")


def _to_rgb(image: Image.Image, path: str | Path) -> Image.Image:
    """8-bit RGB from any mode PIL decodes; PIL's own ``convert`` would clip 16-bit values at 255."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):  # PNG: 16-bit
        pixels = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise UnreadableImageError(
            f"{path}: {kind} pixels (PIL mode {image.mode}) have no standard range to map to 0..255; "
            "convert the image to 8 or 16 bits"
        )
    return image.convert("RGB")


class ImageFolder(torch.utils.data.Dataset):
    """(transform(image), class index) pairs from ``root/<class>/...`` image files.

    Class folders sorted by name give the class indices (so an ImageNet val folder with its 1,000 synset
    folders gives the standard label order); files are found recursively in sorted order, matching
    torchvision's ImageFolder; hidden entries are skipped, links followed (a loop, or a file reached
    twice, refused). Without a transform, items are PIL RGB images.
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
        self.classes = sorted(
            entry.name for entry in os.scandir(self.root) if entry.is_dir() and not _hidden(entry.name)
        )
        if not self.classes:
            raise DatasetError(
                f"{self.root} has no class subfolders: expected {self.root}/<class>/<image files>"
            )
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        seen: dict[tuple[int, int], str] = {}  # (device, inode) -> the path it was first found at
        for name in self.classes:
            files = _image_files(self.root / name, tuple(ext.lower() for ext in extensions))
            if not files:
                empty.append(name)
            for path in files:
                _refuse_second_path(path, seen)
            self.samples.extend((path, self.class_to_idx[name]) for path in files)
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DatasetError(f"{self.root}: no images ({', '.join(extensions)}) in class folder(s) {shown}")
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform is not None else image), target


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image paths under ``folder``, recursively, in torchvision's order (sorted walk, sorted names),
    hidden entries skipped, links followed; a link to a folder that contains it is refused."""
    found: list[tuple[str, list[str]]] = []
    _walk(str(folder), [], extensions, found)
    return [os.path.join(directory, name) for directory, names in sorted(found) for name in sorted(names)]


def _walk(directory: str, ancestors: list[tuple[int, int]], extensions: tuple[str, ...], found: list) -> None:
    """Add (directory, its image file names) for ``directory`` and every folder below it to ``found``;
    ``ancestors``: the (device, inode) of the folders it lies in."""
    status = os.stat(directory)
    here = (status.st_dev, status.st_ino)
    if here in ancestors:  # only a link can lead back to a folder it lies in
        raise DatasetError(
            f"{directory}: symbolic link loop (it leads back to {os.path.realpath(directory)}, a folder "
            "it lies in); remove the link"
        )
    names, folders = [], []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                if entry.is_dir():  # follows links
                    folders.append(entry.path)
                elif entry.name.lower().endswith(extensions):
                    names.append(entry.name)
    except OSError as error:  # os.walk would skip an unreadable folder without a word
        raise DatasetError(f"{directory}: cannot list the folder ({error.strerror})") from None
    found.append((directory, names))
    for sub in folders:
        _walk(sub, [*ancestors, here], extensions, found)


def _refuse_second_path(path: str, seen: dict[tuple[int, int], str]) -> None:
    """Refuse ``path`` if the file it names was found before under another path (links, hard links)."""
    try:
        status = os.stat(path)
    except OSError as error:
        raise DatasetError(f"{path}: {error.strerror} (a broken symbolic link?)") from None
    key = (status.st_dev, status.st_ino)
    if key in seen:
        raise DatasetError(
            f"{path} and {seen[key]} are the same file (through a link): it would count twice, or "
            "with two labels; keep one"
        )
    seen[key] = path
