"""What every reducible backbone shares: the block-internals seam and the block loop with reduction.

A backbone (Vim, VideoMamba, PlainMamba) subclasses ``ReducibleBackbone`` and provides ``embed``,
``scan_gaps`` and ``final_features``. Its blocks follow one protocol, so every reduction method
works on every backbone unchanged:

    hidden, residual, internals = block(hidden, residual, gaps=..., capture=...)

``residual`` is the running sum of all earlier outputs (float32), the block reads ``norm(residual)``
and returns its mixer output as ``hidden``; ``internals`` (``capture=True``) exposes what each scan
direction computed, every tensor in the current token order (tokens sorted by original position).

The loop carries a ``mambatr.tokens.TokenState`` and, after the blocks ``reduction`` names (a
``Reduction``, set by ``mambatr.apply``), hands it to the method; this module imports no method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from mambatr.tokens import TokenState


@dataclass
class BranchInternals:
    """What one scan direction computed, all in the current token order (not the scan's order)."""

    delta: torch.Tensor  # (B, L, E) post-softplus timescale
    B: torch.Tensor  # (B, L, N)
    C: torch.Tensor  # (B, L, N)
    y: torch.Tensor  # (B, L, E) gated SSM output, before out_proj
    y_ungated: torch.Tensor  # (B, L, E) SSM output before the SiLU(z) gate
    A: torch.Tensor  # (E, N) the branch's state matrix, -exp(A_log)


@dataclass
class BlockInternals:
    """The seam for token reduction: everything a method may read from the block that just ran.

    ``branches`` holds one entry per scan direction: Vim / VideoMamba (forward, backward), PlainMamba
    its four snake scans. ``forward`` / ``backward`` name the first two (a sequence-order scan and
    its reverse in every backbone here).
    """

    branches: tuple[BranchInternals, ...]
    hidden: torch.Tensor  # (B, L, D) mixer output of this block
    residual: torch.Tensor  # (B, L, D) float32 residual stream entering this block's norm

    @property
    def forward(self) -> BranchInternals:
        return self.branches[0]

    @property
    def backward(self) -> BranchInternals:
        return self.branches[1]


class BackboneConfig(Protocol):
    """The architecture facts the reduction framework and FLOPs counter read."""

    depth: int
    embed_dim: int
    d_state: int
    num_classes: int

    @property
    def d_inner(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    @property
    def has_cls(self) -> bool: ...

    @property
    def cls_index(self) -> int | None: ...

    @property
    def num_directions(self) -> int: ...

    def input_shape(self, batch: int) -> tuple[int, ...]: ...


class MambaConfigMixin:
    """Derived sizes, validation and overrides shared by the backbones' frozen config dataclasses
    (which define ``embed_dim``, ``expand`` and ``dt_rank``)."""

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.embed_dim / 16)

    def _check_fields(self, checks: dict[str, bool]) -> None:
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {type(self).__name__} fields {bad}: {self}")

    def with_overrides(self, **overrides):
        """A copy with some fields changed; unknown field names are an error."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} fields {sorted(unknown)}")
        return replace(self, **overrides)


def init_dt_proj(dt_proj: nn.Linear, rank: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
    """mamba_ssm's dt init: uniform weight in ±rank^-1/2, bias = softplus^-1 of a log-uniform dt."""
    nn.init.uniform_(dt_proj.weight, -(rank**-0.5), rank**-0.5)
    dt = torch.exp(torch.rand(dt_proj.bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=1e-4)
    with torch.no_grad():
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus


class DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``, as the official Vim blocks use it): in training, each
    sample's branch is zeroed with probability ``rate`` and kept ones are scaled by 1 / (1 - rate);
    the identity in eval or at rate 0. No parameters, so state dicts are unchanged."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


Gaps = tuple[torch.Tensor | None, ...]


class TokenReducer(Protocol):
    """What the block loop calls after a reducing block: a ``mambatr.reduction`` method."""

    @property
    def aligns_scan(self) -> bool:
        """True: later blocks' scans bridge the removed tokens (``scan_gaps``)."""

    def reduce(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        """The state after removing exactly ``count`` tokens (survivors in original order)."""


@dataclass
class Reduction:
    """What a patched model runs (set by ``mambatr.apply``): the method and exact per-layer removal counts."""

    method: TokenReducer
    removals: dict[int, int]


@dataclass
class BlockEntry:
    """What enters block ``index`` of the loop: enough to run the rest of the model from there."""

    index: int
    state: TokenState  # positions, sizes, class token (its streams may be stale: hidden, residual rule)
    hidden: torch.Tensor
    residual: torch.Tensor | None  # None before the first block
    gaps: Gaps | None

    def nbytes(self) -> int:
        tensors = [self.hidden, self.residual, self.state.positions, self.state.sizes, *(self.gaps or ())]
        return sum(t.nbytes for t in tensors if t is not None)


class ReducibleBackbone(nn.Module):
    """Token embedding, the block loop (reducing where ``self.reduction`` says) and the head."""

    config: BackboneConfig
    layers: nn.ModuleList
    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.reduction: Reduction | None = None  # set by mambatr.apply
        self.track_sources = False  # keep which patches each token holds (mambatr.visualize)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official checkpoint's weights in this model's layout (prefixes, resampled embeddings)."""
        return state_dict

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, L, D) initial tokens, class token included, position embeddings added."""
        raise NotImplementedError

    def scan_gaps(self, state: TokenState) -> Gaps:
        """Per scan direction, (B, L) counts of removed tokens just before each token in that scan's order."""
        raise NotImplementedError

    def final_features(self, hidden: torch.Tensor, residual: torch.Tensor, state: TokenState) -> torch.Tensor:
        """(B, D) features for the head from the last block's streams."""
        raise NotImplementedError

    def layer_inputs(self, state: TokenState) -> dict[str, torch.Tensor]:
        """Extra keyword arguments every block gets (PlainMamba: the tokens' grid positions)."""
        return {}

    @property
    def scan_impl(self) -> str:
        return self.layers[0].mixer.scan_impl

    @scan_impl.setter
    def scan_impl(self, impl: str) -> None:
        for layer in self.layers:
            layer.mixer.scan_impl = impl

    def forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        state = TokenState.initial(self.embed(inputs), self.config.cls_index, self.track_sources)
        return self.blocks_from(BlockEntry(0, state, state.hidden, None, None))

    def blocks_from(
        self, entry: BlockEntry, record: Callable[[BlockEntry], None] | None = None
    ) -> torch.Tensor:
        """The block loop from ``entry.index`` on, then the head's features. ``record`` sees what enters
        each block: a calibration search caches it and re-runs only the blocks a trial changes."""
        state, hidden, residual, gaps = entry.state, entry.hidden, entry.residual, entry.gaps
        removals = self.reduction.removals if self.reduction is not None else {}
        for index in range(entry.index, len(self.layers)):
            if record is not None:
                record(BlockEntry(index, state, hidden, residual, gaps))
            count = removals.get(index, 0)
            hidden, residual, internals = self.layers[index](
                hidden, residual, gaps=gaps, capture=count > 0, **self.layer_inputs(state)
            )
            if count > 0:
                method = self.reduction.method
                state = method.reduce(state.with_streams(hidden, residual), internals, count)
                hidden, residual = state.hidden, state.residual
                gaps = self.scan_gaps(state) if method.aligns_scan else None
        return self.final_features(hidden, residual, state)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(inputs))


def readout(features: torch.Tensor, state: TokenState) -> torch.Tensor:
    """(B, D): each image's class token, or without one the mean over tokens weighted by their sizes.

    Dense, every size is 1 and this is the official mean pool; after merging, a token that stands
    for k patches counts k times (so merging alone keeps the mean); pruned patches are gone.
    """
    cls = state.cls_index()
    if cls is not None:
        return features[torch.arange(features.shape[0], device=features.device), cls]
    sizes = state.sizes.to(features.dtype)
    weights = sizes / sizes.sum(dim=1, keepdim=True)
    return (features * weights[..., None]).sum(dim=1)
