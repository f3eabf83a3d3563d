"""Training-free token reduction: the token state, the methods, the schedule solver and the API."""

from mambatr.reduction.api import ReductionReport, apply, remove
from mambatr.reduction.registry import METHODS, build_method
from mambatr.reduction.schedule import default_layers

__all__ = ["METHODS", "ReductionReport", "apply", "build_method", "default_layers", "remove"]
