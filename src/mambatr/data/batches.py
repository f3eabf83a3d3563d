"""In-memory batching of uint8 image tensors: normalisation, seedable batched augmentation, iteration."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from mambatr.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD


def to_model_input(
    images: torch.Tensor, mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD
) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, 1, H, W) -> normalised float32 (N, 1, H, W): (x / 255 - mean) / std."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    return (images.float() / 255 - mean) / std


def augment_batch(
    images: torch.Tensor, generator: torch.Generator | None = None, padding: int = 2, flip: bool = True
) -> torch.Tensor:
    """Random crop (zero padding ``padding`` px, crop back to size) and horizontal flip (p = 0.5), per image.

    Works on (N, H, W) or (N, C, H, W) tensors of any dtype in one gather; the same generator state gives
    the same result.
    """
    squeeze = images.dim() == 3
    batch = images.unsqueeze(1) if squeeze else images
    n, _, height, width = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = top + torch.arange(height)  # (N, H)
    cols = left + torch.arange(width)  # (N, W)
    if flip:
        flipped = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flipped, cols.flip(-1), cols)
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    out = out.permute(0, 3, 1, 2).contiguous()
    return out.squeeze(1) if squeeze else out


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    flip: bool = True,
    padding: int = 2,
    to_input: Callable[[torch.Tensor], torch.Tensor] = to_model_input,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised inputs (B, 1, H, W), labels (B,)) batches of uint8 images held in memory.

    One ``torch.Generator`` seeded with ``seed`` drives both the shuffle order and the augmentation, so
    a pass is reproducible. ``flip`` / ``padding`` configure ``augment_batch``; ``to_input`` turns a
    uint8 batch into model input (clips: ``clips_to_model_input``).
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
    stop = len(images) - len(images) % batch_size if drop_last else len(images)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        batch = images[index]
        if augment:
            batch = augment_batch(batch, generator, padding=padding, flip=flip)
        yield to_input(batch), labels[index]
