"""EViT as the MTR paper adapts it to Mamba: keep the tokens most similar to the class token.

1. importance = cosine similarity of each token's hidden state to the class token's (Mamba has no
   attention to read); without a class token, to the mean token (the model then pools by the mean);
2. keep the top tokens (class token always) in original order; the rest leave hidden and residual.

Options:
- ``fuse``: False prunes the rest (ToR_SSM's ``pom.py``, default) | True (the original EViT) fuses the
  ``count + 1`` least important tokens into one token, so ``count`` tokens leave. Its value is their
  weighted mean (hidden and residual alike), the weights max(0, importance) + 1e-6, normalised (the
  similarity can be negative, attention could not). EViT appends it after the last kept token; our
  tokens keep their original order, so it sits at the position of the most important fused token.
- ``indicator``: "cls" the class-token similarity above (default) | "clip" ToR_SSM's ``pom.py`` score,
  the channel sum of max(0, hidden).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.state import TokenState, gather_tokens, make_plan

FUSE_EPS = 1e-6


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
    return tokens * max(1, math.ceil(math.log2(max(tokens, 2))))


class EViT(ReductionMethod):
    name = "evit"
    options = {
        "fuse": (False, bool),
        "indicator": ("cls", ("cls", "clip")),
    }

    def removal(self, amount: float, tokens: int, has_cls: bool) -> int:
        return math.floor(amount * (tokens - int(has_cls)))

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        n = tokens - int(has_cls)
        return max(0, n - 2 if self.fuse else n - 1)  # one kept token at least (and the fused one)

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        dim = config.embed_dim
        score = class_similarity_macs(tokens, dim) if self.indicator == "cls" else 2 * tokens * dim
        fuse = 2 * 2 * (count + 1) * dim + 2 * (count + 1) if self.fuse and count else 0  # weights, sums
        return score + rank_macs(tokens) + fuse

    def scores(self, state: TokenState, internals: BlockInternals) -> torch.Tensor:
        if self.indicator == "clip":
            return state.hidden.float().clamp(min=0).sum(-1)
        return class_similarity(state)

    def reduce(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        if count > self.max_removal(state.length, state.cls_position is not None):
            raise ValueError(f"evit: cannot remove {count} of {state.length} tokens")
        if count == 0:
            return state
        score = self.scores(state, internals)
        score = score.masked_fill(~state.reducible_mask(), float("inf"))  # the class token ranks first
        order = score.argsort(dim=1, descending=True, stable=True)
        if not self.fuse:
            keep, pruned = order[:, : state.length - count], order[:, state.length - count :]
            return make_plan(state, keep, pruned).apply(state)
        keep, fused = order[:, : state.length - count - 1], order[:, state.length - count - 1 :]
        head, rest = fused[:, :1], fused[:, 1:]  # the most important fused token gives the position
        plan = make_plan(state, torch.cat((keep, head), dim=1), rest, head.expand_as(rest), weights="size")
        weights = (gather_tokens(score, fused).clamp(min=0) + FUSE_EPS).to(state.sizes.dtype)
        weights = torch.ones_like(state.sizes).scatter(1, fused, weights)  # kept tokens: weight 1, untouched
        out = plan.apply(state)  # positions, sizes and sources of the fused token
        return out.with_streams(plan.reduce(state.hidden, weights), plan.reduce(state.residual, weights))
