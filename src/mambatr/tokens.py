"""The token contract between the backbones and the reduction methods: the state flowing between blocks.

This module sits below both ``mambatr.models`` and ``mambatr.reduction`` (it imports neither): a
backbone's block loop builds a ``TokenState`` and hands it to a method, which returns a smaller one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where streams are summed or averaged: float32 (official ``residual_in_fp32``), float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class TokenState:
    """Per batch: streams and bookkeeping. Every image keeps the same token count (rectangular)."""

    hidden: torch.Tensor  # (B, L, D) output of the block that just ran
    residual: torch.Tensor  # (B, L, D) float32 residual stream entering that block's norm
    positions: torch.Tensor  # (B, L) long: index of each token in the original, unreduced sequence
    sizes: torch.Tensor  # (B, L) float: how many original tokens each token stands for
    cls_position: int | None  # the class token's original index (never reduced); None without one
    sources: torch.Tensor | None = None  # (B, L, L0) which original tokens each token holds (viz only)
    # the class token's current index when it is the same in every image and known without reading
    # the data (initial state; STM keeps it); None otherwise. Lets a method slice by it in compiled code
    cls_at: int | None = None

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
        return cls(tokens, tokens, positions, sizes, cls_position, sources, cls_at=cls_position)

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
