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

import torch

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.plan import make_plan
from mambatr.reduction.ranking import class_similarity, class_similarity_macs, prune_lowest, rank_macs, ranked
from mambatr.tokens import TokenState, gather_tokens

FUSE_EPS = 1e-6


class EViT(ReductionMethod):
    name = "evit"
    options = {
        "fuse": (False, bool),
        "indicator": ("cls", ("cls", "clip")),
    }
    searchable = {"fuse": (False, True)}

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

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        score = self.scores(state, internals)
        order = ranked(state, score)
        if not self.fuse:
            return prune_lowest(state, order, count)
        keep, fused = order[:, : state.length - count - 1], order[:, state.length - count - 1 :]
        head, rest = fused[:, :1], fused[:, 1:]  # the most important fused token gives the position
        plan = make_plan(state, torch.cat((keep, head), dim=1), rest, head.expand_as(rest), weights="size")
        weights = (gather_tokens(score, fused).clamp(min=0) + FUSE_EPS).to(state.sizes.dtype)
        weights = torch.ones_like(state.sizes).scatter(1, fused, weights)  # kept tokens: weight 1, untouched
        out = plan.apply(state)  # positions, sizes and sources of the fused token
        return out.with_streams(plan.reduce(state.hidden, weights), plan.reduce(state.residual, weights))
