"""Vision Mamba (hustvl/Vim) in pure PyTorch, with the official state-dict layout.

Faithful to ``vim_*_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``:
bidirectional "v2" mixer with separate backward parameters, class token in the middle of the
sequence, RMSNorm, float32 residual stream, mixer output divided by 2. The backward branch runs
on the time-reversed sequence; here it is computed with a reverse scan and an anti-causal conv,
which equals flip -> branch -> flip without materialising the flips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mambatr.flops import (
    PAPER_SCAN_MACS_PER_STATE,
    SCAN_MACS_PER_STATE,
    Convention,
    FlopsReport,
    LayerFlops,
    check_token_counts,
    count_flops,
)
from mambatr.models.backbone import (
    BlockInternals,
    BranchInternals,
    DropPath,
    Gaps,
    MambaConfigMixin,
    ReducibleBackbone,
    init_dt_proj,
    readout,
)
from mambatr.models.checkpoint import resample_pos_embed
from mambatr.ops import causal_conv1d, selective_scan
from mambatr.tokens import TokenState, accumulate_dtype

__all__ = [
    "BiMambaMixer",
    "Block",
    "BlockInternals",
    "BranchInternals",
    "VimConfig",
    "VisionMamba",
    "accumulate_dtype",
    "adapt_vim_state_dict",
    "rms_norm",
    "vim_block_flops",
]

ClsPosition = Literal["middle", "first", "none"]


@dataclass(frozen=True)
class VimConfig(MambaConfigMixin):
    """Architecture of a Vim-style model; every field maps to an official hyper-parameter."""

    img_size: int = 224
    patch_size: int = 16
    stride: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None  # None: ceil(embed_dim / 16), as mamba_ssm
    cls_position: ClsPosition = "middle"
    divide_output: bool = True  # Vim's "div2": out_proj((y_f + y_b) / 2)
    norm_eps: float = 1e-5
    # stochastic depth at training (official --drop-path): block i's output is dropped with a rate rising
    # linearly from 0 to this over the blocks; the identity in eval
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "img_size": self.img_size >= self.patch_size,
            "patch_size": self.patch_size > 0,
            "stride": self.stride > 0,
            "in_chans": self.in_chans > 0,
            "num_classes": self.num_classes > 0,
            "embed_dim": self.embed_dim > 0,
            "depth": self.depth > 0,
            "d_state": self.d_state > 0,
            "expand": self.expand > 0,
            "d_conv": self.d_conv > 0,
            "drop_path_rate": 0.0 <= self.drop_path_rate < 1.0,
        }
        self._check_fields(checks)
        if self.cls_position not in ("middle", "first", "none"):
            raise ValueError(f"cls_position must be 'middle', 'first' or 'none', got {self.cls_position!r}")

    @property
    def num_directions(self) -> int:
        return 2

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The input the model takes: (B, C, H, W)."""
        return (batch, self.in_chans, self.img_size, self.img_size)

    @property
    def grid(self) -> int:
        return (self.img_size - self.patch_size) // self.stride + 1

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def has_cls(self) -> bool:
        return self.cls_position != "none"

    @property
    def seq_len(self) -> int:
        return self.num_patches + int(self.has_cls)

    @property
    def cls_index(self) -> int | None:
        """Index of the class token in the initial sequence (Vim: M // 2)."""
        return {"middle": self.num_patches // 2, "first": 0, "none": None}[self.cls_position]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (float64 for float64), cast to the weight's dtype (mamba_ssm's rms_norm_fn)."""
    acc = x.to(accumulate_dtype(weight.dtype))
    return (acc * torch.rsqrt(acc.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc.dtype)).to(
        weight.dtype
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class PatchEmbed(nn.Module):
    """Conv patchify to (B, M, D) in raster order (row * grid + col)."""

    def __init__(self, config: VimConfig) -> None:
        super().__init__()
        self.img_size = config.img_size
        self.in_chans = config.in_chans
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, config.patch_size, stride=config.stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W), got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}x{self.img_size} images, "
                f"got {images.shape[-2]}x{images.shape[-1]}; "
                "create the model with img_size=... (position embeddings are interpolated on load)"
            )
        return self.proj(images).flatten(2).transpose(1, 2)


