"""PlainMamba (ChenhongyiYang/PlainMamba) in pure PyTorch, with the official state-dict layout.

Faithful to the mmcls ``PlainMamba`` backbone (arch L1 / L2 / L3) + ``CustomAveragePooling`` neck +
``LinearClsHead``: a conv stem patch embedding, absolute position embedding, no class token, pre-norm
LayerNorm blocks whose mixer (``PlainMamba2D``) runs a 7x7 depthwise conv2d and four zig-zag
("snake") selective scans sharing one set of SSM parameters, a final LayerNorm (eps 1e-6, key
``ln1``) and a mean pool. Official quirks reproduced (docs/plainmamba.md):

- ``dt_proj``'s bias is applied twice: inside the Linear and again as the scan's ``delta_bias``;
- only the SSM input u is permuted into each scan's order: delta, B and C stay in sequence (raster)
  order, so scan step j pairs the u of the j-th token along the snake with the delta / B / C computed
  from the j-th token in raster order;
- B gets a learned per-direction offset ``direction_Bs[code]`` (5, N), code = the move that arrived
  at the token along the snake (0 start, 1 right, 2 left, 3 up, 4 down);
- the SiLU(z) gate is applied once to the sum of the four scans;
- L1's layer 0 ends with ``dw`` (3x3 depthwise conv, BatchNorm, GELU) applied to ``x + mixer(norm(x))``.

Token reduction (tokens sorted by original raster position, some missing): the depthwise convs run on
the tokens scattered into a zero grid, each scan visits the current tokens in their order along the
full-grid snake, and every token keeps its full-grid direction code. Dense, all of this is the
official computation exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mambatr.flops import (
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
    Gaps,
    MambaConfigMixin,
    ReducibleBackbone,
    init_dt_proj,
    readout,
)
from mambatr.models.checkpoint import resample_pos_embed
from mambatr.ops import selective_scan
from mambatr.tokens import TokenState, accumulate_dtype, gather_tokens

__all__ = [
    "MOVE_CODES",
    "PlainMamba",
    "PlainMambaBlock",
    "PlainMambaConfig",
    "PlainMambaMixer",
    "SnakePaths",
    "adapt_plainmamba_state_dict",
    "plainmamba_block_flops",
    "snake_paths",
]

MOVE_CODES = {"start": 0, "right": 1, "left": 2, "up": 3, "down": 4}
NUM_DIRECTIONS = 4


@dataclass(frozen=True)
class PlainMambaConfig(MambaConfigMixin):
    """Architecture of a PlainMamba model; every field maps to an official hyper-parameter."""

    img_size: int = 224
    patch_size: int = 16  # even; the stem halves the image, the projection is patch_size // 2
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    conv_size: int = 7  # the mixer's depthwise conv2d kernel (odd)
    dt_rank: int | None = None  # None: ceil(embed_dim / 16), as the official "auto"
    num_convs_patch_embed: int = 1  # extra 3x3 conv + BN + ReLU stages after the stem (L1 1, L2/L3 2)
    stem_channels: int = 64  # fixed to 64 in the official ConvPatchEmbed
    layers_with_dwconv: tuple[int, ...] = (0,)  # L1: (0,), L2 / L3: ()
    layer_scale: float | None = None  # official init_layer_scale (a ``gamma`` per block); None in all
    norm_eps: float = 1e-5  # the blocks' nn.LayerNorm default
    final_norm_eps: float = 1e-6  # the backbone's norm_cfg=dict(type='LN', eps=1e-6)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers_with_dwconv", tuple(int(i) for i in self.layers_with_dwconv))
        checks = {
            "img_size": self.img_size > 0,
            "patch_size": self.patch_size >= 2 and self.patch_size % 2 == 0,
            "in_chans": self.in_chans > 0,
            "num_classes": self.num_classes > 0,
            "embed_dim": self.embed_dim > 0,
            "depth": self.depth > 0,
            "d_state": self.d_state > 0,
            "expand": self.expand > 0,
            "conv_size": self.conv_size > 0 and self.conv_size % 2 == 1,
            "num_convs_patch_embed": self.num_convs_patch_embed >= 0,
            "stem_channels": self.stem_channels > 0,
            "layers_with_dwconv": all(0 <= i < self.depth for i in self.layers_with_dwconv),
        }
        self._check_fields(checks)

    @property
    def stem_size(self) -> int:
        """Side of the stem's output (7x7 conv, stride 2, padding 3)."""
        return (self.img_size - 1) // 2 + 1

    @property
    def grid(self) -> int:
        """Patch grid side: the projection (kernel = stride = patch / 2) after "corner" padding."""
        return math.ceil(self.stem_size / (self.patch_size // 2))

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def seq_len(self) -> int:
        return self.num_patches

    @property
    def has_cls(self) -> bool:
        return False

    @property
    def cls_index(self) -> int | None:
        return None

    @property
    def num_directions(self) -> int:
        return NUM_DIRECTIONS

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The input the model takes: (B, C, H, W)."""
        return (batch, self.in_chans, self.img_size, self.img_size)


# ---------------------------------------------------------------------------------------------------
# The four snake scans


@dataclass(frozen=True)
class SnakePaths:
    """The four full-grid scan paths of an H x W grid, as (4, H*W) long tensors.

    ``orders[k, j]``: raster position visited at step j of path k; ``ranks[k, p]``: step at which
    path k visits position p (the inverse permutation); ``codes[k, p]``: the move that arrived at
    position p along path k (``MOVE_CODES``; 0 for the path's first cell). Paths: 0 row snake from the
    top-left cell (rows alternate right / left, moving down), 1 its reverse, 2 column snake from the
    top-left cell (columns alternate down / up, moving right), 3 its reverse.
    """

    height: int
    width: int
    orders: torch.Tensor
    ranks: torch.Tensor
    codes: torch.Tensor


def _row_snake(height: int, width: int) -> list[tuple[int, int]]:
    return [(i, j if i % 2 == 0 else width - 1 - j) for i in range(height) for j in range(width)]


def _column_snake(height: int, width: int) -> list[tuple[int, int]]:
    return [(i if j % 2 == 0 else height - 1 - i, j) for j in range(width) for i in range(height)]


def _arrival_codes(cells: list[tuple[int, int]]) -> list[int]:
    moves = {(0, 1): "right", (0, -1): "left", (-1, 0): "up", (1, 0): "down"}
    codes = [MOVE_CODES["start"]]
    for (r0, c0), (r1, c1) in zip(cells, cells[1:], strict=False):
        codes.append(MOVE_CODES[moves[(r1 - r0, c1 - c0)]])
    return codes


def snake_paths(height: int, width: int, device: str = "cpu") -> SnakePaths:
    """The scan paths of an H x W grid (equal to the official ``get_permute_order``), cached; built
    afresh while torch.compile / torch.export trace, whose fake tensors must not outlive the trace
    (cached, they made the next eager call return a FakeTensor)."""
    if torch.compiler.is_compiling():
        return _build_snake_paths(height, width, device)
    return _cached_snake_paths(height, width, device)


@functools.lru_cache(maxsize=64)
def _cached_snake_paths(height: int, width: int, device: str) -> SnakePaths:
    return _build_snake_paths(height, width, device)


def _build_snake_paths(height: int, width: int, device: str) -> SnakePaths:
    row, column = _row_snake(height, width), _column_snake(height, width)
    paths = (row, row[::-1], column, column[::-1])
    orders = torch.tensor([[i * width + j for i, j in path] for path in paths], dtype=torch.long)
    codes_by_step = torch.tensor([_arrival_codes(path) for path in paths], dtype=torch.long)
    ranks = torch.empty_like(orders)
    steps = torch.arange(height * width).expand(NUM_DIRECTIONS, -1)
    ranks.scatter_(1, orders, steps)
    codes = torch.empty_like(orders).scatter_(1, orders, codes_by_step)
    device = torch.device(device)
    return SnakePaths(height, width, orders.to(device), ranks.to(device), codes.to(device))


def scan_orders(positions: torch.Tensor, paths: SnakePaths) -> tuple[torch.Tensor, torch.Tensor]:
    """For tokens at ``positions`` (B, L), per path: the token indices in scan order and their ranks.

    Returns ``perm`` (4, B, L) (token index visited at each scan step) and the sorted full-path
    ranks (4, B, L) of those tokens.
    """
    ranks = paths.ranks[:, positions]  # (4, B, L)
    sorted_ranks, perm = ranks.sort(dim=-1)
    return perm, sorted_ranks


def _to_grid(x: torch.Tensor, positions: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Tokens (B, L, C) scattered at their positions into a zero (B, C, H, W) grid."""
    batch, _, channels = x.shape
    if positions is not None:
        grid = x.new_zeros(batch, height * width, channels)
        x = grid.scatter(1, positions[..., None].expand(-1, -1, channels), x)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


def _from_grid(grid: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """(B, C, H, W) read back at the tokens' positions -> (B, L, C)."""
    tokens = grid.flatten(2).transpose(1, 2)
    return tokens if positions is None else gather_tokens(tokens, positions)


def sparse_grid_conv(
    conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor | None, height: int, width: int
) -> torch.Tensor:
    """A spatial conv on tokens (B, L, C): scatter into a zero grid, convolve, read back.

    ``positions`` None means the full grid in raster order (the official computation).
    """
    return _from_grid(conv(_to_grid(x, positions, height, width)), positions)


# ---------------------------------------------------------------------------------------------------
# Mixer, block, model


class PlainMambaMixer(nn.Module):
    """The official ``PlainMamba2D`` (attribute ``mamba`` of a layer); parameter names match."""

    def __init__(self, config: PlainMambaConfig) -> None:
        super().__init__()
        d, e, n, r = config.embed_dim, config.d_inner, config.d_state, config.rank
        self.d_state, self.rank, self.grid = n, r, config.grid
        self.in_proj = nn.Linear(d, 2 * e, bias=True)
        self.conv2d = nn.Conv2d(e, e, config.conv_size, padding=config.conv_size // 2, groups=e, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=True)
        self.direction_Bs = nn.Parameter(torch.zeros(NUM_DIRECTIONS + 1, n))
        if config.layer_scale is not None:
            self.gamma = nn.Parameter(config.layer_scale * torch.ones(d))
        self.scan_impl = "auto"

    def paths(self, device: torch.device) -> SnakePaths:
        return snake_paths(self.grid, self.grid, str(device))

    def forward(
        self,
        u: torch.Tensor,
        positions: torch.Tensor | None = None,
        gaps: Gaps | None = None,
        capture: bool = False,
    ) -> tuple[torch.Tensor, tuple[BranchInternals, ...] | None]:
        """u (B, L, D) -> (B, L, D) for tokens at raster ``positions`` (B, L) (None: the full grid).

        ``gaps``: per direction, (B, L) counts of full-path positions missing before each scan step
        (in scan order, see ``PlainMamba.scan_gaps``); None: no hidden-state alignment.
        """
        batch, length, _ = u.shape
        paths = self.paths(u.device)
        dense = positions is None or length == self.grid**2  # sorted distinct positions: all of them
        if positions is None:
            positions = torch.arange(length, device=u.device).expand(batch, length)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(sparse_grid_conv(self.conv2d, x, None if dense else positions, self.grid, self.grid))
        dt, B, C = self.x_proj(x).split([self.rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt)  # with its bias; the scan adds the bias a second time (official)
        acc = accumulate_dtype(u.dtype)
        A = -torch.exp(self.A_log.to(acc))

        # the four scans as one batch of B * 4 sequences (image-major), each in its own scan order
        perm = scan_orders(positions, paths)[0].transpose(0, 1)  # (B, 4, L): token scanned at each step
        stack, flat = (batch * NUM_DIRECTIONS, length), (batch, NUM_DIRECTIONS * length)
        u_scan = gather_tokens(x, perm.reshape(flat))  # only u moves into scan order
        codes = torch.gather(paths.codes[:, positions].transpose(0, 1), -1, perm)  # of the scanned token
        B_scan = B[:, None] + self.direction_Bs.to(B.dtype)[codes]  # (B, 4, L, N): B stays in sequence order
        gap = None
        if gaps is not None:
            gap = torch.stack([g.to(acc) for g in gaps], dim=1).reshape(stack)
        y_scan = selective_scan(
            u_scan.reshape(*stack, -1),
            dt[:, None].expand(-1, NUM_DIRECTIONS, -1, -1).reshape(*stack, -1),
            A,
            B_scan.reshape(*stack, -1),
            C[:, None].expand(-1, NUM_DIRECTIONS, -1, -1).reshape(*stack, -1),
            self.D.to(acc),
            z=None,
            delta_bias=self.dt_proj.bias.to(acc),
            delta_softplus=True,
            gap=gap,
            impl=self.scan_impl,
        )
        inverse = perm.argsort(dim=-1)  # (B, 4, L): scan step of each token
        offsets = torch.arange(0, NUM_DIRECTIONS * length, length, device=u.device)[:, None]
        ys = gather_tokens(y_scan.reshape(*flat, -1), (inverse + offsets).reshape(flat))
        ys = ys.reshape(batch, NUM_DIRECTIONS, length, -1)  # back in token order
        y = ys[:, 0] + ys[:, 1] + ys[:, 2] + ys[:, 3]
        gate = F.silu(z)
        out = self.out_proj(y * gate)
        if hasattr(self, "gamma"):
            out = out * self.gamma
        if not capture:
            return out, None
        delta = F.softplus(dt.to(acc) + self.dt_proj.bias.to(acc))  # per scan step (sequence order)
        branches = tuple(
            BranchInternals(
                delta=gather_tokens(delta, inverse[:, k]),  # what the step that scanned each token used
                B=gather_tokens(B_scan[:, k], inverse[:, k]),
                C=gather_tokens(C, inverse[:, k]),
                y=ys[:, k] * gate,
                y_ungated=ys[:, k],
                A=A,
            )
            for k in range(NUM_DIRECTIONS)
        )
        return out, branches


class PlainMambaBlock(nn.Module):
    """An official ``PlainMambaLayer`` in the residual-stream protocol of ``mambatr.models.backbone``.

    Official: ``x' = x + mamba(norm(x))``, then for layers with ``dw``: ``x' = GELU(BN(dwconv3x3(x')))``.
    Here ``residual`` is x (the running float32 sum), the block returns ``mamba(norm(x))`` as hidden,
    so the next block's ``residual + hidden`` is x'. A ``dw`` layer returns ``hidden = dw(x + out) - x``
    instead (the whole update of the stream, so ``residual + hidden`` is still the official x', up
    to one float32 rounding).
    """

    def __init__(self, config: PlainMambaConfig, with_dwconv: bool = False) -> None:
        super().__init__()
        d = config.embed_dim
        self.grid = config.grid
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.mamba = PlainMambaMixer(config)
        if with_dwconv:
            self.dw = nn.Sequential(
                nn.Conv2d(d, d, 3, padding=1, groups=d, bias=False), nn.BatchNorm2d(d), nn.GELU()
            )

    @property
    def mixer(self) -> PlainMambaMixer:
        """The mixer under the name the shared backbone code uses (the official name is ``mamba``)."""
        return self.mamba

    def _dwconv(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """dw on tokens: the 3x3 conv on the scattered grid, BatchNorm over the tokens, GELU."""
        conv, norm, act = self.dw
        dense = positions is None or x.shape[1] == self.grid**2
        y = sparse_grid_conv(conv, x, None if dense else positions, self.grid, self.grid)
        y = norm(y.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # stats over B * L tokens
        return act(y)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        gaps: Gaps | None = None,
        capture: bool = False,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, BlockInternals | None]:
        acc = accumulate_dtype(self.norm.weight.dtype)
        residual = hidden.to(acc) if residual is None else residual + hidden.to(acc)
        normed = self.norm(residual.to(self.norm.weight.dtype))
        hidden, branches = self.mamba(normed, positions=positions, gaps=gaps, capture=capture)
        if hasattr(self, "dw"):
            stream = self._dwconv((residual + hidden.to(acc)).to(hidden.dtype), positions)
            hidden = (stream.to(acc) - residual).to(hidden.dtype)
        if branches is None:
            return hidden, residual, None
        return hidden, residual, BlockInternals(branches, hidden=hidden, residual=residual)


class ConvPatchEmbed(nn.Module):
    """The official conv stem: 7x7/2 conv + BN + ReLU, [3x3 conv + BN + ReLU] x n, corner padding,
    then a (patch/2)x(patch/2) stride-(patch/2) projection; tokens in raster order."""

    def __init__(self, config: PlainMambaConfig) -> None:
        super().__init__()
        c = config.stem_channels
        self.img_size, self.in_chans = config.img_size, config.in_chans
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, c, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        self.convs = None
        if config.num_convs_patch_embed > 0:
            layers: list[nn.Module] = []
            for _ in range(config.num_convs_patch_embed):
                layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            self.convs = nn.Sequential(*layers)
        self.kernel = config.patch_size // 2
        self.projection = nn.Conv2d(c, config.embed_dim, self.kernel, stride=self.kernel)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W), got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}x{self.img_size} images, "
                f"got {images.shape[-2]}x{images.shape[-1]}; "
                "create the model with img_size=... (position embeddings are resampled on load)"
            )
        x = self.stem(images)
        if self.convs is not None:
            x = self.convs(x)
        pad_h, pad_w = (-x.shape[-2]) % self.kernel, (-x.shape[-1]) % self.kernel  # "corner" padding
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.projection(x).flatten(2).transpose(1, 2)


class ClsHead(nn.Module):
    """mmcls ``LinearClsHead``: one Linear under the name ``fc``."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class PlainMamba(ReducibleBackbone):
    """PlainMamba classifier: conv patch embed, position embedding, blocks, LayerNorm, mean pool, head.

    State-dict keys are the official ones with the mmcls ``backbone.`` prefix removed (the head stays
    ``head.fc.*``); ``adapt_state_dict`` maps official files.
    """

    def __init__(self, config: PlainMambaConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = ConvPatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d))
        self.layers = nn.ModuleList(
            PlainMambaBlock(config, with_dwconv=i in config.layers_with_dwconv) for i in range(config.depth)
        )
        self.ln1 = nn.LayerNorm(d, eps=config.final_norm_eps)
        self.head = ClsHead(d, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: mmcls init_cfg (trunc-normal 0.02 Linear with zero bias, LayerNorm 1 / 0),
        trunc-normal 0.02 position embedding and ``direction_Bs``, and (our choice, see the docs)
        Mamba's dt initialisation kept for ``dt_proj``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rank = self.config.rank
        for layer in self.layers:
            mixer = layer.mamba
            nn.init.trunc_normal_(mixer.direction_Bs, std=0.02)
            init_dt_proj(mixer.dt_proj, rank)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(images) + self.pos_embed

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return adapt_plainmamba_state_dict(state_dict, self.config)

    def scan_gaps(self, state: TokenState) -> Gaps:
        """Per snake direction, in that scan's order: full-path positions skipped before each step.

        Step j of direction k scans the token with the j-th smallest rank along path k; its gap is the
        number of path cells between it and the previous scanned token (0 for the first step), which
        is what ``selective_scan``'s ``gap`` means.
        """
        paths = snake_paths(self.config.grid, self.config.grid, str(state.positions.device))
        _, ranks = scan_orders(state.positions, paths)
        gaps = ranks.diff(dim=-1) - 1
        gaps = torch.cat((torch.zeros_like(gaps[..., :1]), gaps), dim=-1)
        return tuple(gaps.unbind(0))

    def layer_inputs(self, state: TokenState) -> dict[str, torch.Tensor]:
        """Blocks need where each token sits in the grid (conv2d and the snake orders)."""
        return {"positions": state.positions}

    def final_features(self, hidden: torch.Tensor, residual: torch.Tensor, state: TokenState) -> torch.Tensor:
        """Final LayerNorm on the stream, then the size-weighted token mean (dense: the official mean)."""
        stream = residual + hidden.to(residual.dtype)
        features = self.ln1(stream.to(self.ln1.weight.dtype))
        return readout(features, state)


def adapt_plainmamba_state_dict(
    state_dict: dict[str, torch.Tensor], config: PlainMambaConfig
) -> dict[str, torch.Tensor]:
    """An official mmcls checkpoint's ``state_dict`` in this model's layout.

    - ``backbone.`` prefixes are stripped (``head.fc.*`` is kept as is);
    - ``ema_*`` entries are dropped: buffers mmcv's EMA hooks register on the classifier (one per
      parameter, ``ema_backbone_layers_0_...``) if the file was saved with one; they duplicate weights;
    - ``pos_embed`` is resampled (bicubic, as mmcls ``resize_pos_embed``) when the checkpoint's grid
      differs from the model's.
    """
    adapted = {}
    for key, value in state_dict.items():
        if key.startswith("ema_"):
            continue
        adapted[key.removeprefix("backbone.")] = value
    pos = adapted.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != config.num_patches:
        adapted["pos_embed"] = resample_pos_embed(pos, config.grid, None, None)
    return adapted


# ---------------------------------------------------------------------------------------------------
# FLOPs


def plainmamba_block_flops(
    config: PlainMambaConfig, tokens: int, index: int = 0, convention: Convention = "full"
) -> LayerFlops:
    """MACs of one PlainMamba block on ``tokens`` tokens (the convs counted at the current tokens)."""
    L, D, E, N, R = tokens, config.embed_dim, config.d_inner, config.d_state, config.rank
    K2, dirs = config.conv_size**2, NUM_DIRECTIONS
    dw = index in config.layers_with_dwconv
    if convention == "paper":  # mmcv get_model_complexity_info + the official get_ssm_flops
        parts = {
            "norm": 2 * L * D,
            "in_proj": L * D * 2 * E,
            "conv2d": K2 * L * E + L * E,
            "x_proj": L * E * (R + 2 * N),
            "dt_proj": L * R * E,
            "out_proj": L * E * D,
            "scan": dirs * (SCAN_MACS_PER_STATE * L * E * N + L * E),
        }
        if dw:
            parts["dwconv"] = 9 * L * D + 2 * L * D  # conv, BatchNorm (GELU not counted by mmcv)
        return LayerFlops(index, tokens, parts)
    parts = {
        "add_norm": 5 * L * D,  # residual add, LayerNorm (mean, variance, normalise, affine)
        "in_proj": L * D * 2 * E + 2 * L * E,
        "conv2d": K2 * L * E + 2 * L * E,  # depthwise 7x7 + bias + SiLU
        "x_proj": L * E * (R + 2 * N),
        "dt_proj": L * R * E + L * E,
        "direction_B": dirs * L * N,
        "softplus": dirs * 2 * L * E,  # second bias + softplus, in every scan
        "scan": dirs * SCAN_MACS_PER_STATE * L * E * N,
        "skip": dirs * L * E,  # D * u
        "combine_gate": 3 * L * E + 2 * L * E,  # sum of four scans, SiLU(z), product
        "out_proj": L * E * D + L * D,
    }
    if config.layer_scale is not None:
        parts["layer_scale"] = L * D
    if dw:
        parts["dwconv"] = 9 * L * D + 2 * L * D + L * D  # 3x3 depthwise, BatchNorm, GELU
    return LayerFlops(index, tokens, parts)


def plainmamba_embed_flops(config: PlainMambaConfig, convention: Convention = "full") -> dict[str, int]:
    """Stem, extra convs and projection (the same in both conventions) plus, in ``full``, the pos embed."""
    c, s, m, d = config.stem_channels, config.stem_size, config.num_patches, config.embed_dim
    pixels = s * s * c
    embed = {
        "stem": pixels * config.in_chans * 49 + 3 * pixels,  # 7x7 conv, BN (2), ReLU
        "convs": config.num_convs_patch_embed * (pixels * c * 9 + 3 * pixels),
        "projection": m * d * c * (config.patch_size // 2) ** 2 + m * d,
    }
    if convention == "full":
        embed["pos_embed"] = m * d
    return embed


@count_flops.register
def _plainmamba_flops(
    config: PlainMambaConfig,
    tokens_per_layer: Sequence[int] | None = None,
    convention: Convention = "full",
    overhead: dict[int, int] | None = None,
) -> FlopsReport:
    tokens_per_layer = check_token_counts(config, tokens_per_layer, convention)
    D, last = config.embed_dim, tokens_per_layer[-1]
    embed = plainmamba_embed_flops(config, convention)
    if convention == "paper":  # final LayerNorm; mmcls's forward_dummy stops before the head
        final = {"norm": 2 * last * D}
    else:
        final = {"norm_pool": 5 * last * D, "head": D * config.num_classes}  # LayerNorm, mean; head
    layers = [plainmamba_block_flops(config, t, i, convention) for i, t in enumerate(tokens_per_layer)]
    return FlopsReport(convention, embed, layers, final, dict(overhead or {}))
