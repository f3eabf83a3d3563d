"""Fashion-MNIST clips: the video testbed (``videomamba_fmnist_clips``), made from the real images.

A clip is ``num_frames`` copies of one 28x28 Fashion-MNIST image, each moved by whole pixels (zero
fill). The default ``motion="shift"`` moves frame ``t`` right by ``frame_offsets(num_frames, shift)[t]``:
evenly spaced from ``-shift / 2`` to ``+shift / 2`` px, rounded half away from zero (4 frames, 8 px:
-4, -1, +1, +4). Direction 0 ("left to right") uses the offsets in that order; direction 1 ("right to
left") is the same clip played backwards, so frame ``t`` of one is frame ``T - 1 - t`` of the other.
The label is ``2 * fashion_class + direction`` (20 classes, ``CLIP_CLASSES``).

Both directions show the item at the same set of positions, so a frame taken out of the clip, without
its time index, cannot tell the direction; two frames in known order can. A model that knows which
frame it sees (VideoMamba adds a temporal position embedding per frame) can read the direction from one
frame: the item in frame 0 is on the left for left-to-right clips and on the right otherwise (a
fixed threshold on frame 0's centre of mass alone gets 96.5 % of the ``train`` directions right).

``motion="orbit"`` removes that shortcut: the item steps around a ring of 8 positions
(``orbit_offsets(shift // 2)``), one step per frame from a random phase, clockwise (direction 0) or
counter-clockwise (1), labels named by ``ORBIT_CLIP_CLASSES``. For every frame index, each ring position
is equally likely in both directions, so one frame says nothing about the direction, even with its
index; two consecutive frames do.

Each image's direction, orbit phase and optional vertical jitter (one offset per clip, the same in every
frame) come from a SplitMix64 hash of ``(seed, key)``, with key the image's index in its official IDX
file (test images: ``TEST_KEY_OFFSET +`` index). So a clip never depends on batch order, on which split
loaded it (``train`` and ``train_full`` give the same clip for an image) or on the numpy / torch version.
Splits ``train`` / ``val`` / ``test`` / ``train_full`` are those of ``load_fashion_mnist``, one clip per
image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mambatr.data.batches import iterate_batches
from mambatr.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SPLITS,
    load_fashion_mnist,
    train_val_indices,
)

MOTIONS: tuple[str, ...] = ("shift", "orbit")
DIRECTIONS: tuple[str, ...] = ("left to right", "right to left")  # motion="shift"
ORBIT_DIRECTIONS: tuple[str, ...] = ("clockwise", "counter-clockwise")  # motion="orbit"
CLIP_CLASSES: tuple[str, ...] = tuple(
    f"{name}, {way}" for name in FASHION_MNIST_CLASSES for way in DIRECTIONS
)
ORBIT_CLIP_CLASSES: tuple[str, ...] = tuple(
    f"{name}, {way}" for name in FASHION_MNIST_CLASSES for way in ORBIT_DIRECTIONS
)
NUM_FRAMES = 4
SHIFT = 8
SEED = 0
TEST_KEY_OFFSET = 1 << 32  # keys of the t10k images, so test image i and training image i differ


def frame_offsets(num_frames: int = NUM_FRAMES, shift: int = SHIFT) -> list[int]:
    """Horizontal offsets (px, positive = right) of a left-to-right clip's frames.

    ``shift * t / (num_frames - 1) - shift / 2`` rounded half away from zero, so the list is
    antisymmetric (``offsets[T - 1 - t] == -offsets[t]``) and spans ``shift`` px up to rounding.
    """
    if num_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to show a direction, got {num_frames}")
    if shift < 1:
        raise ValueError(f"shift must be >= 1 px, got {shift}")
    den = 2 * (num_frames - 1)
    return [_round_away(Fraction(shift * (2 * t - (num_frames - 1)), den)) for t in range(num_frames)]


def clip_hash(keys: torch.Tensor | np.ndarray, seed: int = SEED) -> np.ndarray:
    """uint64 SplitMix64 hash of each ``(seed, key)`` pair: the clip generator's per-image randomness."""
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    return _splitmix64(_splitmix64(np.full_like(keys, seed & 0xFFFFFFFFFFFFFFFF)) ^ keys)


def orbit_offsets(radius: int) -> list[tuple[int, int]]:
    """The 8 (dy, dx) ring positions of ``motion="orbit"``, clockwise on screen from (0, +radius).

    ``(radius * sin(k * 45 deg), radius * cos(k * 45 deg))`` rounded half away from zero (y points down).
    """
    if radius < 1:
        raise ValueError(f"orbit radius must be >= 1 px, got {radius}")
    ring = []
    for k in range(8):
        angle = math.pi * k / 4
        ring.append(tuple(_round_away(radius * f(angle)) for f in (math.sin, math.cos)))
    return ring


def _check_motion(motion: str) -> None:
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")


