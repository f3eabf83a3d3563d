"""Hand-made block internals and token states for the method tests."""

from __future__ import annotations

import torch

from mambatr.models.backbone import BlockInternals, BranchInternals
from mambatr.tokens import TokenState


def make_internals(hidden: torch.Tensor, delta_per_token: list[float] | None = None) -> BlockInternals:
    """Internals with all-ones B / C, zero outputs, and Δ = 1 or the given per-token values (E = 4, N = 2)."""
    batch, length = hidden.shape[:2]
    if delta_per_token is None:
        delta = torch.ones(batch, length, 4)
    else:
        delta = torch.tensor(delta_per_token).reshape(1, length, 1).expand(batch, length, 4)
    branch = BranchInternals(
        delta=delta,
        B=torch.ones(batch, length, 2),
        C=torch.ones(batch, length, 2),
        y=torch.zeros(batch, length, 4),
        y_ungated=torch.zeros(batch, length, 4),
        A=-torch.ones(4, 2),
    )
    return BlockInternals((branch, branch), hidden=hidden, residual=hidden)


def make_state(hidden: torch.Tensor, cls_position: int | None) -> TokenState:
    """The state after a block whose output is ``hidden`` and whose residual is 10 * hidden."""
    state = TokenState.initial(hidden, cls_position)
    return state.with_streams(hidden, hidden.float() * 10)
