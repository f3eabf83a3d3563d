"""Ranking tokens by an importance score, shared by the methods: the class-similarity score (EViT,
PuMer), the order with the class token first, pruning the lowest-ranked tokens, and their MAC counts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mambatr.reduction.plan import make_plan
from mambatr.tokens import TokenState, gather_tokens


def class_similarity(state: TokenState) -> torch.Tensor:
    """(B, L) cosine similarity of each hidden state to the class token's (the mean token without one)."""
    hidden = state.hidden.float()
    cls = state.cls_index()
    reference = hidden.mean(dim=1, keepdim=True) if cls is None else gather_tokens(hidden, cls[:, None])
    return F.cosine_similarity(hidden, reference, dim=-1)


def class_similarity_macs(tokens: int, dim: int) -> int:
    """Norms of every token and the reference, one dot product per token (or the mean token's sum)."""
    return 3 * tokens * dim


def rank_macs(tokens: int) -> int:
    """Sorting ``tokens`` scores: L * ceil(log2 L), at least L."""
    return tokens * max(1, math.ceil(math.log2(max(tokens, 2))))


def ranked(state: TokenState, score: torch.Tensor) -> torch.Tensor:
    """(B, L) token indices by descending ``score``, the class token first (it is never removed).

    Stable: a tie keeps the earlier token, as ONNX's ``TopK`` does, so an exported model ranks exactly
    as eager does (an unstable sort breaks ties differently per runtime and thread count)."""
    score = score.masked_fill(~state.reducible_mask(), float("inf"))
    return score.argsort(dim=1, descending=True, stable=True)


def prune_lowest(state: TokenState, order: torch.Tensor, count: int) -> TokenState:
    """The state without the last ``count`` tokens of ``order`` (B, L), from hidden and residual alike."""
    keep, pruned = order[:, : state.length - count], order[:, state.length - count :]
    return make_plan(state, keep, pruned).apply(state)
