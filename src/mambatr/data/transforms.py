"""Vim's ImageNet evaluation transform, with PIL + numpy + torch only (no torchvision).

Source: hustvl/Vim ``vim/datasets.py`` ``build_transform(is_train=False)``, with ``vim/main.py`` defaults
``--input-size 224`` and ``--eval-crop-ratio 0.875``::

    if args.input_size > 32:
        Resize(int(input_size / eval_crop_ratio), interpolation=3)   # 3 = bicubic, short side
        CenterCrop(input_size)
    ToTensor(); Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)  # timm constants

Resize and CenterCrop follow torchvision's arithmetic on PIL images exactly: long side
``int(size * long / short)``, crop offset ``int(round((side - crop) / 2))``, zero padding if the crop
is larger than the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resize_short_side(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the short side is ``size``, keeping the aspect ratio (torchvision ``Resize(int)``)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, INTERPOLATIONS[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` region (torchvision ``CenterCrop``; zero-padded when larger)."""
    width, height = image.size
    left, top = (_crop_offset(width, size), _crop_offset(height, size))
    return image.crop((left, top, left + size, top + size))  # PIL fills outside the image with zeros


def _crop_offset(side: int, crop: int) -> int:
    """torchvision's offset; a negative one (crop > side) pads (crop - side) // 2 before the image."""
    return -((crop - side) // 2) if crop > side else int(round((side - crop) / 2.0))


def to_normalized_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W): ``ToTensor`` (/255) then ``Normalize(mean, std)``."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub(mean_t).div(std_t)


@dataclass(frozen=True)
class EvalTransform:
    """Callable PIL image -> normalised (3, input_size, input_size) tensor; see ``build_eval_transform``."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD

    @property
    def resize_size(self) -> int | None:
        """Short side before cropping; None when Vim skips resize and crop (input_size <= 32)."""
        return int(self.input_size / self.crop_pct) if self.input_size > 32 else None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.resize_size is not None:
            image = resize_short_side(image, self.resize_size, self.interpolation)
            image = center_crop(image, self.input_size)
        return to_normalized_tensor(image, self.mean, self.std)


def build_eval_transform(
    input_size: int = 224,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> EvalTransform:
    """Vim's evaluation transform: bicubic resize of the short side to ``int(input_size / crop_pct)``,
    center crop ``input_size``, /255, normalise (skipping resize and crop when input_size <= 32, as Vim does).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {', '.join(INTERPOLATIONS)}")
    if input_size <= 0 or crop_pct <= 0:
        raise ValueError(f"input_size and crop_pct must be positive, got {input_size}, {crop_pct}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std need one value per RGB channel")
    return EvalTransform(input_size, crop_pct, interpolation, tuple(mean), tuple(std))
