"""PuMer, vision-only adaptation: bipartite merging on clipped features, optionally after pruning.

Default (as ToR_SSM's ``pom.py``): ToMe bipartite merging (alternating A / B split, class token
excluded), cosine similarity of max(0, hidden), size-weighted mean in hidden and residual, no pruning.

Options:
- ``weights``: "size" size-weighted mean (default) | "mean" plain mean of the group.
- ``prune_first``: False (default) | True, closer to the original PuMer: first prune the
  floor(prune_share * count) tokens least similar to the class token (EViT's importance; the mean
  token without a class token) from hidden and residual, then bipartite-merge the remaining
  ``count - pruned`` tokens among the survivors.
- ``prune_share``: the share of ``count`` pruned when ``prune_first`` (default 0.5: half / half).
"""

from __future__ import annotations

import math

import torch

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.bipartite import alternate_max_removal, alternate_plan, matching_macs, merge_macs
from mambatr.reduction.ranking import class_similarity, class_similarity_macs, prune_lowest, rank_macs, ranked
from mambatr.tokens import TokenState


class PuMer(ReductionMethod):
    name = "pumer"
    options = {
        "weights": ("size", ("size", "mean")),
        "prune_first": (False, bool),
        "prune_share": (0.5, float),
    }
    searchable = {"prune_first": (False, True)}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if not 0.0 <= self.prune_share <= 1.0:
            raise ValueError(f"pumer: prune_share must be in [0, 1], got {self.prune_share}")

    def split(self, count: int) -> tuple[int, int]:
        """(pruned, merged) for ``count`` removed tokens."""
        pruned = math.floor(self.prune_share * count) if self.prune_first else 0
        return pruned, count - pruned

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        if not self.prune_first:
            return alternate_max_removal(tokens, has_cls)
        for count in range(tokens - int(has_cls), 0, -1):
            pruned, merged = self.split(count)
            if merged <= alternate_max_removal(tokens - pruned, has_cls) and pruned < tokens - int(has_cls):
                return count
        return 0

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        pruned, merged = self.split(count)
        prune = class_similarity_macs(tokens, config.embed_dim) + rank_macs(tokens) if pruned else 0
        n = tokens - pruned - int(config.has_cls)
        clip = n * config.embed_dim
        matching = matching_macs((n + 1) // 2, n // 2, config.embed_dim)
        return prune + clip + matching + merge_macs(merged, config.embed_dim)

    def scores(self, state: TokenState, internals: BlockInternals) -> torch.Tensor | None:
        return class_similarity(state) if self.prune_first else None

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        pruned, merged = self.split(count)
        if pruned:
            state = prune_lowest(state, ranked(state, class_similarity(state)), pruned)
        return alternate_plan(state, state.hidden.clamp(min=0), merged, self.weights).apply(state)
