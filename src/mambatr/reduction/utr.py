"""UTR (ToR_SSM): importance-split bipartite reduction, per-channel hybrid hidden state, merged residual.

From the public code (wuyushuwys/ToR_SSM ``src/pom/modules/tome.py``, defaults of ``mamba_eval.py``:
hidden "hybrid", residual "merge_only"), cleaned up as the design notes restate it:
1. importance = channel sum of max(0, block output) (``hidden``, after out_proj);
2. the reducible tokens (class token excluded) split into the less important floor(N/2) (A) and the
   more important rest (B); each A token finds its most similar B token (cosine similarity); the
   ``count`` best-matched A tokens are reduced into their match (at the B token's position);
3. residual: each group becomes its mean; hidden, per channel ("hybrid", the code's per-channel
   top-k): in channel c only the floor(count / 2) reduced tokens with the largest value in c join
   their destination's mean, so each reduced token shares about half of its channels;
4. survivors in original order; the class token is never reduced.

Options:
- ``weights``: "mean" plain mean (default; the code tracks no sizes) | "size" size-weighted mean.
- ``metric``: "hidden" cosine similarity of the hidden state (default) | "clipped" of max(0, hidden)
  (what the public code compares).
- ``rest``: in the channels a reduced token does not share, "keep" leaves it out of the mean (the
  destination keeps its value there; default) | "zero" counts it as zero (the code's literal
  ``src * mask`` before the mean, which shrinks the destination).
"""

from __future__ import annotations

import torch

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.bipartite import class_indices, match, matching_macs, merge_macs, reducible_indices
from mambatr.reduction.plan import ReductionPlan, make_plan
from mambatr.reduction.ranking import rank_macs
from mambatr.tokens import TokenState, accumulate_dtype, gather_tokens


def hybrid_reduce(plan: ReductionPlan, x: torch.Tensor, sizes: torch.Tensor, rest: str) -> torch.Tensor:
    """The plan applied to x (B, L, D) channel by channel: in each channel the top half of the removed
    tokens (by value) join their destination's mean; the others are left out ("keep") or count as 0."""
    kept = gather_tokens(x, plan.survivors)
    count = plan.removed.shape[1]
    if plan.into is None or count == 0:
        return kept
    acc = accumulate_dtype(x.dtype)
    removed = gather_tokens(x, plan.removed).to(acc)
    shared = torch.zeros_like(removed).scatter_(1, removed.topk(count // 2, dim=1).indices, 1.0)
    if plan.weights == "size":
        w_kept, w_removed = gather_tokens(sizes, plan.survivors), gather_tokens(sizes, plan.removed)
    else:
        w_kept = torch.ones(kept.shape[:2], device=x.device)
        w_removed = torch.ones(removed.shape[:2], device=x.device)
    w_kept, w_removed = w_kept.to(acc)[..., None], w_removed.to(acc)[..., None]
    index = plan.into[..., None].expand_as(removed)
    counted = w_removed * shared if rest == "keep" else w_removed.expand_as(removed)
    total = w_kept.expand(kept.shape).scatter_add(1, index, counted)
    summed = (kept.to(acc) * w_kept).scatter_add(1, index, removed * w_removed * shared)
    return (summed / total).to(x.dtype)


class UTR(ReductionMethod):
    name = "utr"
    options = {
        "weights": ("mean", ("mean", "size")),
        "metric": ("hidden", ("hidden", "clipped")),
        "rest": ("keep", ("keep", "zero")),
    }
    searchable = {"metric": ("hidden", "clipped")}

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        return (tokens - int(has_cls)) // 2  # the less important half

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        n, dim = tokens - int(config.has_cls), config.embed_dim
        score = 2 * tokens * dim  # clip + channel sum
        clip = n * dim if self.metric == "clipped" else 0
        matching = matching_macs(n // 2, n - n // 2, dim)
        top_k = dim * rank_macs(count)  # per-channel top-k of the reduced
        return score + rank_macs(tokens) + clip + matching + top_k + merge_macs(count, dim)

    def scores(self, state: TokenState, internals: BlockInternals) -> torch.Tensor:
        return internals.hidden.float().clamp(min=0).sum(-1)

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        reducible = reducible_indices(state)
        score = torch.gather(self.scores(state, internals), 1, reducible)
        ranked = torch.gather(reducible, 1, score.argsort(dim=1, stable=True))  # ascending importance
        half = reducible.shape[1] // 2
        metric = state.hidden.clamp(min=0) if self.metric == "clipped" else state.hidden
        matching = match(metric, ranked[:, :half], ranked[:, half:], count)
        survivors = torch.cat((class_indices(state), ranked[:, half:], matching.unmatched), dim=1)
        plan = make_plan(state, survivors, matching.sources, matching.into, self.weights)
        out = plan.apply(state)  # residual, positions, sizes, sources: plain merge
        return out.with_streams(hybrid_reduce(plan, state.hidden, state.sizes, self.rest), out.residual)
