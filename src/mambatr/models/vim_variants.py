"""Registered Vim variants: the official ImageNet sizes and the Fashion-MNIST testbed models."""

from __future__ import annotations

from pathlib import Path

from mambatr.models.registry import register_model
from mambatr.models.vim import VimConfig, VisionMamba

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

OFFICIAL_SIZES = {"tiny": 192, "small": 384, "base": 768}


def _official(embed_dim: int, stride: int = 16):
    def build(**overrides) -> VisionMamba:
        return VisionMamba(VimConfig(embed_dim=embed_dim, stride=stride).with_overrides(**overrides))

    return build


for _size, _dim in OFFICIAL_SIZES.items():
    register_model(
        f"vim_{_size}",
        f"Vim-{_size[0].upper()} (hustvl/Vim, patch 16, 14x14 grid, middle class token), D={_dim}, depth 24",
    )(_official(_dim))
for _size in ("tiny", "small"):
    register_model(
        f"vim_{_size}_stride8",
        f"Vim-{_size[0].upper()} fine-tuned with patch stride 8 (27x27 grid)",
    )(_official(OFFICIAL_SIZES[_size], stride=8))

FMNIST_CONFIG = VimConfig(
    img_size=28,
    patch_size=4,
    stride=4,
    in_chans=1,
    num_classes=10,
    embed_dim=96,
    depth=12,
)
FMNIST_P2_CONFIG = FMNIST_CONFIG.with_overrides(patch_size=2, stride=2)


@register_model(
    "vim_fmnist",
    "Fashion-MNIST testbed: Vim architecture, 28x28, patch 4 (49 tokens + middle class token), "
    "D=96, depth 12",
    weights=WEIGHTS_DIR / "vim_fmnist.safetensors",
    dataset="fashion_mnist",
)
def vim_fmnist(**overrides) -> VisionMamba:
    return VisionMamba(FMNIST_CONFIG.with_overrides(**overrides))


@register_model(
    "vim_fmnist_deit",
    "Fashion-MNIST testbed, the default: vim_fmnist's architecture fine-tuned with the official Vim / "
    "DeiT augmentation (random erasing, mixup / cutmix, drop path), robust to early token removal",
    weights=WEIGHTS_DIR / "vim_fmnist_deit.safetensors",
    dataset="fashion_mnist",
)
def vim_fmnist_deit(**overrides) -> VisionMamba:
    return VisionMamba(FMNIST_CONFIG.with_overrides(**overrides))


@register_model(
    "vim_fmnist_p2",
    "Fashion-MNIST testbed at patch 2 (14x14 = 196 tokens + middle class token, like ImageNet Vim's "
    "grid), D=96, depth 12: vim_fmnist_deit resampled to patch 2 and fine-tuned with the official Vim / "
    "DeiT augmentation",
    weights=WEIGHTS_DIR / "vim_fmnist_p2.safetensors",
    dataset="fashion_mnist",
)
def vim_fmnist_p2(**overrides) -> VisionMamba:
    return VisionMamba(FMNIST_P2_CONFIG.with_overrides(**overrides))


@register_model(
    "vim_custom",
    "free Vim config: pass img_size, patch_size, embed_dim, depth, ... as overrides",
    dataset="fashion_mnist",
)
def vim_custom(**overrides) -> VisionMamba:
    return VisionMamba(VimConfig(**overrides))
