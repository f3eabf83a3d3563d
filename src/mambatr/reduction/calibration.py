"""Calibrated reduction schedules: where, and how many tokens, to reduce, chosen on unlabeled images.

Like a quantisation calibration step: for a method and a FLOPs target, a greedy search over
(layer, token count) keeps the reduced model's softmax closest to the dense model's on a few hundred
calibration images (mean KL(dense || reduced); no labels are read). Each round tries adding ``step``
tokens to the removal after every block and keeps the move that costs the least KL per point of
FLOPs saved, until the analytic FLOPs reduction (the method's overhead included) is within 0.5 points
of the target; a move that would overshoot is shortened to land inside. A full round evaluates one
move per block; between full rounds (every ``FULL_ROUND_EVERY``-th) only the ``LAZY_CANDIDATES``
blocks whose moves were cheapest last time are re-evaluated (a lazy greedy: a block's cost changes
slowly as the schedule grows), so a schedule costs about (depth + LAZY_CANDIDATES x rounds) forward
passes over the calibration images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mambatr.finite import check_finite_logits
from mambatr.models.backbone import BackboneConfig
from mambatr.reduction.api import Reduction, backbone_of
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.prefix_cache import DEFAULT_CACHE_BYTES, PrefixCache
from mambatr.reduction.registry import build_method
from mambatr.reduction.schedule import (
    MAX_FLOPS_REDUCTION,
    TOLERANCE,
    Schedule,
    achieved_reduction,
    architecture_of,
)


def mean_kl(dense_log_probs: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over images of KL(dense || reduced), from the dense log-probabilities and reduced logits."""
    reduced = F.log_softmax(logits.double(), dim=-1)
    return float((dense_log_probs.exp() * (dense_log_probs - reduced)).sum(-1).mean())


def agreement(dense_log_probs: torch.Tensor, logits: torch.Tensor) -> float:
    """Share of images whose top-1 class is the dense model's."""
    return float((logits.argmax(-1) == dense_log_probs.argmax(-1)).double().mean())


@dataclass(frozen=True)
class Budget:
    """An accuracy budget against the dense model on the calibration images (no labels): mean KL at
    most ``max_kl`` and / or top-1 agreement at least ``min_agreement``."""

    max_kl: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.max_kl is None and self.min_agreement is None:
            raise ValueError("an accuracy budget needs max_kl or min_agreement")
        if self.max_kl is not None and not (math.isfinite(self.max_kl) and self.max_kl > 0):
            raise ValueError(f"max_kl must be a positive number, got {self.max_kl}")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement}")

    def keeps(self, kl: float, agreement: float) -> bool:
        return (self.max_kl is None or kl <= self.max_kl) and (
            self.min_agreement is None or agreement >= self.min_agreement
        )

    def to_dict(self) -> dict[str, float]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@torch.inference_mode()
def batched_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(images[i : i + batch_size]).double() for i in range(0, len(images), batch_size)])


LAZY_CANDIDATES = 4
FULL_ROUND_EVERY = 4


class Store(Protocol):
    """Where a long search keeps its finished steps (``mambatr.runs.RunFolder`` is one)."""

    def done(self, key: str) -> object | None: ...

    def save(self, key: str, result: object) -> object: ...