class BiMambaMixer(nn.Module):
    """Vim's bidirectional "v2" Mamba mixer; parameter names match the official checkpoints."""

    def __init__(self, config: VimConfig) -> None:
        super().__init__()
        d, e, n, r = config.embed_dim, config.d_inner, config.d_state, config.rank
        self.d_state, self.rank, self.divide_output = n, r, config.divide_output
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.out_proj = nn.Linear(e, d, bias=False)
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1)
        for suffix in ("", "_b"):
            self.add_module(
                f"conv1d{suffix}", nn.Conv1d(e, e, config.d_conv, groups=e, padding=config.d_conv - 1)
            )
            self.add_module(f"x_proj{suffix}", nn.Linear(e, r + 2 * n, bias=False))
            self.add_module(f"dt_proj{suffix}", nn.Linear(r, e, bias=True))
        self.A_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(e))
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D_b = nn.Parameter(torch.ones(e))
        self.scan_impl = "auto"

    def _branch(
        self, x: torch.Tensor, z: torch.Tensor, backward: bool, gap: torch.Tensor | None, capture: bool
    ) -> tuple[torch.Tensor, BranchInternals | None]:
        suffix = "_b" if backward else ""
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        x_proj: nn.Linear = getattr(self, f"x_proj{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        acc = accumulate_dtype(x.dtype)
        A = -torch.exp(getattr(self, "A_b_log" if backward else "A_log").to(acc))
        D = getattr(self, "D_b" if backward else "D").to(acc)
        xc = causal_conv1d(x, conv.weight[:, 0], conv.bias, silu=True, reverse=backward, impl=self.scan_impl)
        dt, B, C = x_proj(xc).split([self.rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight)  # the bias is added inside the scan, before softplus
        y = selective_scan(
            xc,
            dt,
            A,
            B,
            C,
            D,
            z=None if capture else z,
            delta_bias=dt_proj.bias.to(acc),
            delta_softplus=True,
            gap=gap,
            reverse=backward,
            impl=self.scan_impl,
        )
        if not capture:
            return y, None
        y_ungated, y = y, y * F.silu(z)  # gate outside the scan to expose the ungated output too
        delta = F.softplus(dt.to(acc) + dt_proj.bias.to(acc))
        return y, BranchInternals(delta=delta, B=B, C=C, y=y, y_ungated=y_ungated, A=A)

    def forward(
        self,
        u: torch.Tensor,
        gaps: Gaps | None = None,
        capture: bool = False,
    ) -> tuple[torch.Tensor, tuple[BranchInternals, BranchInternals] | None]:
        """u (B, L, D) -> (B, L, D). ``gaps``: per-direction pruned-gap counts (HSA alignment)."""
        gap_f, gap_b = gaps if gaps is not None else (None, None)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        y_f, internals_f = self._branch(x, z, backward=False, gap=gap_f, capture=capture)
        y_b, internals_b = self._branch(x, z, backward=True, gap=gap_b, capture=capture)
        y = y_f + y_b
        if self.divide_output:
            y = y / 2
        out = self.out_proj(y)
        return out, ((internals_f, internals_b) if capture else None)


class Block(nn.Module):
    """Pre-norm residual block: residual += drop_path(hidden); hidden = mixer(norm(residual)).

    ``drop_path`` is the rate for the incoming hidden, the previous block's output (official Vim)."""

    def __init__(self, config: VimConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = RMSNorm(config.embed_dim, eps=config.norm_eps)
        self.mixer = BiMambaMixer(config)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        gaps: Gaps | None = None,
        capture: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, BlockInternals | None]:
        acc = accumulate_dtype(self.norm.weight.dtype)
        residual = hidden.to(acc) if residual is None else residual + self.drop_path(hidden).to(acc)
        hidden, branches = self.mixer(
            self.norm(residual.to(self.norm.weight.dtype)), gaps=gaps, capture=capture
        )
        if branches is None:
            return hidden, residual, None
        return hidden, residual, BlockInternals(branches, hidden=hidden, residual=residual)


class VisionMamba(ReducibleBackbone):
    """Vim classifier: patch embed, class token, position embedding, Mamba blocks, norm, head."""

    def __init__(self, config: VimConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        if config.has_cls:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len, d))
        # official stochastic-depth rule: block i drops block i-1's output at rate linspace(0, r, depth)[i-1],
        # the final add drops the last block's output at rate r
        rates = [0.0, *torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()]
        self.layers = nn.ModuleList(Block(config, rates[i]) for i in range(config.depth))
        self.drop_path = DropPath(config.drop_path_rate)
        self.norm_f = RMSNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the official code does (trunc-normal pos/cls/head, Mamba's dt/A/D init)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.config.has_cls:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        rank = self.config.rank
        for layer in self.layers:
            mixer = layer.mixer
            for dt_proj in (mixer.dt_proj, mixer.dt_proj_b):
                init_dt_proj(dt_proj, rank)
            # mamba_ssm rescales out_proj by 1/sqrt(n_layer) (GPT-2 style) in _init_weights
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(self.config.depth)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token inserted at ``config.cls_index`` and positions added."""
        tokens = self.patch_embed(images)
        index = self.config.cls_index
        if index is not None:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :index], cls, tokens[:, index:]), dim=1)
        return tokens + self.pos_embed

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return adapt_vim_state_dict(state_dict, self.config)

    def scan_gaps(self, state: TokenState) -> Gaps:
        """Both scans follow the sequence order: gaps are the runs of missing positions."""
        return state.position_gaps()

    def final_features(self, hidden: torch.Tensor, residual: torch.Tensor, state: TokenState) -> torch.Tensor:
        """Final add + norm, then each image's class token (or the size-weighted token mean without one)."""
        hidden = self.drop_path(hidden)
        features = rms_norm(residual + hidden.to(residual.dtype), self.norm_f.weight, self.norm_f.eps)
        return readout(features, state)


def adapt_vim_state_dict(state_dict: dict[str, torch.Tensor], config: VimConfig) -> dict[str, torch.Tensor]:
    """Resample ``pos_embed`` when the checkpoint's grid differs from the model's (other image size)."""
    pos = state_dict.get("pos_embed")
    if pos is None or pos.ndim != 3 or pos.shape[1] == config.seq_len:
        return state_dict
    old_patches = pos.shape[1] - int(config.has_cls)
    old_index = {"middle": old_patches // 2, "first": 0, "none": None}[config.cls_position]
    resampled = resample_pos_embed(pos, config.grid, old_index, config.cls_index)
    return {**state_dict, "pos_embed": resampled}


# ---------------------------------------------------------------------------------------------------
# FLOPs (Vim and VideoMamba: the video config is a VimConfig, its num_patches counts every frame)


def vim_block_flops(
    config: VimConfig, tokens: int, index: int = 0, convention: Convention = "full"
) -> LayerFlops:
    """MACs of one bidirectional Mamba block on ``tokens`` tokens.

    ``paper``: a reconstruction of what the published Vim figures count, which no paper spells out:
    the matmuls and convs plus ONE scan direction at 5 MACs per state element (delta*A, exp, B*delta*u,
    state update, C readout) and no elementwise ops. It lands within 5 % of ViM-T 1.50 G / ViM-S 5.10 G
    (HSA paper) and 1.45 / 5.08 / 18.87 G (STM paper); docs/flops.md has the comparison.
    """
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
    layers = [vim_block_flops(config, t, i, convention) for i, t in enumerate(tokens_per_layer)]
    return FlopsReport(convention, embed, layers, final, dict(overhead or {}))
