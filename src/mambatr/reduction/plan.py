"""The one shared way to shrink a ``TokenState``: a ReductionPlan.

A method looks at the block that just ran and returns a plan: which tokens survive (in original
order), and, for every removed token, the survivor it merges into (or none: pruned). Applying the
plan to hidden, residual, positions and sizes alike keeps them consistent (as ToMe's merge closures).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from mambatr.tokens import TokenState, accumulate_dtype, expand_index, gather_tokens

MergeWeights = Literal["mean", "size"]


@dataclass
class ReductionPlan:
    """survivors (B, K) sorted by original position; removed (B, R); into (B, R) index in survivor
    space of the token each removed one merges into, or None when removed tokens are pruned."""

    survivors: torch.Tensor
    removed: torch.Tensor
    into: torch.Tensor | None = None
    weights: MergeWeights = "mean"

    def reduce(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Apply the plan to one stream x (B, L, D): survivors, each merged group replaced by its
        (size-weighted) mean. Computed in float32 at least; returned in x's dtype."""
        kept = gather_tokens(x, self.survivors)
        if self.into is None or self.removed.shape[1] == 0:
            return kept
        acc = accumulate_dtype(x.dtype)
        if self.weights == "size":
            w_kept, w_removed = gather_tokens(sizes, self.survivors), gather_tokens(sizes, self.removed)
        else:
            w_kept = torch.ones(self.survivors.shape, device=x.device)
            w_removed = torch.ones(self.removed.shape, device=x.device)
        w_kept, w_removed = w_kept.to(acc), w_removed.to(acc)
        total = w_kept.scatter_add(1, self.into, w_removed)
        summed = (kept.to(acc) * w_kept[..., None]).scatter_add(
            1, expand_index(self.into, x), gather_tokens(x, self.removed).to(acc) * w_removed[..., None]
        )
        return (summed / total[..., None]).to(x.dtype)

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Survivors of x (B, L, ...), each merged token's value added to its survivor (sizes, sources)."""
        kept = gather_tokens(x, self.survivors)
        if self.into is None:
            return kept
        return kept.scatter_add(1, expand_index(self.into, x), gather_tokens(x, self.removed))

    def apply(self, state: TokenState, hidden: bool = True, residual: bool = True) -> TokenState:
        """The reduced state; ``hidden=False`` / ``residual=False`` prune that stream instead of merging."""
        pruned = replace(self, into=None)
        return replace(
            state,
            hidden=(self if hidden else pruned).reduce(state.hidden, state.sizes),
            residual=(self if residual else pruned).reduce(state.residual, state.sizes),
            positions=gather_tokens(state.positions, self.survivors),
            sizes=self.reduce_sum(state.sizes),
            sources=None if state.sources is None else self.reduce_sum(state.sources),
            cls_at=None,  # survivors are chosen per image: read the class token's index from positions
        )


def make_plan(
    state: TokenState,
    survivors: torch.Tensor,
    removed: torch.Tensor,
    into_tokens: torch.Tensor | None = None,
    weights: MergeWeights = "mean",
) -> ReductionPlan:
    """A plan from token indices: survivors (B, K) in any order, removed (B, R), and for merging the
    token index (B, R) each removed token joins. Survivors are sorted back into sequence order."""
    survivors = torch.gather(survivors, 1, gather_tokens(state.positions, survivors).argsort(dim=1))
    into = None
    if into_tokens is not None:
        slot = torch.full_like(state.positions, -1)
        slot.scatter_(
            1, survivors, torch.arange(survivors.shape[1], device=survivors.device).expand_as(survivors)
        )
        into = torch.gather(slot, 1, into_tokens)
    return ReductionPlan(survivors, removed, into, weights)
