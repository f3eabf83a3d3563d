"""A recipe: what ``mambatr tune`` chose (method, options, schedule) and the record of how.

The chosen reduction is an ordinary ``Schedule`` inside the recipe, so everything that takes a schedule
takes a recipe's (``mambatr.apply(model, recipe=...)``, ``eval / bench / viz / export --recipe FILE``);
beside it the goal (a FLOPs target or an accuracy budget), every candidate scored on the way with its
KL, agreement and FLOPs, the search's cost and its command. A recipe fits one model: another
architecture is refused as a schedule is, and another model's name by the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mambatr.outputs import write_text_atomic
from mambatr.reduction.schedule import Schedule
from mambatr.reduction.schedule_schema import ScheduleError, read_json

RECIPE_FORMAT = "mambatr-recipe/1"


@dataclass
class Recipe:
    schedule: Schedule  # the pick: method, options, counts, FLOPs, KL on the calibration images
    goal: dict  # {"flops_reduction": 0.3} or the accuracy budget, {"min_agreement": 0.99}
    candidates: list[dict] = field(default_factory=list)  # every (variant, schedule) scored
    search: dict = field(default_factory=dict)  # images, source, methods, seconds
    command: str = ""
    format: str = RECIPE_FORMAT

    @property
    def model(self) -> str:
        return self.schedule.model

    @property
    def method(self) -> str:
        return self.schedule.method

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "model": self.schedule.model,
            "goal": self.goal,
            "schedule": self.schedule.to_dict(),
            "search": self.search,
            "candidates": self.candidates,
            "command": self.command,
        }

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe file; its schedule is checked field by field as a schedule file is."""
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
            raise ScheduleError(f"{path} is not a mambatr recipe (format {RECIPE_FORMAT!r} expected)")
        for key, kind in (("goal", dict), ("candidates", list), ("search", dict), ("command", str)):
            if not isinstance(data.get(key, kind()), kind):
                raise ScheduleError(f"{path}: {key}: expected {kind.__name__}, got {data[key]!r}")
        return cls(
            schedule=Schedule.from_dict(data.get("schedule"), f"{path}: schedule"),
            goal=data.get("goal", {}),
            candidates=data.get("candidates", []),
            search=data.get("search", {}),
            command=data.get("command", ""),
        )
