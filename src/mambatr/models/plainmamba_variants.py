"""Registered PlainMamba variants: the official ImageNet sizes L1 / L2 / L3 and the Fashion-MNIST testbed."""

from __future__ import annotations

from pathlib import Path

from mambatr.models.plainmamba import PlainMamba, PlainMambaConfig
from mambatr.models.registry import register_model

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

# arch_zoo of the official backbone (patch 16, d_state 16, expand 2, conv 7, LayerNorm)
OFFICIAL_ARCHS: dict[str, dict] = {
    "l1": {"embed_dim": 192, "depth": 24, "num_convs_patch_embed": 1, "layers_with_dwconv": (0,)},
    "l2": {"embed_dim": 384, "depth": 24, "num_convs_patch_embed": 2, "layers_with_dwconv": ()},
    "l3": {"embed_dim": 448, "depth": 36, "num_convs_patch_embed": 2, "layers_with_dwconv": ()},
}

# Fashion-MNIST testbed: 28x28x1, patch 4 (stem 14x14, projection 2x2 -> 7x7 = 49 tokens)
FMNIST_ARCH: dict = {
    "img_size": 28,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 64,
    "depth": 8,
    "num_convs_patch_embed": 0,
    "stem_channels": 32,
    "layers_with_dwconv": (),
}


def _build(arch: dict, overrides: dict) -> PlainMamba:
    return PlainMamba(PlainMambaConfig(**arch).with_overrides(**overrides))


def _official(size: str):
    def build(**overrides) -> PlainMamba:
        return _build(OFFICIAL_ARCHS[size], overrides)

    return build


for _size, _arch in OFFICIAL_ARCHS.items():
    register_model(
        f"plainmamba_{_size}",
        f"PlainMamba-{_size.upper()} (ChenhongyiYang/PlainMamba, 14x14 grid, four snake scans, mean pool), "
        f"D={_arch['embed_dim']}, depth {_arch['depth']}",
    )(_official(_size))


@register_model(
    "plainmamba_fmnist",
    "Fashion-MNIST testbed: PlainMamba architecture, 28x28, patch 4 (7x7 = 49 tokens, no class token), "
    f"D={FMNIST_ARCH['embed_dim']}, depth {FMNIST_ARCH['depth']}",
    weights=WEIGHTS_DIR / "plainmamba_fmnist.safetensors",
    dataset="fashion_mnist",
)
def plainmamba_fmnist(**overrides) -> PlainMamba:
    return _build(FMNIST_ARCH, overrides)


@register_model(
    "plainmamba_custom",
    "free PlainMamba config: pass img_size, patch_size, embed_dim, depth, ... as overrides",
    dataset="fashion_mnist",
)
def plainmamba_custom(**overrides) -> PlainMamba:
    return _build({}, overrides)