def make_clips(
    images: torch.Tensor,
    keys: torch.Tensor | np.ndarray,
    num_frames: int = NUM_FRAMES,
    shift: int = SHIFT,
    jitter: int = 0,
    seed: int = SEED,
    motion: str = "shift",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips uint8 (N, T, H, W), direction int64 (N,)) from uint8 images (N, H, W).

    ``keys`` (N,) identifies each image (its index in the IDX file for ``load_fmnist_clips``); the
    direction, a vertical offset in ``[-jitter, jitter]`` and the orbit phase are drawn from
    ``clip_hash(keys, seed)``, so equal keys give equal clips whatever else is in the batch.

    ``motion="shift"`` (the testbed): frame ``t`` is moved right by ``frame_offsets(T, shift)[t]``
    (direction 0, left to right) or by its negation, i.e. the same frames in reverse order (direction 1).
    ``motion="orbit"``: the item circles ``orbit_offsets(shift // 2)``, one 45-degree step per frame from a
    random phase (0..7), clockwise (0) or counter-clockwise (1); at every frame index its position is
    uniform over the ring in both directions (more than 8 frames revisit positions).
    """
    _check_motion(motion)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {images.dtype} {tuple(images.shape)}")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if len(keys) != len(images):
        raise ValueError(f"{len(images)} images but {len(keys)} keys")
    height, width = images.shape[1:]
    hashed = clip_hash(keys, seed)
    direction = torch.from_numpy((hashed >> np.uint64(63)).astype(np.int64))
    sign = 1 - 2 * direction[:, None]  # (N, 1): +1 or -1
    if motion == "shift":
        step = torch.tensor(frame_offsets(num_frames, shift))  # (T,)
        offsets = torch.stack([torch.zeros(len(keys), num_frames, dtype=torch.int64), sign * step], -1)
    else:
        if num_frames < 2:
            raise ValueError(f"a clip needs at least 2 frames to show a direction, got {num_frames}")
        ring = torch.tensor(orbit_offsets(shift // 2))  # (8, 2)
        phase = torch.from_numpy(((hashed >> np.uint64(40)) % np.uint64(8)).astype(np.int64))
        offsets = ring[(phase[:, None] + sign * torch.arange(num_frames)) % 8]  # (N, T, 2)
    if jitter:
        rows = (hashed >> np.uint64(32)) % np.uint64(2 * jitter + 1)
        offsets[..., 0] += torch.from_numpy(rows.astype(np.int64) - jitter)[:, None]
    if offsets[..., 0].abs().max() >= height or offsets[..., 1].abs().max() >= width:
        raise ValueError(f"shift {shift} / jitter {jitter} move the item out of a {height}x{width} frame")
    clips = torch.empty(len(images), num_frames, height, width, dtype=torch.uint8)
    for dy, dx in torch.unique(offsets.view(-1, 2), dim=0).tolist():
        chosen = (offsets == torch.tensor([dy, dx])).all(-1)  # (N, T)
        clips[chosen] = _translate(images[chosen.nonzero()[:, 0]], dy, dx)
    return clips, direction


def load_fmnist_clips(
    split: str,
    root: str | Path | None = None,
    num_frames: int = NUM_FRAMES,
    shift: int = SHIFT,
    jitter: int = 0,
    seed: int = SEED,
    motion: str = "shift",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips uint8 (N, T, 28, 28), labels int64 (N,)) of a split; label = 2 * class + direction.

    One clip per image of ``load_fashion_mnist(split, root)`` in the same order (55,000 x 4 x 28 x 28
    bytes = 172 MB for ``train``).
    """
    _check_motion(motion)  # before reading any file
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose from {', '.join(SPLITS)}")
    if split == "test":
        images, classes = load_fashion_mnist("test", root)
        keys = np.arange(len(images), dtype=np.int64) + TEST_KEY_OFFSET
    else:
        images, classes = load_fashion_mnist("train_full", root)
        keys = np.arange(len(images), dtype=np.int64)
        if split != "train_full":  # the same index lists load_fashion_mnist uses for train / val
            train, val = train_val_indices(len(images))
            keys = train if split == "train" else val
            images, classes = images[torch.from_numpy(keys)], classes[torch.from_numpy(keys)]
    clips, direction = make_clips(images, keys, num_frames, shift, jitter, seed, motion)
    return clips, 2 * classes + direction


def clips_to_model_input(
    clips: torch.Tensor, mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD
) -> torch.Tensor:
    """uint8 clips (N, T, H, W) -> normalised float32 (N, 1, T, H, W): (x / 255 - mean) / std."""
    if clips.dtype != torch.uint8 or clips.dim() != 4:
        raise ValueError(f"expected uint8 clips (N, T, H, W), got {clips.dtype} {tuple(clips.shape)}")
    return ((clips.float() / 255 - mean) / std).unsqueeze(1)


def iterate_clip_batches(
    clips: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    padding: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised clips (B, 1, T, H, W), labels (B,)) batches of uint8 clips held in memory.

    ``augment``: a random crop (zero padding ``padding`` px, crop back) per clip, the same window in
    every frame (frames as channels); no flip, which would reverse the direction. One
    ``torch.Generator(seed)`` drives the order and the crops, so a pass is reproducible.
    """
    return iterate_batches(
        clips, labels, batch_size, shuffle, augment, seed, drop_last,
        flip=False, padding=padding, to_input=clips_to_model_input,
    )  # fmt: skip


def _translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images (..., H, W) moved down ``dy`` and right ``dx`` px (negative: up / left), zero filled."""
    height, width = images.shape[-2:]
    out = torch.zeros_like(images)
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[
        ..., max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_away(value: float | Fraction) -> int:
    """Round half away from zero (exact for Fractions)."""
    return int(math.copysign(math.floor(abs(value) + Fraction(1, 2)), value))
