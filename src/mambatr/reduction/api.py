"""``mambatr.apply(model, method, flops_reduction)`` / ``mambatr.remove(model)``, as ToMe's patch API."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from mambatr.flops import count_flops
from mambatr.models.backbone import ReducibleBackbone, Reduction
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.recipe import Recipe
from mambatr.reduction.registry import build_method
from mambatr.reduction.schedule import (
    Schedule,
    check_layers,
    default_layers,
    reduced_flops,
    removals_for,
    solve,
)


@dataclass
class ReductionReport:
    method: str
    options: dict
    layers: list[int]
    removals: dict[int, int]
    tokens_per_layer: list[int]
    gflops_dense: float
    gflops: float
    flops_reduction_target: float | None
    flops_reduction_achieved: float
    token_reduction: float  # 1 - (tokens summed over blocks) / (dense tokens summed over blocks)

    def to_dict(self) -> dict:
        return asdict(self)


def backbone_of(model: nn.Module) -> ReducibleBackbone:
    if not isinstance(model, ReducibleBackbone):
        raise TypeError(
            "token reduction supports mambatr backbones (Vim, VideoMamba, PlainMamba), "
            f"got {type(model).__name__}"
        )
    return model


def apply(
    model: nn.Module,
    method: str | None = None,
    flops_reduction: float | None = None,
    *,
    layers: Sequence[int] | None = None,
    ratio: float | None = None,
    schedule: Schedule | str | Path | None = None,
    recipe: Recipe | str | Path | None = None,
    **options: object,
) -> ReductionReport:
    """Patch ``model`` in place to reduce tokens. Give one of: a FLOPs target, the method's ratio, a
    ``schedule`` (a :class:`Schedule` or its JSON file, e.g. from ``mambatr calibrate``) or a ``recipe``
    (a :class:`Recipe` or its file, from ``mambatr tune``). ``method`` defaults to MTR, or to the
    schedule's or recipe's own."""
    backbone = backbone_of(model)
    config = backbone.config
    if recipe is not None:
        if schedule is not None:
            raise ValueError("give a schedule or a recipe, not both")
        schedule = (recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)).schedule
    if schedule is not None:
        return _apply_schedule(backbone, method, schedule, flops_reduction, layers, ratio, options)
    method = method or "mtr"
    reducer = build_method(method, **options)
    if layers is None:
        layers = reducer.preferred_layers(config.depth) or default_layers(config.depth)
    layers = check_layers(layers, config.depth)
    if (flops_reduction is None) == (ratio is None):
        raise ValueError(
            "give exactly one of flops_reduction (a FLOPs target) or ratio (the method's amount)"
        )
    if ratio is not None:
        if not 0.0 <= ratio <= reducer.max_amount:
            raise ValueError(f"{method}: ratio must be in [0, {reducer.max_amount}], got {ratio}")
        removals = removals_for(config, reducer, layers, ratio)
    else:
        removals = solve(config, reducer, layers, flops_reduction)
    return _patch(backbone, method, reducer, layers, removals, flops_reduction)


def _apply_schedule(
    backbone: ReducibleBackbone,
    method: str | None,
    schedule: Schedule | str | Path,
    flops_reduction: float | None,
    layers: Sequence[int] | None,
    ratio: float | None,
    options: dict,
) -> ReductionReport:
    """A schedule fixes the layers, counts and options: anything else given beside it is refused."""
    if not isinstance(schedule, Schedule):
        schedule = Schedule.load(schedule)
    given = {"flops_reduction": flops_reduction, "layers": layers, "ratio": ratio}
    extra = [name for name, value in given.items() if value is not None]
    if extra or options:
        raise ValueError(
            f"a schedule fixes layers, counts and options; do not also give {extra + sorted(options)}"
        )
    if method not in (None, schedule.method):
        raise ValueError(f"the schedule is for method {schedule.method!r}, not {method!r}")
    method = schedule.method
    schedule.check_fits(backbone.config)
    reducer = build_method(schedule.method, **schedule.options)
    removals = dict(sorted(schedule.removals.items()))
    return _patch(backbone, method, reducer, list(removals), removals, schedule.flops_reduction_target)


def _patch(
    backbone: ReducibleBackbone,
    method: str,
    reducer: ReductionMethod,
    layers: list[int],
    removals: dict[int, int],
    flops_reduction: float | None,
) -> ReductionReport:
    config = backbone.config
    report = reduced_flops(config, reducer, removals)
    dense = count_flops(config).total
    backbone.reduction = Reduction(reducer, removals) if any(removals.values()) else None
    return ReductionReport(
        method=method,
        options=reducer.describe(),
        layers=layers,
        removals=removals,
        tokens_per_layer=[layer.tokens for layer in report.layers],
        gflops_dense=dense / 1e9,
        gflops=report.gflops,
        flops_reduction_target=flops_reduction,
        flops_reduction_achieved=1.0 - report.total / dense,
        token_reduction=1.0 - sum(layer.tokens for layer in report.layers) / (config.depth * config.seq_len),
    )


def remove(model: nn.Module) -> None:
    """Undo ``apply``: the model runs dense again."""
    backbone_of(model).reduction = None


@contextmanager
def intercept_reduction(model: nn.Module, wrapper: Callable[..., object]) -> Iterator[None]:
    """Route every reduction step of ``model`` through ``wrapper(reduce, state, internals, count)``
    while the context is open (timing in bench, recording in viz); a dense model is left alone."""
    reduction = backbone_of(model).reduction
    if reduction is None:
        yield
        return
    method = reduction.method
    original = method.reduce
    method.reduce = lambda state, internals, count: wrapper(original, state, internals, count)
    try:
        yield
    finally:
        del method.reduce  # back to the class's method
