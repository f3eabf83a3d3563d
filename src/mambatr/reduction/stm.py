"""STM: sequential token merging toward the class token, with hidden-state protection.

BNNM: the sequence is split at the class token; on each side the k outermost tokens are removed
and merged into the nearest surviving token toward the class token (recursively across layers).
HSP (``protect=True``): the merged token is x'_a = x_a + sum_j w_j x_j, the weights chosen so the
SSM state at the absorbing token a matches the unreduced recurrence (docs/stm.md derives them):

    w_j[e] = (delta_j[e] / delta_a[e]) * sum_n B_a[n] B_j[n] exp(A[e, n] * S_j[e]) / sum_n B_a[n]^2,

S_j the sum of the deltas from j (exclusive) to a (inclusive) in scan order; left side: forward
branch, right side: backward branch; delta and B from the block that just ran. w_j is averaged over
channels and clipped to [0, 1]. ``protect=False`` replaces each group by its plain mean (BNNM only).

STM does not shrink the state through a ``ReductionPlan``: its protected merge adds the weighted tokens
onto the absorber (x_a + sum_j w_j x_j), which a plan's (weighted) mean of the group cannot express.

Without a class token (PlainMamba) the split point is the middle of the current sequence, where Vim
puts its class token: tokens merge toward the centre, and the centre token is an ordinary token. On
PlainMamba the protection weights use the first two scans (row snake and its reverse), which follow
the token sequence within every other row only: there they are an approximation (docs/stm.md).
"""

from __future__ import annotations

import math

import torch

from mambatr.models.backbone import BackboneConfig, BlockInternals, BranchInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.tokens import TokenState, accumulate_dtype


def protection_weights(
    branch: BranchInternals, reduced: torch.Tensor, absorber: int, forward: bool
) -> torch.Tensor:
    """(B, k, E) per-channel weights of the reduced tokens (indices ``reduced``) into ``absorber``;
    ``forward``: the reduced tokens precede the absorber (the forward scan reaches it through them)."""
    acc = accumulate_dtype(branch.delta.dtype)
    delta, B, A = branch.delta.to(acc), branch.B.to(acc), branch.A.to(acc)
    # S_j: deltas strictly after j up to and including the absorber, in scan order
    cumulative = delta.cumsum(dim=1)  # (B, L, E)
    if forward:
        decay_sum = cumulative[:, absorber : absorber + 1] - cumulative[:, reduced]
    else:
        decay_sum = cumulative[:, reduced - 1] - (
            cumulative[:, absorber - 1 : absorber] if absorber > 0 else 0
        )
    b_abs, b_red = B[:, absorber], B[:, reduced]  # (B, N), (B, k, N)
    decay = torch.exp(decay_sum[..., None] * A)  # (B, k, E, N)
    projection = (decay * (b_abs[:, None, None, :] * b_red[:, :, None, :])).sum(-1)  # (B, k, E)
    norm = (b_abs**2).sum(-1).clamp(min=1e-12)[:, None, None]
    return delta[:, reduced] / delta[:, absorber : absorber + 1] * projection / norm


class STM(ReductionMethod):
    name = "stm"
    max_amount = 64.0  # the amount is k, the tokens merged per side per layer
    options = {"protect": (True, bool)}
    searchable = {"protect": (True, False)}

    def preferred_layers(self, depth: int) -> list[int] | None:
        return list(range(depth - 1))  # every layer: after block 0 there is a previous layer's delta / B

    def removal(self, amount: float, tokens: int, has_cls: bool) -> int:
        return 2 * math.floor(amount)

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        return max(0, tokens - 3)  # each side keeps one token to absorb, plus the class token

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        weights = count * config.d_inner * config.d_state * 4 if self.protect else 0  # exp, products, sums
        return weights + 2 * 2 * count * config.embed_dim  # weighted adds into hidden and residual

    def _merge(
        self,
        state: TokenState,
        branch: BranchInternals,
        reduced: list[int],
        absorber: int,
        streams: dict[str, torch.Tensor],
    ) -> None:
        index = torch.tensor(reduced, device=state.hidden.device)
        if self.protect:
            forward = reduced[0] < absorber
            weights = protection_weights(branch, index, absorber, forward).mean(-1).clamp(0.0, 1.0)  # (B, k)
            for x in streams.values():
                carried = (weights[..., None] * x[:, index].to(weights.dtype)).sum(1)
                x[:, absorber] = x[:, absorber] + carried.to(x.dtype)
        else:
            for x in streams.values():
                x[:, absorber] = (x[:, absorber] + x[:, index].sum(1)) / (len(reduced) + 1)

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        if state.cls_position is None:  # merge toward the middle; no token is protected
            left = state.length // 2
            right = state.length - left - 1
        else:  # position-based merging: the class token has the same index in every image
            left = state.cls_at if state.cls_at is not None else int(state.cls_index()[0])
            right = state.length - left - 1
        k_left = min(math.ceil(count / 2) if right > 1 else count, max(left - 1, 0))
        k_right = count - k_left
        if k_right > max(right - 1, 0):
            raise ValueError(
                f"stm: cannot merge {count} of {state.length} tokens ({left} left / {right} right "
                "of the class token, each side keeps one)"
            )
        streams = {"hidden": state.hidden.clone(), "residual": state.residual.clone()}
        totals = {"sizes": state.sizes.clone()}  # merged tokens add up their sizes (and sources)
        if state.sources is not None:
            totals["sources"] = state.sources.clone()
        if k_left:
            self._merge(state, internals.forward, list(range(k_left)), k_left, streams)
            for x in totals.values():
                x[:, k_left] += x[:, :k_left].sum(1)
        if k_right:
            absorber = state.length - k_right - 1
            self._merge(state, internals.backward, list(range(absorber + 1, state.length)), absorber, streams)
            for x in totals.values():
                x[:, absorber] += x[:, absorber + 1 :].sum(1)
        keep = slice(k_left, state.length - k_right)
        sources = totals.get("sources")
        return TokenState(
            streams["hidden"][:, keep],
            streams["residual"][:, keep],
            state.positions[:, keep],
            totals["sizes"][:, keep],
            state.cls_position,
            None if sources is None else sources[:, keep],
            cls_at=None if state.cls_position is None else left - k_left,
        )
