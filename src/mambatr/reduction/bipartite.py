"""Bipartite soft matching (ToMe), shared by ToMe, PuMer and UTR.

Every token of set A finds its most similar token of set B (cosine similarity of a feature); the
``count`` A tokens with the best matches merge into their match, the other A tokens stay. The
methods differ only in how they split the tokens into A and B and in the feature they compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mambatr.reduction.plan import MergeWeights, ReductionPlan, make_plan
from mambatr.tokens import TokenState, gather_tokens


@dataclass
class Matching:
    """Token indices (B, ·): ``sources`` merge into ``into`` (same shape); ``unmatched`` A tokens stay."""

    sources: torch.Tensor
    into: torch.Tensor
    unmatched: torch.Tensor


def reducible_indices(state: TokenState) -> torch.Tensor:
    """(B, N) indices of every token but the class token, in sequence order."""
    if state.cls_position is None:
        return torch.arange(state.length, device=state.positions.device).expand_as(state.positions)
    # a stable sort puts the reducible tokens first, in order: a static shape (no boolean indexing),
    # so compiled and exported models see no data-dependent size
    order = state.positions.eq(state.cls_position).to(torch.int8).argsort(dim=1, stable=True)
    return order[:, : state.length - 1]


def class_indices(state: TokenState) -> torch.Tensor:
    """(B, 1) the class token's current index, or (B, 0) without one (to prepend to survivors)."""
    cls = state.cls_index()
    return state.positions[:, :0] if cls is None else cls[:, None]


def match(metric: torch.Tensor, a: torch.Tensor, b: torch.Tensor, count: int) -> Matching:
    """The ``count`` A tokens (indices ``a``, (B, |A|)) with the most similar B match, and that match."""
    features = F.normalize(metric.float(), dim=-1)  # a zero vector (e.g. clipped away) has similarity 0
    similarity = gather_tokens(features, a) @ gather_tokens(features, b).transpose(1, 2)
    best, partner = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    chosen = order[:, :count]
    return Matching(
        sources=torch.gather(a, 1, chosen),
        into=torch.gather(b, 1, torch.gather(partner, 1, chosen)),
        unmatched=torch.gather(a, 1, order[:, count:]),
    )


def alternate_max_removal(tokens: int, has_cls: bool) -> int:
    """|A| of the alternating split (all of A may merge), 0 when B would be empty."""
    n = tokens - int(has_cls)
    return (n + 1) // 2 if n >= 2 else 0


def alternate_plan(
    state: TokenState, metric: torch.Tensor, count: int, weights: MergeWeights
) -> ReductionPlan:
    """ToMe's plan: reducible tokens alternate into A (even index) and B (odd; class token excluded)."""
    reducible = reducible_indices(state)
    a, b = reducible[:, 0::2], reducible[:, 1::2]
    matching = match(metric, a, b, count)
    survivors = torch.cat((class_indices(state), b, matching.unmatched), dim=1)
    return make_plan(state, survivors, matching.sources, matching.into, weights)


def matching_macs(size_a: int, size_b: int, dim: int) -> int:
    """Normalising both sets, the A x B similarity matrix, its row-wise max and ranking A by it."""
    normalise = 2 * (size_a + size_b) * dim
    similarity = size_a * size_b * dim
    best = size_a * size_b
    rank = size_a * max(1, math.ceil(math.log2(max(size_a, 2))))
    return normalise + similarity + best + rank


def merge_macs(count: int, dim: int, streams: int = 2) -> int:
    """Weighting and adding ``count`` merged tokens into their destinations, per stream."""
    return 2 * streams * count * dim
