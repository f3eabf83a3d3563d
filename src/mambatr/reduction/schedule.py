"""Where and how much to reduce: default layers per depth, token counts, and the FLOPs-target solver."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mambatr.flops import FlopsReport, count_flops
from mambatr.models.backbone import BackboneConfig
from mambatr.outputs import write_text_atomic
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.registry import build_method
from mambatr.reduction.schedule_schema import ScheduleError, checked_fields, read_json

TOLERANCE = 0.005  # achieved FLOPs reduction must land within 0.5 points of the target
MAX_FLOPS_REDUCTION = 0.9  # FLOPs targets lie in (0, MAX_FLOPS_REDUCTION)
# Our default: reduce after four evenly spaced blocks, HSA's ViM-S schedule (after blocks 5, 10, 15, 20
# of 24) scaled to the model's depth. The MTR paper only says reduction "can be performed at any layer".
DEFAULT_FRACTIONS = (5 / 24, 10 / 24, 15 / 24, 20 / 24)


def default_layers(depth: int) -> list[int]:
    """0-indexed blocks after which reduction runs (ViM-S, depth 24: 4, 9, 14, 19)."""
    layers = sorted({max(0, int(depth * f + 0.5) - 1) for f in DEFAULT_FRACTIONS})
    return [layer for layer in layers if layer < depth - 1]


def check_layers(layers: Sequence[int], depth: int) -> list[int]:
    layers = sorted(set(layers))
    if not layers:
        raise ValueError("no reduction layers given")
    bad = [layer for layer in layers if not 0 <= layer < depth - 1]
    if bad:
        raise ValueError(
            f"reduction layers {bad} out of range: a depth-{depth} model reduces after blocks "
            f"0..{depth - 2} (a reduction after the last block would save nothing)"
        )
    return layers


def removals_for(
    config: BackboneConfig, method: ReductionMethod, layers: Sequence[int], amount: float
) -> dict[int, int]:
    """Tokens removed after each layer when the method's knob is ``amount``."""
    tokens, removals = config.seq_len, {}
    for layer in layers:
        count = min(
            method.removal(amount, tokens, config.has_cls), method.max_removal(tokens, config.has_cls)
        )
        removals[layer] = max(count, 0)
        tokens -= removals[layer]
    return removals


def reduced_flops(config: BackboneConfig, method: ReductionMethod, removals: dict[int, int]) -> FlopsReport:
    """Analytic FLOPs with the method's own overhead counted at every reducing layer."""
    tokens, per_layer, overhead = config.seq_len, [], {}
    for block in range(config.depth):
        per_layer.append(tokens)
        count = removals.get(block, 0)
        if count:
            if count > method.max_removal(tokens, config.has_cls):
                raise ValueError(
                    f"{method.name}: cannot remove {count} of {tokens} tokens after block {block}"
                )
            overhead[block] = method.overhead(config, tokens, count)
            tokens -= count
    return count_flops(config, per_layer, overhead=overhead)


def achieved_reduction(config: BackboneConfig, method: ReductionMethod, removals: dict[int, int]) -> float:
    return 1.0 - reduced_flops(config, method, removals).total / count_flops(config).total


def solve(
    config: BackboneConfig, method: ReductionMethod, layers: Sequence[int], target: float
) -> dict[int, int]:
    """Per-layer removals whose FLOPs reduction is within 0.5 points of ``target``.

    Bisection over the method's amount (fixed across layers, as the MTR paper does) brackets the
    target between two adjacent amounts; token counts are integers, so the solver then tries the
    higher amount on the latest layers only, and nudges the last layer's count (its tokens are the
    cheapest), keeping the schedule closest to the target.
    """
    if not 0.0 < target < MAX_FLOPS_REDUCTION:
        raise ValueError(f"flops_reduction must be in (0, {MAX_FLOPS_REDUCTION}), got {target}")
    low, high = 0.0, method.max_amount
    for _ in range(40):
        middle = (low + high) / 2
        if achieved_reduction(config, method, removals_for(config, method, layers, middle)) < target:
            low = middle
        else:
            high = middle
    low_counts, high_counts = (removals_for(config, method, layers, amount) for amount in (low, high))
    candidates = []
    for split in range(len(layers) + 1):  # the later layers take the higher amount first
        mixed = {layer: (low_counts if i < split else high_counts)[layer] for i, layer in enumerate(layers)}
        candidates.append(mixed)
        tokens_at_last = config.seq_len - sum(count for layer, count in mixed.items() if layer < layers[-1])
        for count in range(method.max_removal(tokens_at_last, config.has_cls) + 1):
            candidates.append({**mixed, layers[-1]: count})
    best = min(candidates, key=lambda counts: abs(achieved_reduction(config, method, counts) - target))
    achieved = achieved_reduction(config, method, best)
    if abs(achieved - target) > TOLERANCE:
        raise ValueError(
            f"{method.name}: cannot reach {target:.1%} FLOPs reduction at layers {list(layers)} "
            f"(closest: {achieved:.1%}); choose other layers or a smaller target"
        )
    return best


