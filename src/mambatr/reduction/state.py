"""The token state that flows between blocks, and the one shared way to shrink it: a ReductionPlan.

A method looks at the block that just ran and returns a plan: which tokens survive (in original
order), and, for every removed token, the survivor it merges into (or none: pruned). Applying the
plan to hidden, residual, positions and sizes alike keeps them consistent (as ToMe's merge closures).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

MergeWeights = Literal["mean", "size"]


@dataclass
class TokenState:
    """Per batch: streams and bookkeeping. Every image keeps the same token count (rectangular)."""

    hidden: torch.Tensor  # (B, L, D) output of the block that just ran
    residual: torch.Tensor  # (B, L, D) float32 residual stream entering that block's norm
    positions: torch.Tensor  # (B, L) long: index of each token in the original, unreduced sequence
    sizes: torch.Tensor  # (B, L) float: how many original tokens each token stands for
    cls_position: int | None  # the class token's original index (never reduced); None without one
    sources: torch.Tensor | None = None  # (B, L, L0) which original tokens each token holds (viz only)

    @classmethod
    def initial(
        cls, tokens: torch.Tensor, cls_position: int | None, track_sources: bool = False
    ) -> TokenState:
        batch, length = tokens.shape[:2]
        positions = torch.arange(length, device=tokens.device).expand(batch, length)
        sizes = torch.ones(batch, length, device=tokens.device, dtype=torch.float32)
        sources = None
        if track_sources:
            sources = torch.eye(length, device=tokens.device).expand(batch, length, length).contiguous()
        # no residual exists before the first block; blocks set it (with_streams) before any reduction
        return cls(tokens, tokens, positions, sizes, cls_position, sources)

    @property
    def length(self) -> int:
        return self.hidden.shape[1]

    def cls_index(self) -> torch.Tensor | None:
        """(B,) current index of the class token in each image's sequence."""
        if self.cls_position is None:
            return None
        return (self.positions == self.cls_position).float().argmax(dim=1)

    def reducible_mask(self) -> torch.Tensor:
        """(B, L) True for tokens a method may remove (all but the class token)."""
        if self.cls_position is None:
            return torch.ones_like(self.positions, dtype=torch.bool)
        return self.positions != self.cls_position

    def position_gaps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward, backward) (B, L) counts of removed positions right before each token in scan order.

        Forward: between the previous survivor and this one; backward: between this one and the next.
        The first token in each scan order gets 0: its incoming state is zero whatever precedes it.
        """
        missing = self.positions.diff(dim=1) - 1
        zero = torch.zeros_like(self.positions[:, :1])
        return torch.cat((zero, missing), dim=1), torch.cat((missing, zero), dim=1)

    def with_streams(self, hidden: torch.Tensor, residual: torch.Tensor) -> TokenState:
        return replace(self, hidden=hidden, residual=residual)


def expand_index(index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B, K) token index broadcast over x's trailing dims, for gather / scatter along dim 1."""
    return index.reshape(*index.shape, *([1] * (x.ndim - 2))).expand(*index.shape, *x.shape[2:])


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) at index (B, K) -> (B, K, ...)."""
    return torch.gather(x, 1, expand_index(index, x))


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
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
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
