"""Analytic FLOPs of a Vim forward pass for any per-layer token counts.

Convention ``full`` (ours): every multiply-accumulate (MAC) of a matmul or conv counts 1, and every
elementwise op (norm, softplus, SiLU, gating, residual add, ...) counts 1 per output element. Both
scan directions count 9 * L * E * N each (mamba_ssm's ``flops_selective_scan_ref``) plus their D and
gate terms. Figures are reported in GMACs ("GFLOPs" in the papers' sense, where 1 MAC = 1 FLOP).

Convention ``paper``: a reconstruction of what the published Vim figures count, which no paper
spells out: the matmuls and convs (patch embed, in/x/dt/out projections, depthwise convs, head) plus
ONE scan direction at 5 MACs per state element (delta*A, exp, B*delta*u, state update, C readout)
and no elementwise ops. It lands within 5 % of ViM-T 1.50 G / ViM-S 5.10 G (HSA paper) and
1.45 / 5.08 / 18.87 G (STM paper); docs/flops.md has the comparison. Use it only to compare with
papers; ratios in mambatr always use ``full``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from mambatr.models.vim import VimConfig

Convention = Literal["full", "paper"]
CONVENTIONS: tuple[str, ...] = ("full", "paper")
SCAN_MACS_PER_STATE = 9  # mamba_ssm: flops = 9 * batch * L * dim * dstate
PAPER_SCAN_MACS_PER_STATE = 5


@dataclass
class LayerFlops:
    """MACs of one block at a given token count, by part."""

    index: int
    tokens: int
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass
class FlopsReport:
    convention: str
    embed: dict[str, int]
    layers: list[LayerFlops]
    final: dict[str, int]
    overhead: dict[int, int] = field(default_factory=dict)  # MACs a reduction method adds after layer i

    @property
    def total(self) -> int:
        return (
            sum(self.embed.values())
            + sum(layer.total for layer in self.layers)
            + sum(self.final.values())
            + sum(self.overhead.values())
        )

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict:
        return {
            "convention": self.convention,
            "gflops": self.gflops,
            "embed": self.embed,
            "per_layer": [{**asdict(layer), "total": layer.total} for layer in self.layers],
            "final": self.final,
            "overhead": self.overhead,
        }


def block_flops(
    config: VimConfig, tokens: int, index: int = 0, convention: Convention = "full"
) -> LayerFlops:
    """MACs of one bidirectional Mamba block on ``tokens`` tokens."""
    L, D, E, N, R, K = tokens, config.embed_dim, config.d_inner, config.d_state, config.rank, config.d_conv
    scan = SCAN_MACS_PER_STATE * L * E * N
    if convention == "paper":
        parts = {
            "in_proj": L * D * 2 * E,
            "conv": 2 * L * E * K,
            "x_proj": 2 * L * E * (R + 2 * N),
            "dt_proj": 2 * L * R * E,
            "scan": PAPER_SCAN_MACS_PER_STATE * L * E * N,
            "out_proj": L * E * D,
        }
        return LayerFlops(index, tokens, parts)
    parts = {
        "add_norm": 3 * L * D,  # residual add, square-mean, scale
        "in_proj": L * D * 2 * E,
        "conv": 2 * (L * E * K + L * E),  # depthwise conv + SiLU, both directions
        "x_proj": 2 * L * E * (R + 2 * N),
        "dt_proj": 2 * L * R * E,
        "softplus": 2 * 2 * L * E,  # bias add + softplus, both directions
        "scan": 2 * scan,
        "skip_gate": 2 * 3 * L * E,  # D * u, SiLU(z), product, both directions
        "combine": (2 if config.divide_output else 1) * L * E,
        "out_proj": L * E * D,
    }
    return LayerFlops(index, tokens, parts)


@functools.singledispatch
def count_flops(
    config: object,
    tokens_per_layer: Sequence[int] | None = None,
    convention: Convention = "full",
    overhead: dict[int, int] | None = None,
) -> FlopsReport:
    """FLOPs (MACs) of one input; ``tokens_per_layer[i]`` is the token count entering block i.

    Dispatches on the config's type: each backbone module registers its own counter.
    """
    raise TypeError(f"no FLOPs counter registered for {type(config).__name__}")


def check_token_counts(config, tokens_per_layer: Sequence[int] | None, convention: str) -> list[int]:
    """Validated per-block token counts (dense when None)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}; choose from {CONVENTIONS}")
    if tokens_per_layer is None:
        tokens_per_layer = [config.seq_len] * config.depth
    if len(tokens_per_layer) != config.depth:
        raise ValueError(
            f"tokens_per_layer has {len(tokens_per_layer)} entries for a depth-{config.depth} model"
        )
    if any(t < 1 for t in tokens_per_layer):
        raise ValueError(f"every layer needs at least one token, got {list(tokens_per_layer)}")
    return list(tokens_per_layer)


@count_flops.register
def _vim_flops(
    config: VimConfig,
    tokens_per_layer: Sequence[int] | None = None,
    convention: Convention = "full",
    overhead: dict[int, int] | None = None,
) -> FlopsReport:
    tokens_per_layer = check_token_counts(config, tokens_per_layer, convention)
    D, M = config.embed_dim, config.num_patches
    embed = {"patch_embed": M * D * config.in_chans * config.patch_size**2}
    final = {"head": D * config.num_classes}
    if convention == "full":
        embed["pos_embed"] = config.seq_len * D
        final["add_norm"] = 3 * tokens_per_layer[-1] * D
    layers = [block_flops(config, t, i, convention) for i, t in enumerate(tokens_per_layer)]
    return FlopsReport(convention, embed, layers, final, dict(overhead or {}))
