"""mambatr: training-free token reduction for Vision Mamba models."""

from mambatr.flops import count_flops
from mambatr.models import VimConfig, VisionMamba, create_model, list_models, load_checkpoint

__all__ = ["VimConfig", "VisionMamba", "count_flops", "create_model", "list_models", "load_checkpoint"]
__version__ = "0.1.0"
