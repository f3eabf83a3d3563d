"""``mambatr.tune``: the best reduced model for a FLOPs target or an accuracy budget, on unlabeled images.

The candidates are every method's variants (each value of its ``searchable`` options) with each
schedule they can run: the default one (the FLOPs solver's), their own calibrated one, and the
schedules calibrated for the other variants (the same counts, this variant choosing the tokens). A
candidate is scored as ``calibrate`` scores a trial: mean KL(dense || reduced) on the calibration images,
with top-1 agreement with the dense model beside it; labels are never read. Successive halving keeps
the cost near three calibrations:

1. screening: every variant with its default schedule on a quarter of the images;
2. rungs: the best 4 variants calibrated on a quarter of the images, the best 2 of them on half, the
   best one on all; at each rung every survivor is also scored with its default schedule and with every
   schedule calibrated so far, on the rung's images, and ranked by its best candidate there;
3. the pick: the last rung's best candidate (all images).

With a FLOPs target the pick has the least KL. With an accuracy budget it has the largest FLOPs
reduction that keeps the budget on the images (screening bisects the default schedule's target, a
calibration stops before the first move that breaks the budget), ties going to the least KL.

Each finished step goes to ``store`` (``done(key)`` / ``save(key, result)``: a ``mambatr.runs.RunFolder``
from the CLI), so a killed search continues where it stopped and finds what an uninterrupted one finds.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mambatr.finite import NonFiniteError, check_finite_logits
from mambatr.models.backbone import Reduction
from mambatr.reduction.api import apply, backbone_of, remove
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.calibration import Budget, Store, agreement, batched_logits, calibrate, mean_kl
from mambatr.reduction.registry import METHODS, build_method
from mambatr.reduction.schedule import (
    MAX_FLOPS_REDUCTION,
    TOLERANCE,
    Schedule,
    achieved_reduction,
    architecture_of,
)

RUNGS = ((4, 4), (2, 2), (1, 1))  # (survivors, share of the images as 1/n): a quarter, half, all
SCREEN_SHARE = 4  # screening on a quarter of the images
BUDGET_TARGETS = tuple(round(0.05 * k, 2) for k in range(1, 18))  # 5 % .. 85 %: the screen's bisection
BUDGET_CEILING = 0.85  # an accuracy-budget calibration climbs toward this FLOPs reduction at most


@dataclass(frozen=True)
class Variant:
    """A method with one value of each of its searchable options."""

    method: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        shown = ", ".join(f"{key}={value}" for key, value in self.options)
        return f"{self.method}({shown})" if shown else self.method

    @property
    def key(self) -> str:
        """The name as a file-name-safe cell key."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-")


def variants(methods: Sequence[str]) -> list[Variant]:
    """Every method's variants: the product of its searchable options' values (defaults first)."""
    found = []
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown reduction method {method!r}; available: {', '.join(sorted(METHODS))}")
        searchable = METHODS[method].searchable
        for values in itertools.product(*searchable.values()):
            found.append(Variant(method, tuple(zip(searchable, values, strict=True))))
    return found