@dataclass
class SearchState:
    """Where a greedy search stands after a round: enough to continue it exactly (a resumed calibration)."""

    removals: dict[int, int]
    objective: float
    evaluations: int
    rounds: int
    last_cost: dict[int, float]  # each layer's KL cost per FLOPs point when last evaluated (inf: no move)

    @classmethod
    def start(cls, depth: int) -> SearchState:
        return cls({}, 0.0, 0, 0, {layer: 0.0 for layer in range(depth - 1)})

    def to_dict(self) -> dict:
        return {
            "removals": {str(k): v for k, v in self.removals.items()},
            "objective": self.objective,
            "evaluations": self.evaluations,
            "rounds": self.rounds,
            "last_cost": {str(k): v for k, v in self.last_cost.items()},  # JSON writes inf as Infinity
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchState:
        return cls(
            {int(k): v for k, v in data["removals"].items()},
            data["objective"],
            data["evaluations"],
            data["rounds"],
            {int(k): float(v) for k, v in data["last_cost"].items()},
        )


def search(
    config: BackboneConfig,
    method: ReductionMethod,
    target: float,
    objective: Callable[[dict[int, int]], float],
    step: int,
    progress: bool = True,
    accept: Callable[[dict[int, int]], None] | None = None,
    keeps: Callable[[dict[int, int], float], bool] | None = None,
    state: SearchState | None = None,
    checkpoint: Callable[[SearchState], None] | None = None,
) -> tuple[dict[int, int], float, int]:
    """Greedy (layer, count) search; returns the removals, their objective and the evaluations spent.
    ``accept`` hears of each move kept (the prefix cache re-records from it). ``keeps(move, objective)``
    False ends the search before that move (an accuracy budget): the target is then a ceiling, and a
    search that can go no further returns what it has instead of failing. ``checkpoint`` gets the
    state after every round; a search started from a saved ``state`` continues as the saved one would."""
    if not 0.0 < target < MAX_FLOPS_REDUCTION:
        raise ValueError(f"flops_reduction must be in (0, {MAX_FLOPS_REDUCTION}), got {target}")
    if step < 1:
        raise ValueError(f"step must be >= 1 token, got {step}")
    state = state or SearchState.start(config.depth)
    removals, current, evaluations, rounds = state.removals, state.objective, state.evaluations, state.rounds
    last_cost = state.last_cost  # each layer's cost per FLOPs point at its last evaluation
    if removals and accept is not None:
        accept(removals)
    achieved = achieved_reduction(config, method, removals)
    bar = tqdm(
        total=round(100 * target, 1),
        desc="calibrating (FLOPs %)",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} [{elapsed}<{remaining}]",
        disable=not progress,
        leave=False,
    )
    bar.update(min(round(100 * achieved, 1), bar.total))  # a resumed search starts where it stood
    try:  # closed however the search ends: a left-over bar would garble an error's one line
        while achieved < target - TOLERANCE:
            layers = sorted(last_cost, key=last_cost.get)
            if rounds % FULL_ROUND_EVERY:
                layers = layers[:LAZY_CANDIDATES]
            best = _best_move(config, method, removals, layers, step, target, objective, achieved, current)
            if best is None and len(layers) < len(last_cost):  # the lazy candidates are exhausted: try all
                layers = sorted(last_cost, key=last_cost.get)
                best = _best_move(
                    config, method, removals, layers, step, target, objective, achieved, current
                )
            if best is None and keeps is not None:
                break
            if best is None:
                raise ValueError(
                    f"{method.name}: no schedule reaches {target:.1%} FLOPs reduction "
                    f"(stuck at {achieved:.1%}); choose a smaller target"
                )
            evaluations += len(best[0])
            if keeps is not None and not keeps(best[2], best[1]):
                break
            costs, current, removals = best
            if accept is not None:
                accept(removals)
            last_cost.update(costs)
            for layer in set(layers) - set(costs):  # no valid move there any more
                last_cost[layer] = float("inf")
            rounds += 1
            achieved = achieved_reduction(config, method, removals)
            if checkpoint is not None:
                checkpoint(SearchState(removals, current, evaluations, rounds, last_cost))
            # the bar shows the achieved reduction, at most the target: summed rounded gains drift, and a
            # count past the total makes tqdm drop the total that bar_format prints (a crash, not a bar)
            bar.update(min(round(100 * achieved, 1), bar.total) - bar.n)
    finally:
        bar.close()
    return removals, current, evaluations


def _best_move(
    config: BackboneConfig,
    method: ReductionMethod,
    removals: dict[int, int],
    layers: list[int],
    step: int,
    target: float,
    objective: Callable[[dict[int, int]], float],
    achieved: float,
    current: float,
) -> tuple[dict[int, float], float, dict[int, int]] | None:
    """Evaluate one move per layer; (each evaluated layer's KL cost per FLOPs point, the best move's KL,
    the best move) or None when no layer has a valid move. Ties go to the larger FLOPs gain."""
    costs: dict[int, float] = {}
    best: tuple[float, float, float, dict[int, int]] | None = None  # (cost, -gain, kl, trial)
    for layer in layers:
        trial = _feasible_move(config, method, removals, layer, step, target)
        if trial is None:
            continue
        gain = achieved_reduction(config, method, trial) - achieved
        if gain <= 0:
            continue
        kl = objective(trial)
        costs[layer] = (kl - current) / gain
        candidate = (costs[layer], -gain, kl, trial)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return None if best is None else (costs, best[2], best[3])


def _feasible_move(
    config: BackboneConfig,
    method: ReductionMethod,
    removals: dict[int, int],
    layer: int,
    step: int,
    target: float,
) -> dict[int, int] | None:
    """``removals`` with up to ``step`` more tokens removed after ``layer`` (later layers' counts cut
    to what the method can still remove there), shortened so the FLOPs reduction stays at most 0.5
    points above the target; None when no such move is valid."""
    for extra in range(step, 0, -1):
        trial = _within_limits(config, method, {**removals, layer: removals.get(layer, 0) + extra})
        if trial.get(layer, 0) <= removals.get(layer, 0):
            return None  # the method cannot remove more tokens after this layer
        if achieved_reduction(config, method, trial) <= target + TOLERANCE:
            return trial
    return None


