"""Training-free token reduction: the token state, the methods, the schedule solver and the API."""

from mambatr.reduction.api import ReductionReport, apply, remove
from mambatr.reduction.calibration import calibrate
from mambatr.reduction.registry import METHODS, build_method
from mambatr.reduction.schedule import Schedule, default_layers

__all__ = [
    "METHODS",
    "ReductionReport",
    "Schedule",
    "apply",
    "build_method",
    "calibrate",
    "default_layers",
    "remove",
]
