"""Analytic FLOPs of a forward pass for any per-layer token counts: the report, the dispatch and the
conventions every backbone's counter follows.

Each backbone module registers its own counter on ``count_flops`` (``models/vim.py`` for Vim and
VideoMamba, ``models/plainmamba.py``); this module knows no backbone, so any module may import it.

Convention ``full`` (ours): every multiply-accumulate (MAC) of a matmul or conv counts 1, and every
elementwise op (norm, softplus, SiLU, gating, residual add, ...) counts 1 per output element. Every
scan direction counts 9 * L * E * N (mamba_ssm's ``flops_selective_scan_ref``) plus its D and gate
terms. Figures are reported in GMACs ("GFLOPs" in the papers' sense, where 1 MAC = 1 FLOP).

Convention ``paper``: what the published figures of each backbone count, reconstructed per backbone
(docs/flops.md). Use it only to compare with papers; ratios in mambatr always use ``full``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

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


def check_token_counts(config: object, tokens_per_layer: Sequence[int] | None, convention: str) -> list[int]:
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
