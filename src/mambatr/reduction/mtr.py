"""MTR (Mamba Token Reduction): Δ-importance, keep / target / source groups, merge sources into targets.

1. importance s_i = mean over channels of Δ summed over the scan directions of the block that just ran
   (Vim / VideoMamba: Δ_forward + Δ_backward; PlainMamba: its four scans);
2. rank tokens by s (class token excluded): top c = keep, bottom c = source, the rest = target;
3. each source joins its most similar target (cosine similarity of the hidden state);
4. each group (a target and its sources) becomes its mean (or size-weighted mean), at the target's
   position; keep tokens are untouched; survivors return in original order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.plan import make_plan
from mambatr.reduction.ranking import rank_macs, ranked
from mambatr.tokens import TokenState, gather_tokens

INDICATORS = ("delta", "delta_raw", "delta_b", "B", "C", "cls", "norm", "random")
INDICATOR_HELP = {
    "delta": "mean over channels of Δ summed over scan directions (the paper's choice)",
    "delta_raw": "the same with Δ before softplus (dt_proj output + bias), recovered exactly by inverting it",
    "delta_b": "mean over channels of Δ times mean over the state dim of |B|, summed over scan directions: "
    "how much a token writes into the state",
    "B": "mean over the state dim of |B| summed over scan directions",
    "C": "mean over the state dim of |C| summed over scan directions",
    "cls": "cosine similarity of each token's hidden state to the class token's (EViT-style)",
    "norm": "L2 norm of the hidden state",
    "random": "uniform random scores (a floor for the others; seeded by the `seed` option)",
}
STRATEGY_HELP = {
    "merge": "sources merge into their most similar target in hidden and residual (the paper's choice)",
    "prune": "sources are dropped from hidden and residual",
    "hybrid": "sources are dropped from the hidden stream but merged into the residual stream",
}


def inverse_softplus(delta: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = delta (delta > 0): delta + log(1 - exp(-delta)), stable for small and large."""
    delta = delta.float()
    return delta + torch.log(-torch.expm1(-delta))


def direction_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """The elementwise sum of the scan directions' terms, bit for bit the same for any order of them.

    Float addition is commutative but not associative, so two terms are simply added and more are
    added in ascending order. PlainMamba's four snake scans read Δ in sequence order, so on a full
    square grid a token and its transpose get the same four Δ in another order: an exact tie that a
    left-to-right sum breaks by rounding, differently in each runtime and thread count (ONNX Runtime
    kept other tokens than eager, docs/deploy.md). Sorted, tied terms give equal sums everywhere."""
    if len(parts) > 2:
        parts = list(torch.stack(parts).sort(dim=0).values.unbind(0))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def importance(state: TokenState, internals: BlockInternals, indicator: str, seed: int = 0) -> torch.Tensor:
    """(B, L) token importance under the chosen indicator; higher means more important."""
    if indicator == "delta_raw":
        return direction_sum([inverse_softplus(branch.delta).mean(-1) for branch in internals.branches])
    if indicator == "delta_b":
        return direction_sum(
            [branch.delta.float().mean(-1) * branch.B.float().abs().mean(-1) for branch in internals.branches]
        )
    if indicator in ("delta", "B", "C"):
        parts = [getattr(branch, indicator) for branch in internals.branches]
        if indicator != "delta":
            parts = [part.abs() for part in parts]
        return direction_sum(parts).float().mean(-1)
    if indicator == "norm":
        return state.hidden.float().norm(dim=-1)
    if indicator == "cls":
        if state.cls_position is None:
            raise ValueError("indicator 'cls' needs a model with a class token")
        cls = gather_tokens(state.hidden, state.cls_index()[:, None]).float()
        return F.cosine_similarity(state.hidden.float(), cls, dim=-1)
    generator = torch.Generator(device=state.hidden.device).manual_seed(seed + state.length)
    return torch.rand(state.positions.shape, generator=generator, device=state.hidden.device)


class MTR(ReductionMethod):
    name = "mtr"
    options = {
        "indicator": ("delta", INDICATORS),
        "strategy": ("merge", tuple(STRATEGY_HELP)),
        "weights": ("mean", ("mean", "size")),
        "seed": (0, int),
    }
    searchable = {"indicator": ("delta", "delta_b", "norm"), "strategy": ("merge", "prune", "hybrid")}

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        return (tokens - int(has_cls) - 1) // 2  # keep and source both hold c tokens, one target at least

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        targets = tokens - 2 * count - 1
        score = config.num_directions * tokens * config.d_inner  # Δ summed over directions, channel mean
        normalise, dots = (count + targets) * 2 * config.embed_dim, count * targets * config.embed_dim
        merge = 2 * 2 * count * config.embed_dim  # scatter-add into targets, hidden and residual
        return score + rank_macs(tokens) + normalise + dots + merge

    def scores(self, state: TokenState, internals: BlockInternals) -> torch.Tensor:
        return importance(state, internals, self.indicator, self.seed)

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        # stable: exact ties (equal scores, see direction_sum) keep the earlier token first, in eager
        # and in ONNX's TopK alike; the class token first, untouched
        order = ranked(state, self.scores(state, internals))
        protected = int(state.cls_position is not None)
        keep = order[:, : protected + count]
        targets = order[:, protected + count : state.length - count]
        sources = order[:, state.length - count :]
        hidden = F.normalize(state.hidden.float(), dim=-1)
        similarity = gather_tokens(hidden, sources) @ gather_tokens(hidden, targets).transpose(1, 2)
        into = torch.gather(targets, 1, similarity.argmax(dim=-1))
        plan = make_plan(state, torch.cat((keep, targets), dim=1), sources, into, self.weights)
        if self.strategy == "prune":
            return plan.apply(state, hidden=False, residual=False)
        return plan.apply(state, hidden=self.strategy == "merge", residual=True)