@dataclass
class Candidate:
    """One scored (variant, schedule) pair."""

    variant: str
    method: str
    options: dict
    schedule_from: str  # "default", "calibrated", or "calibrated for <variant> (<n> images)"
    stage: str  # "screen" or "rung 1" ..
    images: int
    removals: dict[int, int]
    flops_reduction: float
    kl: float
    agreement: float
    keeps_budget: bool = True

    def to_dict(self) -> dict:
        data = asdict(self)
        data["removals"] = {str(layer): count for layer, count in sorted(self.removals.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        return cls(**{**data, "removals": {int(k): v for k, v in data["removals"].items()}})


class _Memory:
    """A store that keeps nothing across runs."""

    def __init__(self) -> None:
        self.cells: dict[str, object] = {}

    def done(self, key: str) -> object | None:
        return self.cells.get(key)

    def save(self, key: str, result: object) -> object:
        self.cells[key] = result
        return result


@dataclass
class TuneResult:
    """The pick as a schedule, every candidate scored on the way, and what the search cost."""

    schedule: Schedule
    pick: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # this run's: a resumed search took the store's steps for free
    computed: int = 0  # steps this run computed; the others came from the store


class _Search:
    """The state of one tune run: the model, its dense outputs on the images, the store, the goal."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        flops_reduction: float | None,
        budget: Budget | None,
        batch_size: int,
        step: int | None,
        store: Store,
        progress: bool,
    ) -> None:
        self.model, self.images, self.store = model, images, store
        self.batch_size, self.step, self.progress = batch_size, step, progress
        self.flops_reduction, self.budget = flops_reduction, budget
        self.config = backbone_of(model).config
        remove(model)
        dense_logits = batched_logits(model, images, batch_size)
        check_finite_logits(dense_logits, 0)
        self.dense = F.log_softmax(dense_logits, dim=-1)
        self.candidates: list[Candidate] = []
        self.computed = 0  # steps this run computed (the rest came from the store: a resumed search)

    def rank(self, candidate: Candidate) -> tuple:
        """Smaller is better: least KL at a FLOPs target; kept budget, then most FLOPs, then least KL."""
        if self.budget is None:
            return (candidate.kl,)
        return (not candidate.keeps_budget, -candidate.flops_reduction, candidate.kl)

    def score(
        self, variant: Variant, removals: dict[int, int], count: int, schedule_from: str, stage: str
    ) -> Candidate:
        """KL and agreement of ``variant`` reducing as ``removals`` says, on the first ``count`` images."""
        method = build_method(variant.method, **dict(variant.options))
        backbone = backbone_of(self.model)
        active = {layer: tokens for layer, tokens in removals.items() if tokens}
        backbone.reduction = Reduction(method, active) if active else None
        try:
            logits = batched_logits(self.model, self.images[:count], self.batch_size)
        finally:
            backbone.reduction = None
        check_finite_logits(logits, 0)
        dense = self.dense[:count]
        kl, agreed = mean_kl(dense, logits), agreement(dense, logits)
        return Candidate(
            variant=variant.name,
            method=variant.method,
            options=dict(variant.options),
            schedule_from=schedule_from,
            stage=stage,
            images=count,
            removals=dict(sorted(removals.items())),
            flops_reduction=achieved_reduction(self.config, method, removals),
            kl=kl,
            agreement=agreed,
            keeps_budget=self.budget is None or self.budget.keeps(kl, agreed),
        )

    def cached(self, key: str, compute: Callable[..., Candidate | None], *args: object) -> Candidate | None:
        """The candidate stored under ``key``, else ``compute(*args)`` (None: not feasible), stored."""
        stored = self.store.done(key)
        if stored is None:
            self.computed += 1
            result = compute(*args)
            stored = self.store.save(key, {"candidate": None if result is None else result.to_dict()})
        candidate = None if stored["candidate"] is None else Candidate.from_dict(stored["candidate"])
        if candidate is not None:
            self.candidates.append(candidate)
        return candidate

    def default_removals(self, variant: Variant, target: float) -> dict[int, int] | None:
        """The variant's default schedule at ``target`` (the FLOPs solver's), or None where unreachable."""
        try:
            report = apply(self.model, variant.method, flops_reduction=target, **dict(variant.options))
        except ValueError:
            return None
        finally:
            remove(self.model)
        return report.removals

    def default(self, variant: Variant, count: int, stage: str) -> Candidate | None:
        """The variant with its default schedule: at the FLOPs target, or with a budget at the largest
        screening target that keeps it (bisection over BUDGET_TARGETS, assuming the loss grows with it)."""
        if self.budget is None:
            removals = self.default_removals(variant, self.flops_reduction)
            return None if removals is None else self.score(variant, removals, count, "default", stage)
        low, high, best = 0, len(BUDGET_TARGETS) - 1, None
        while low <= high:
            middle = (low + high) // 2
            removals = self.default_removals(variant, BUDGET_TARGETS[middle])
            candidate = None if removals is None else self.score(variant, removals, count, "default", stage)
            if candidate is not None and candidate.keeps_budget:
                best, low = candidate, middle + 1
            else:
                high = middle - 1
        return best

    def calibrated(self, variant: Variant, count: int, stage: str) -> Candidate | None:
        """The variant's own schedule, calibrated on the first ``count`` images."""
        target = self.flops_reduction if self.budget is None else BUDGET_CEILING
        try:
            schedule = calibrate(
                self.model,
                variant.method,
                target,
                self.images[:count],
                batch_size=self.batch_size,
                step=self.step,
                budget=self.budget,
                progress=self.progress,
                **dict(variant.options),
            )
        except NonFiniteError:
            raise
        except ValueError:  # no schedule of this method reaches the target
            return None
        return self.score(variant, schedule.removals, count, "calibrated", stage)

    def transferred(self, variant: Variant, source: Candidate, count: int, stage: str) -> Candidate | None:
        """``variant`` with the counts ``source`` calibrated, where it can remove them; at a FLOPs target
        the last reducing block's count is nudged to land within tolerance (each method counts its own
        overhead, so the same counts cost each a little differently)."""
        method = build_method(variant.method, **dict(variant.options))
        removals = self.fitted(method, source.removals)
        if removals is None:
            return None
        where = f"calibrated for {source.variant} ({source.images} images)"
        return self.score(variant, removals, count, where, stage)

    def fitted(self, method: ReductionMethod, removals: dict[int, int]) -> dict[int, int] | None:
        """``removals`` as ``method`` can run them at the goal, or None."""

        def flops(trial: dict[int, int]) -> float | None:
            try:
                return achieved_reduction(self.config, method, trial)
            except ValueError:  # more than the method can remove somewhere
                return None

        if self.budget is not None or not removals:
            return removals if removals and flops(removals) is not None else None
        last = max(removals)
        trials = [{**removals, last: removals[last] + nudge} for nudge in range(-removals[last], 9)]
        fits = [(abs(f - self.flops_reduction), t) for t in trials if (f := flops(t)) is not None]
        fits = [(gap, t) for gap, t in fits if gap <= TOLERANCE]
        return min(fits, key=lambda fit: fit[0])[1] if fits else None


def tune(
    model: nn.Module,
    images: torch.Tensor,
    *,
    flops_reduction: float | None = None,
    budget: Budget | None = None,
    methods: Sequence[str] = tuple(METHODS),
    batch_size: int = 256,
    step: int | None = None,
    store: Store | None = None,
    model_name: str = "",
    source: str = "",
    command: str = "",
    progress: bool = True,
) -> TuneResult:
    """The best method, options and schedule for ``model`` at ``flops_reduction`` (least KL to the dense
    model on ``images``) or within ``budget`` (the largest FLOPs reduction that keeps it). The model is
    left dense. ``step``: tokens per calibration move (``calibrate``'s default: about 4 % of them)."""
    if (flops_reduction is None) == (budget is None):
        raise ValueError("give exactly one of flops_reduction (a FLOPs target) or budget (an accuracy one)")
    if flops_reduction is not None and not 0.0 < flops_reduction < MAX_FLOPS_REDUCTION:
        raise ValueError(f"flops_reduction must be in (0, {MAX_FLOPS_REDUCTION}), got {flops_reduction}")
    if len(images) < SCREEN_SHARE:
        raise ValueError(f"tune needs at least {SCREEN_SHARE} images, got {len(images)}")
    start = time.perf_counter()
    model.eval()
    search = _Search(model, images, flops_reduction, budget, batch_size, step, store or _Memory(), progress)
    everyone = variants(methods)
    total = len(everyone) + sum(survivors for survivors, _ in RUNGS)
    bar = tqdm(total=total, desc="tuning", disable=not progress)
    best_of: dict[Variant, Candidate] = {}
    count = len(images) // SCREEN_SHARE
    for variant in everyone:
        found = search.cached(f"screen-{variant.key}", search.default, variant, count, "screen")
        if found is not None:
            best_of[variant] = found
        bar.update()
    calibrated: list[Candidate] = []
    survivors = sorted(best_of, key=lambda v: search.rank(best_of[v]))
    for rung, (keep, share) in enumerate(RUNGS, start=1):
        survivors, count, stage = survivors[:keep], len(images) // share, f"rung {rung}"
        for variant in survivors:
            key = f"r{rung}-{variant.key}"
            own = search.cached(f"{key}-calibrated", search.calibrated, variant, count, stage)
            calibrated += [own] if own is not None else []
            bar.update()
        best_of = {}
        for variant in survivors:
            key = f"r{rung}-{variant.key}"
            own = [c for c in calibrated if c.variant == variant.name and c.stage == stage]
            scored = [*own, search.cached(f"{key}-default", search.default, variant, count, stage)]
            for number, other in enumerate(calibrated):
                if other not in own:
                    scored.append(
                        search.cached(
                            f"{key}-from-{number}", search.transferred, variant, other, count, stage
                        )
                    )
            scored = [candidate for candidate in scored if candidate is not None]  # ties: its own first
            if scored:
                best_of[variant] = min(scored, key=search.rank)
        survivors = sorted(best_of, key=lambda v: search.rank(best_of[v]))
    bar.close()
    pick = best_of[survivors[0]] if survivors else None
    if budget is not None and (pick is None or not pick.keeps_budget or pick.flops_reduction <= 0):
        raise ValueError(_unkept(budget, search.candidates, len(images)))
    if pick is None:
        raise ValueError("no method can reach that FLOPs reduction on this model; choose a smaller target")
    seconds = round(time.perf_counter() - start, 1)
    schedule = Schedule(
        model=model_name,
        architecture=architecture_of(search.config),
        method=pick.method,
        options=build_method(pick.method, **pick.options).describe(),
        removals={layer: count for layer, count in pick.removals.items() if count},
        flops_reduction_target=flops_reduction if flops_reduction is not None else pick.flops_reduction,
        flops_reduction_achieved=pick.flops_reduction,
        objective=pick.kl,
        calibration={
            "images": pick.images,
            "source": source,
            "schedule_from": pick.schedule_from,
            "agreement": pick.agreement,
            "seconds": seconds,
            "tuned": True,
        },
        command=command,
    )
    return TuneResult(schedule, pick, search.candidates, seconds, search.computed)


def _unkept(budget: Budget, candidates: list[Candidate], images: int) -> str:
    """Why an accuracy budget has no answer, with the reduction that came closest to keeping it."""
    tried = [c for c in candidates if c.flops_reduction > 0]
    closest = max(tried, key=lambda c: (c.images, c.agreement, -c.kl), default=None)
    near = (
        f"; the closest: {closest.variant} at {closest.flops_reduction:.1%} FLOPs reduction, "
        f"{closest.agreement:.1%} top-1 agreement, KL {closest.kl:.3g} on {closest.images} images"
        if closest is not None
        else ""
    )
    return f"no reduction keeps the accuracy budget {budget.to_dict()} on these {images} images{near}"
