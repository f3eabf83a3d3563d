"""Backbones, their registry and checkpoint loading."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mambatr.models import (
    hub,
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
    "has_pretrained",
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


def exported_config(checkpoint: str | Path, name: str) -> dict:
    """The architecture stored beside a ``mambatr train`` export (``X.safetensors`` + ``X.json``), if any.

    It replaces the named model's architecture, so an export of another model is refused, naming both:
    ``vim_tiny`` with a ``vim_fmnist`` export would otherwise build, and be reported as, the wrong model.
    So is one of the same architecture under another name (``vim_fmnist_deit`` weights as ``vim_fmnist``):
    its results would be reported under the wrong name.
    """
    checkpoint = Path(checkpoint)
    sidecar = checkpoint.with_suffix(".json")
    if checkpoint.suffix != ".safetensors" or not sidecar.is_file():
        return {}
    try:
        info = json.loads(sidecar.read_text())
    except ValueError as error:
        raise CheckpointError(f"{sidecar} (beside {checkpoint.name}) is not valid JSON: {error}") from None
    config = dict(info.get("config", {}))
    exported = info.get("model", name)
    if exported != name:
        with torch.device("meta"):  # the named model's own architecture, shapes only
            named = model_entry(name).builder()
        defaults = json.loads(json.dumps(asdict(named.config)))
        foreign = sorted(set(config) - set(defaults))
        if foreign:
            raise CheckpointError(
                f"{checkpoint} holds a {exported} (per {sidecar.name}), not a {name}: another model family "
                f"({type(named).__name__} has no fields {foreign}); pass --model {exported}"
            )
        differing = [
            f"{key} {value} vs {defaults[key]}" for key, value in config.items() if defaults[key] != value
        ]
        if differing:
            raise CheckpointError(
                f"{checkpoint} holds a {exported} (per {sidecar.name}), not a {name}: "
                f"{', '.join(differing)}; pass --model {exported}"
            )
        # the same architecture, another model's weights: results would be reported under the wrong name
        raise CheckpointError(
            f"{checkpoint} holds a {exported} (per {sidecar.name}), not a {name}: pass --model {exported}"
        )
    return config


def has_pretrained(name: str) -> bool:
    """Whether ``pretrained=True`` has weights for ``name``: shipped ones, or official ones on the Hub."""
    return model_entry(name).weights is not None or name in hub.official_weights()


def pretrained_weights(name: str) -> Path:
    """The file ``pretrained=True`` loads: a testbed's shipped weights, or the official ones from the
    Hugging Face Hub (cached, sha256-checked: :mod:`mambatr.models.hub`)."""
    entry = model_entry(name)
    if entry.weights is not None:
        if not entry.weights.is_file():
            raise FileNotFoundError(f"shipped weights for {name!r} missing at {entry.weights}")
        return entry.weights
    official = hub.official_weights().get(name)
    if official is not None:
        return hub.fetch(name, official)
    elsewhere = hub.weights_elsewhere(name)
    if elsewhere is not None:
        raise ValueError(f"model {name!r}: {elsewhere}, then pass checkpoint=PATH")
    raise ValueError(
        f"model {name!r} has no shipped weights and no official ones on the Hub; pass checkpoint=PATH"
    )


def create_model(
    name: str, checkpoint: str | Path | None = None, pretrained: bool = False, **overrides
) -> nn.Module:
    """Build a registered model; ``pretrained`` loads its shipped weights (testbeds) or its official
    ones from the Hugging Face Hub, ``checkpoint`` a file of yours.

    A ``mambatr train`` export carries its architecture in a JSON file beside the weights: it is used
    as overrides (explicit ``overrides`` win), so a custom-size model loads by its file alone; an
    export of another model is refused (``exported_config``).
    """
    entry = model_entry(name)
    if checkpoint is not None:
        overrides = {**exported_config(checkpoint, name), **overrides}
    model = entry.builder(**overrides)
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    if pretrained:
        checkpoint = pretrained_weights(name)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
