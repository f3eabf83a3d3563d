"""Training-free token reduction: the methods, the schedule solver, calibration and the API (the token state
they shrink is ``mambatr.tokens``)."""

from mambatr.reduction.api import ReductionReport, apply, remove
from mambatr.reduction.calibration import Budget, calibrate
from mambatr.reduction.recipe import Recipe
from mambatr.reduction.registry import METHODS, build_method
from mambatr.reduction.schedule import Schedule, default_layers
from mambatr.reduction.tune import tune

__all__ = [
    "METHODS",
    "Budget",
    "Recipe",
    "ReductionReport",
    "Schedule",
    "apply",
    "build_method",
    "calibrate",
    "default_layers",
    "remove",
    "tune",
]
