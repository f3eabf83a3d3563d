"""HSA: prune by clipped SSM-output importance, with pruning-aware hidden-state alignment.

1. importance = sum over channels of max(0, y), y the gated SSM output of every scan direction (in
   original token order; Vim: both, PlainMamba: all four), before out_proj; options:
   ``source="backward"`` (the public code's branch), ``gated=False`` (y before the SiLU(z) gate),
   ``clip=False`` (the paper's Table 3 ablation);
2. keep the top tokens (class token always) in original order; prune the rest from hidden and residual;
3. alignment (``align=True``): every later scan, in its own order with gap counts from the backbone,
   lets the state decay over each pruned gap, using the previous kept token's delta:
   exp((delta_t + g * delta_prev) * A), with zero input over the gap.
   ``align=False`` is plain pruning (the paper's Table 4).

``preset``: "none" the library's default layers | "paper" / "paper_tiny" / "code" the papers' and the
public code's layers (``PRESETS``) scaled to the model's depth (``preset_layers``).
"""

from __future__ import annotations

import torch

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.ranking import prune_lowest, rank_macs, ranked
from mambatr.tokens import TokenState

# 0-indexed blocks after which HSA prunes, as fractions of depth 24 (ViM-S):
PRESETS = {
    "paper": (5, 10, 15, 20),  # the paper's text for ViM-S (ViM-T: 10 and 20 -> preset "paper_tiny")
    "paper_tiny": (10, 20),
    "code": (5, 10, 15),  # the public code (ViM-S), keep ratio 0.8 per stage: ratio=0.2
}


def preset_layers(preset: str, depth: int) -> list[int]:
    """A preset's "after layer k" (1-indexed, depth 24) scaled to ``depth``, as 0-indexed blocks."""
    if preset not in PRESETS:
        raise ValueError(f"unknown HSA preset {preset!r}; available: {sorted(PRESETS)}")
    return sorted({max(0, round(k * depth / 24) - 1) for k in PRESETS[preset]})


class HSA(ReductionMethod):
    name = "hsa"
    options = {
        "align": (True, bool),
        "clip": (True, bool),
        "source": ("both", ("both", "backward")),
        "gated": (True, bool),
        "preset": ("none", ("none", *PRESETS)),
    }
    searchable = {"align": (True, False)}

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        return tokens - int(has_cls) - 1

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        directions = 1 if self.source == "backward" else config.num_directions
        score = 2 * directions * tokens * config.d_inner  # clip + channel sum, per direction
        return score + rank_macs(tokens)

    def scores(self, state: TokenState, internals: BlockInternals) -> torch.Tensor:
        branches = (internals.backward,) if self.source == "backward" else internals.branches
        total = 0
        for branch in branches:
            y = (branch.y if self.gated else branch.y_ungated).float()
            total = total + (y.clamp(min=0) if self.clip else y).sum(-1)
        return total

    def preferred_layers(self, depth: int) -> list[int] | None:
        return None if self.preset == "none" else preset_layers(self.preset, depth)

    @property
    def aligns_scan(self) -> bool:
        return self.align

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        return prune_lowest(state, ranked(state, self.scores(state, internals)), count)