SCHEDULE_FORMAT = "mambatr-schedule/1"
# Schedules that ship with the package (found by `mambatr calibrate`, commands inside): the demo's
SHIPPED_SCHEDULES = Path(__file__).resolve().parents[1] / "schedules"


@dataclass
class Schedule:
    """A reduction schedule as data: which method, and how many tokens it removes after which block.

    Read from a file, every field is checked (``mambatr.reduction.schedule_schema``) and the counts
    against each layer's limits; ``check_fits`` refuses it for another architecture, or, given the
    model's name, for another model: a schedule is tuned to one model's weights.
    """

    model: str
    architecture: dict  # depth, seq_len, embed_dim, has_cls: a schedule fits only this architecture
    method: str
    options: dict
    removals: dict[int, int]  # block index -> tokens removed after it
    flops_reduction_target: float
    flops_reduction_achieved: float
    objective: float  # mean KL(dense || reduced) on the calibration images
    calibration: dict = field(default_factory=dict)  # images, source, step, evaluations, seconds
    command: str = ""
    format: str = SCHEDULE_FORMAT
    file: str | None = field(default=None, compare=False)  # where it was read from, for errors; not saved

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["file"]
        data["removals"] = {str(layer): count for layer, count in sorted(self.removals.items())}
        return data

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically (a temporary file renamed), so a crash never leaves half a file."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a schedule file, every field checked: ``ScheduleError`` (a ValueError) naming the file
        and the first bad field."""
        path = Path(path)
        return cls.from_dict(read_json(path), str(path))

    @classmethod
    def from_dict(cls, data: object, where: str) -> Schedule:
        """A schedule from its JSON data (a file's, or a recipe's part), every field checked; errors
        name ``where``."""
        if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
            raise ScheduleError(f"{where} is not a mambatr schedule (format {SCHEDULE_FORMAT!r} expected)")
        schedule = cls(**checked_fields(data, where), file=where)
        if not 0.0 < schedule.flops_reduction_target < MAX_FLOPS_REDUCTION:
            raise ScheduleError(
                f"{where}: flops_reduction_target: expected a FLOPs target in (0, {MAX_FLOPS_REDUCTION})"
            )
        schedule.check_counts()
        return schedule

    @property
    def _where(self) -> str:
        """How errors name the schedule: its file, when it was read from one."""
        return self.file or "schedule"

    @property
    def _prefix(self) -> str:
        return f"{self.file}: " if self.file else ""

    def check_counts(self) -> None:
        """Each count within its layer's limits (the method's most at the tokens left there), each
        layer a block of the schedule's architecture that is not the last."""
        depth, tokens = self.architecture["depth"], self.architecture["seq_len"]
        has_cls = self.architecture["has_cls"]
        try:
            method = build_method(self.method, **self.options)
        except ValueError as error:
            raise ScheduleError(f"{self._where}: options: {error}") from None
        for layer, count in sorted(self.removals.items()):
            field_name = f"removals['{layer}']"
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ScheduleError(f"{self._where}: {field_name}: expected an integer >= 0, got {count!r}")
            if not 0 <= layer < depth - 1:
                raise ScheduleError(
                    f"{self._where}: {field_name}: block {layer} out of range; a depth-{depth} model "
                    f"reduces after blocks 0..{depth - 2}"
                )
            most = method.max_removal(tokens, has_cls)
            if count > most:
                raise ScheduleError(
                    f"{self._where}: {field_name}: {self.method} cannot remove {count} of the {tokens} "
                    f"tokens left after block {layer} (at most {most})"
                )
            tokens -= count

    def check_fits(self, config: BackboneConfig, model_name: str | None = None) -> None:
        """Refuse a schedule made for another architecture (depth, tokens, width, class token), with
        counts outside their layers' limits, or, when ``model_name`` is given, made for another model
        (of the same architecture, e.g. other weights: its counts were tuned to that model)."""
        here = architecture_of(config)
        if here != self.architecture:
            made_for = f"{self.model} {self.architecture}"
            name = f"{model_name} " if model_name else ""
            raise ScheduleError(
                f"{self._prefix}schedule was made for {made_for}, not for this model ({name}{here})"
            )
        if model_name is not None and model_name != self.model:
            raise ScheduleError(
                f"{self._prefix}schedule was made for {self.model}, not for {model_name}: a schedule is "
                f"tuned to one model's weights; calibrate one for {model_name} (mambatr calibrate)"
            )
        self.check_counts()


def architecture_of(config: BackboneConfig) -> dict:
    return {
        "depth": config.depth,
        "seq_len": config.seq_len,
        "embed_dim": config.embed_dim,
        "has_cls": config.has_cls,
    }
