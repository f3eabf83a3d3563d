"""The DeiT / timm regularisation of the official Vim recipe (hustvl/Vim ``main.py``), on batches.

Random-resized crop, random erasing and mixup / cutmix, as timm implements them, applied to a batch
of normalised model input (B, C, H, W) or clips (B, C, T, H, W) (a clip gets one crop / rectangle for
all its frames). Every draw comes from the ``torch.Generator`` passed in (the beta draws of mixup from
a numpy generator seeded by it), so a training step's augmentation depends only on that generator's
seed: ``mambatr train`` seeds it with (seed, step), which keeps ``--resume`` exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ERASE_AREA = (0.02, 1 / 3)  # timm RandomErasing: fraction of the image area
ERASE_ASPECT = (0.3, 1 / 0.3)
CROP_ASPECT = (3 / 4, 4 / 3)  # torchvision / timm RandomResizedCrop
ATTEMPTS = 10


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def crop_box(
    height: int, width: int, min_scale: float, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``min_scale``..1 of the area, aspect 3/4..4/3,
    torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the central crop)."""
    area = height * width
    log_low, log_high = math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])
    for _ in range(ATTEMPTS):
        target = area * _uniform(generator, min_scale, 1.0)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, 0, height - h), _randint(generator, 0, width - w), h, w
    ratio = width / height
    if ratio < CROP_ASPECT[0]:
        w, h = width, int(round(width / CROP_ASPECT[0]))
    elif ratio > CROP_ASPECT[1]:
        w, h = int(round(height * CROP_ASPECT[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(inputs: torch.Tensor, generator: torch.Generator, min_scale: float) -> torch.Tensor:
    """Each sample cropped (``crop_box``) and resized back to H x W, bilinear (``align_corners=False``).

    Applied to normalised input: bilinear weights sum to 1, so this equals cropping the raw pixels and
    normalising after. The crop is never larger than the image, so no antialiasing is involved."""
    height, width = inputs.shape[-2:]
    flat = inputs.reshape(inputs.shape[0], -1, height, width)  # a clip's frames share the crop
    out = torch.empty_like(flat)
    for index in range(flat.shape[0]):
        top, left, h, w = crop_box(height, width, min_scale, generator)
        crop = flat[index : index + 1, :, top : top + h, left : left + w]
        out[index] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
    return out.reshape(inputs.shape)


def random_erasing(inputs: torch.Tensor, generator: torch.Generator, probability: float) -> torch.Tensor:
    """timm ``RandomErasing(probability, mode="pixel")``: with ``probability``, one rectangle of 2 % to
    1/3 of the area, aspect 0.3..3.3 (10 tries to fit), filled with standard normal noise per value."""
    height, width = inputs.shape[-2:]
    out = inputs.clone()
    log_low, log_high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    for sample in out:
        if _uniform(generator) > probability:
            continue
        for _ in range(ATTEMPTS):
            target = _uniform(generator, *ERASE_AREA) * height * width
            aspect = math.exp(_uniform(generator, log_low, log_high))
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top, left = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
                region = sample[..., top : top + h, left : left + w]
                region.copy_(torch.randn(region.shape, generator=generator, dtype=region.dtype))
                break
    return out


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B, K) label-smoothed targets: 1 - smoothing + smoothing / K on the label, smoothing / K elsewhere."""
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off).scatter_(1, labels[:, None], 1.0 - smoothing + off)


def mix_batch(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Mixup(mode="batch")``: (mixed inputs, soft targets (B, K) summing to 1).

    With ``prob`` the batch is mixed with its reverse: cutmix (with ``switch_prob`` when both alphas are
    positive) pastes a box of area about 1 - lam, lam corrected to the box actually pasted; mixup
    blends with lam ~ Beta(alpha, alpha). Targets are the label-smoothed one-hots mixed with the same
    lam (lam = 1 when the batch is not mixed, i.e. plain label smoothing).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
    beta = np.random.default_rng(int(torch.randint(2**62, (), generator=generator).item())).beta
    lam, out = 1.0, inputs
    if _uniform(generator) < prob:
        use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or _uniform(generator) < switch_prob)
        lam = float(beta(cutmix_alpha, cutmix_alpha) if use_cutmix else beta(mixup_alpha, mixup_alpha))
        flipped = inputs.flip(0)
        if use_cutmix:
            height, width = inputs.shape[-2:]
            cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
            cy, cx = _randint(generator, 0, height - 1), _randint(generator, 0, width - 1)
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            out = inputs.clone()
            out[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            out = inputs * lam + flipped * (1.0 - lam)
    targets = smooth_one_hot(labels, num_classes, smoothing)
    return out, targets * lam + targets.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm ``SoftTargetCrossEntropy``: mean over the batch of -sum_k target_k log softmax_k."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
