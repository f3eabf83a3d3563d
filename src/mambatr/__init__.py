"""mambatr: training-free token reduction for Vision Mamba models."""

from mambatr.flops import count_flops
from mambatr.models import VimConfig, VisionMamba, create_model, list_models, load_checkpoint
from mambatr.reduction import METHODS, Budget, Recipe, Schedule, apply, calibrate, remove, tune

__all__ = [
    "METHODS",
    "Budget",
    "Recipe",
    "VimConfig",
    "Schedule",
    "VisionMamba",
    "apply",
    "calibrate",
    "count_flops",
    "create_model",
    "list_models",
    "load_checkpoint",
    "remove",
    "tune",
]
__version__ = "0.1.0"
