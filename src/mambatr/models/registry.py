"""Model registry: ``create_model(name, ...)`` as in timm; each variant is a named config builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: ModelBuilder
    description: str
    weights: Path | None = None  # shipped weights file for pretrained=True
    # what `mambatr eval` evaluates it on: "imagenet" (folder), "fashion_mnist", "fmnist_clips"
    # (Fashion-MNIST clips) or "kinetics" (a Kinetics-400 video folder)
    dataset: str = "imagenet"


_REGISTRY: dict[str, ModelEntry] = {}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered: a KeyError for lookups, a ValueError for callers (the CLI)
    that report bad input plainly, without catching every KeyError a bug could raise."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would print the message's repr


def register_model(
    name: str, description: str, weights: Path | None = None, dataset: str = "imagenet"
) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, weights, dataset)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]