def _within_limits(
    config: BackboneConfig, method: ReductionMethod, removals: dict[int, int]
) -> dict[int, int]:
    """Each layer's count cut to the most the method can remove from the tokens left there."""
    tokens, limited = config.seq_len, {}
    for layer in sorted(removals):
        limited[layer] = min(removals[layer], method.max_removal(tokens, config.has_cls))
        tokens -= limited[layer]
    return limited


def calibrate(
    model: nn.Module,
    method: str,
    flops_reduction: float,
    images: torch.Tensor,
    *,
    step: int | None = None,
    batch_size: int = 256,
    cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    budget: Budget | None = None,
    store: Store | None = None,
    model_name: str = "",
    source: str = "",
    command: str = "",
    progress: bool = True,
    **options: object,
) -> Schedule:
    """A schedule for ``method`` at ``flops_reduction`` that keeps ``model``'s outputs on ``images``
    closest to the dense model's. ``step``: tokens added per move (default about 4 % of the tokens).
    ``cache_bytes``: memory for the prefix cache (each trial runs only the blocks it changes; the same
    schedule as without it); None runs every trial through the whole model (the reference).
    ``budget``: stop before the first move that breaks it; ``flops_reduction`` is then a ceiling.
    ``store`` (``done`` / ``save``, e.g. a ``mambatr.runs.RunFolder``) keeps the search's state after
    every round: a killed calibration run again with the same store continues, to the same schedule.
    ``images`` only (no labels); the model is left as it was."""
    backbone = backbone_of(model)
    config = backbone.config
    if len(images) == 0:
        raise ValueError("calibration needs at least one image")
    reducer = build_method(method, **options)
    step = step if step is not None else max(1, round(0.04 * config.seq_len))
    start = time.perf_counter()
    model.eval()
    previous = backbone.reduction
    try:
        backbone.reduction = None
        if cache_bytes is None:
            dense_logits, accept = batched_logits(model, images, batch_size), None

            def trial_logits(removals: dict[int, int]) -> torch.Tensor:
                backbone.reduction = Reduction(reducer, {k: v for k, v in removals.items() if v})
                return batched_logits(model, images, batch_size)

        else:
            cache = PrefixCache(backbone, reducer, images, batch_size, cache_bytes)
            dense_logits, trial_logits, accept = cache.dense_logits, cache.logits, cache.accept
        check_finite_logits(dense_logits, 0)
        dense = F.log_softmax(dense_logits, dim=-1)
        agreements: dict[tuple, float] = {}  # top-1 agreement of every trial, for the budget

        def objective(removals: dict[int, int]) -> float:
            logits = trial_logits(removals)
            check_finite_logits(logits, 0)  # a NaN objective would steer the search silently
            agreements[tuple(sorted(removals.items()))] = agreement(dense, logits)
            return mean_kl(dense, logits)

        def keeps(move: dict[int, int], kl: float) -> bool:
            return budget.keeps(kl, agreements[tuple(sorted(move.items()))])

        saved = store.done("search") if store is not None else None
        removals, kl, evaluations = search(
            config,
            reducer,
            flops_reduction,
            objective,
            step,
            progress,
            accept,
            keeps if budget else None,
            state=SearchState.from_dict(saved) if saved is not None else None,
            checkpoint=(lambda state: store.save("search", state.to_dict())) if store is not None else None,
        )
        if removals and tuple(sorted(removals.items())) not in agreements:  # a resumed search's last move
            objective(removals)
        kept_agreement = agreements.get(tuple(sorted(removals.items())), 1.0)
    finally:
        backbone.reduction = previous
    return Schedule(
        model=model_name,
        architecture=architecture_of(config),
        method=method,
        options=reducer.describe(),
        removals={layer: count for layer, count in sorted(removals.items()) if count},
        flops_reduction_target=flops_reduction,
        flops_reduction_achieved=achieved_reduction(config, reducer, removals),
        objective=kl,
        calibration={
            "images": len(images),
            "source": source,
            "step": step,
            "evaluations": evaluations,
            "seconds": round(time.perf_counter() - start, 1),
            "agreement": kept_agreement,
            **({"budget": budget.to_dict()} if budget is not None else {}),
        },
        command=command,
    )
