"""ToMe / R-MeeTo bipartite merging between Mamba blocks.

The reducible tokens (all but the class token, in sequence order) alternate into A (even index) and
B (odd index); each A token finds its most similar B token (cosine similarity of the hidden state);
the ``count`` best-matched A tokens merge into their match (size-weighted mean, in hidden and
residual); survivors stay in original order, a merged group at its B token's position.

Options:
- ``weights``: "size" ToMe's size-weighted mean (default) | "mean" plain mean of the group.
- ``metric``: "hidden" cosine similarity of the hidden state (default) | "clipped" of max(0, hidden).
- ``preset``: "none" the library's default layers (default) | "rmeeto" R-MeeTo's layers
  (``rmeeto_layers``).

R-MeeTo merges before the mixer of 0-indexed blocks 2, 4, ..., 22 (depth 24). Merging is linear and
both streams merge with the same weights, so merging hidden and residual after block i equals merging
their sum before block i + 1's norm: in our "reduce after block i" convention R-MeeTo's layers are
blocks 1, 3, ..., 21. R-MeeTo's fixed r per layer (11 for Vim-S) becomes our ratio of the current
token count, solved from the FLOPs target; R-MeeTo reinserts the class token at pos * (t - r) // t,
ours keeps it at its ordered position.
"""

from __future__ import annotations

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.bipartite import alternate_max_removal, alternate_plan, matching_macs, merge_macs
from mambatr.tokens import TokenState


def rmeeto_layers(depth: int) -> list[int]:
    """R-MeeTo's layers in our convention: after blocks 1, 3, 5, ... below the last (24: 1, 3, ..., 21)."""
    return list(range(1, depth - 1, 2))


class ToMe(ReductionMethod):
    name = "tome"
    options = {
        "weights": ("size", ("size", "mean")),
        "metric": ("hidden", ("hidden", "clipped")),
        "preset": ("none", ("none", "rmeeto")),
    }
    searchable = {"metric": ("hidden", "clipped")}

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        return alternate_max_removal(tokens, has_cls)

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        n = tokens - int(config.has_cls)
        clip = n * config.embed_dim if self.metric == "clipped" else 0
        matching = matching_macs((n + 1) // 2, n // 2, config.embed_dim)
        return clip + matching + merge_macs(count, config.embed_dim)

    def preferred_layers(self, depth: int) -> list[int] | None:
        return rmeeto_layers(depth) if self.preset == "rmeeto" else None

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        metric = state.hidden.clamp(min=0) if self.metric == "clipped" else state.hidden
        return alternate_plan(state, metric, count, self.weights).apply(state)
