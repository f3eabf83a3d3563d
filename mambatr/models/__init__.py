"""Backbones, their registry and checkpoint loading."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mambatr.models import (
    plainmamba_variants,  # noqa: F401  (registers the PlainMamba variants)
    videomamba_variants,  # noqa: F401  (registers the VideoMamba variants)
    vim_variants,  # noqa: F401  (registers the Vim variants)
)
from mambatr.models.backbone import ReducibleBackbone
from mambatr.models.checkpoint import CheckpointError, load_into, read_state_dict
from mambatr.models.registry import list_models, model_entry, register_model
from mambatr.models.vim import VimConfig, VisionMamba

__all__ = [
    "CheckpointError",
    "VimConfig",
    "VisionMamba",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
]


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Strictly load an official training checkpoint, a flat state dict or a .safetensors file."""
    state_dict = read_state_dict(path)
    if isinstance(model, ReducibleBackbone):
        state_dict = model.adapt_state_dict(state_dict)
    load_into(model, state_dict, source=str(path))


def exported_config(checkpoint: str | Path) -> dict:
    """The architecture stored beside a ``mambatr train`` export (``X.safetensors`` + ``X.json``), if any."""
    sidecar = Path(checkpoint).with_suffix(".json")
    if Path(checkpoint).suffix != ".safetensors" or not sidecar.is_file():
        return {}
    return dict(json.loads(sidecar.read_text()).get("config", {}))


def create_model(
    name: str, checkpoint: str | Path | None = None, pretrained: bool = False, **overrides
) -> nn.Module:
    """Build a registered model; ``pretrained`` loads its shipped weights, ``checkpoint`` a file of yours.

    A ``mambatr train`` export carries its architecture in a JSON file beside the weights: it is used
    as overrides (explicit ``overrides`` win), so a custom-size model loads by its file alone.
    """
    entry = model_entry(name)
    if checkpoint is not None:
        overrides = {**exported_config(checkpoint), **overrides}
    model = entry.builder(**overrides)
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    if pretrained:
        if entry.weights is None:
            raise ValueError(f"model {name!r} has no shipped weights; pass checkpoint=PATH")
        if not entry.weights.is_file():
            raise FileNotFoundError(f"shipped weights for {name!r} missing at {entry.weights}")
        checkpoint = entry.weights
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
