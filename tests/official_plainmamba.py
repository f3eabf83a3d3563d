"""An independent functional PlainMamba forward, written from ChenhongyiYang/PlainMamba's math.

Plain loops on purpose: the four scan orders are walked cell by cell as the official
``get_permute_order`` does, the scan is mamba_ssm's ``selective_scan_ref`` loop over time in the
(batch, channels, length) layout, the conv is a dense conv2d on the grid, and the official quirks are
spelled out (dt_proj's bias twice; delta / B / C in raster order while u is permuted; direction_Bs
indexed by the scan step's arrival code). Weights come as a state dict with the official key names
(the mmcls ``backbone.`` prefix already stripped).

``mixer_on_subset`` is the same mixer on a subset of grid cells, token by token, as documented for
token reduction in docs/plainmamba.md; on the full grid it is the official mixer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

START, RIGHT, LEFT, UP, DOWN = range(5)


def _walk_rows(height, width, row, row_step, col, right):
    """Zig-zag over rows from (row, col); arrival code of every visited cell."""
    order, codes, move = [], [], START
    while 0 <= row < height:
        order.append(row * width + col)
        codes.append(move)
        if right and col < width - 1:
            col, move = col + 1, RIGHT
        elif not right and col > 0:
            col, move = col - 1, LEFT
        else:
            row, move, right = row + row_step, DOWN if row_step > 0 else UP, not right
    return order, codes


def _walk_cols(height, width, col, col_step, row, down):
    order, codes, move = [], [], START
    while 0 <= col < width:
        order.append(row * width + col)
        codes.append(move)
        if down and row < height - 1:
            row, move = row + 1, DOWN
        elif not down and row > 0:
            row, move = row - 1, UP
        else:
            col, move, down = col + col_step, RIGHT if col_step > 0 else LEFT, not down
    return order, codes


def official_orders(height: int, width: int):
    """(orders, inverse orders, arrival codes per scan step) of the four official paths."""
    paths = [
        _walk_rows(height, width, 0, 1, 0, True),
        # the second path starts where the first ends: bottom row, at its right end when H is odd
        _walk_rows(height, width, height - 1, -1, width - 1, False)
        if height % 2
        else _walk_rows(height, width, height - 1, -1, 0, True),
        _walk_cols(height, width, 0, 1, 0, True),
        _walk_cols(height, width, width - 1, -1, height - 1, False)
        if width % 2
        else _walk_cols(height, width, width - 1, -1, 0, True),
    ]
    orders = [order for order, _ in paths]
    inverses = []
    for order in orders:
        inverse = [-1] * (height * width)
        for step, cell in enumerate(order):
            inverse[cell] = step
        inverses.append(inverse)
    return orders, inverses, [codes for _, codes in paths]


def selective_scan_ref(u, delta, A, B, C, D, delta_bias, gap=None):
    """mamba_ssm's loop: u, delta (b, d, l); B, C (b, n, l); bias + softplus on delta.

    ``gap`` (b, l): extra decay steps with the previous step's delta (mambatr's hidden-state alignment).
    """
    delta = F.softplus(delta + delta_bias[..., None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        decay = delta[:, :, t]
        if gap is not None and t > 0:
            decay = decay + gap[:, t, None] * delta[:, :, t - 1]
        state = (
            torch.exp(decay[..., None] * A) * state
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=2) + u * D[:, None]


def _linear(p, name, x):
    bias = p.get(f"{name}.bias")
    y = x @ p[f"{name}.weight"].T
    return y if bias is None else y + bias


def _mixer_projections(p, pre, x):
    """in_proj split into (x, z)."""
    xz = _linear(p, f"{pre}in_proj", x)
    return xz.chunk(2, dim=-1)


def official_mixer(p: dict, pre: str, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PlainMamba2D.forward on (B, H*W, D) tokens in raster order."""
    batch, length, _ = x.shape
    xx, z = _mixer_projections(p, pre, x)
    E = xx.shape[-1]
    w = p[f"{pre}conv2d.weight"]
    grid = xx.reshape(batch, height, width, E).permute(0, 3, 1, 2)
    grid = F.silu(F.conv2d(grid, w, p[f"{pre}conv2d.bias"], padding=w.shape[-1] // 2, groups=E))
    x_conv = grid.permute(0, 2, 3, 1).reshape(batch, length, E)
    rank = p[f"{pre}dt_proj.weight"].shape[1]
    n = p[f"{pre}A_log"].shape[1]
    dt, Bm, Cm = (x_conv @ p[f"{pre}x_proj.weight"].T).split([rank, n, n], dim=-1)
    dt = _linear(p, f"{pre}dt_proj", dt)  # bias applied here ...
    dt, Bm, Cm = dt.transpose(1, 2), Bm.transpose(1, 2), Cm.transpose(1, 2)  # raster order, not permuted
    A = -torch.exp(p[f"{pre}A_log"])
    orders, inverses, codes = official_orders(height, width)
    ys = []
    for order, inverse, code in zip(orders, inverses, codes, strict=True):
        offset = p[f"{pre}direction_Bs"][code].T[None]  # (1, N, L), indexed by scan step
        u = x_conv[:, order, :].transpose(1, 2)
        y = selective_scan_ref(
            u, dt, A, Bm + offset, Cm, p[f"{pre}D"], p[f"{pre}dt_proj.bias"]
        )  # ... and here
        ys.append(y.transpose(1, 2)[:, inverse, :])
    y = sum(ys) * F.silu(z)
    out = _linear(p, f"{pre}out_proj", y)
    gamma = p.get(f"{pre}gamma")
    return out if gamma is None else out * gamma


def mixer_on_subset(
    p: dict, pre: str, x: torch.Tensor, positions: torch.Tensor, height: int, width: int, align: bool
):
    """The mixer on tokens (B, L, D) at sorted raster ``positions`` (B, L), one image and step at a time.

    Returns the output (B, L, D) and, per direction, (y_ungated, delta, B, C) per token (B, L, ...),
    each token's values being those of the scan step that processed it.
    """
    batch, length, _ = x.shape
    xx, z = _mixer_projections(p, pre, x)
    E = xx.shape[-1]
    w = p[f"{pre}conv2d.weight"]
    x_conv = torch.zeros_like(xx)
    for b in range(batch):
        grid = xx.new_zeros(E, height, width)
        for t, cell in enumerate(positions[b].tolist()):
            grid[:, cell // width, cell % width] = xx[b, t]
        grid = F.conv2d(grid[None], w, p[f"{pre}conv2d.bias"], padding=w.shape[-1] // 2, groups=E)[0]
        for t, cell in enumerate(positions[b].tolist()):
            x_conv[b, t] = grid[:, cell // width, cell % width]
    x_conv = F.silu(x_conv)
    rank = p[f"{pre}dt_proj.weight"].shape[1]
    n = p[f"{pre}A_log"].shape[1]
    dt, Bm, Cm = (x_conv @ p[f"{pre}x_proj.weight"].T).split([rank, n, n], dim=-1)
    dt = _linear(p, f"{pre}dt_proj", dt)
    A = -torch.exp(p[f"{pre}A_log"])
    D, bias, offsets = p[f"{pre}D"], p[f"{pre}dt_proj.bias"], p[f"{pre}direction_Bs"]
    orders, inverses, codes = official_orders(height, width)
    directions = []
    for order, inverse, code in zip(orders, inverses, codes, strict=True):
        y_dir = torch.zeros_like(x_conv)
        d_tok, c_tok = torch.zeros_like(x_conv), torch.zeros_like(Cm)
        b_tok = torch.zeros_like(Bm)
        for b in range(batch):
            index = {cell: t for t, cell in enumerate(positions[b].tolist())}
            steps = [cell for cell in order if cell in index]  # the full path, restricted to the tokens
            state = x.new_zeros(E, n)
            for j, cell in enumerate(steps):
                t = index[cell]
                delta = F.softplus(dt[b, j] + bias)  # step j reads sequence slot j (the official quirk)
                decay = delta
                if align and j > 0:
                    skipped = inverse[cell] - inverse[steps[j - 1]] - 1
                    decay = delta + skipped * F.softplus(dt[b, j - 1] + bias)
                b_j = Bm[b, j] + offsets[code[inverse[cell]]]
                state = torch.exp(decay[:, None] * A) * state + (delta * x_conv[b, t])[:, None] * b_j[None]
                y_dir[b, t] = state @ Cm[b, j] + D * x_conv[b, t]
                d_tok[b, t], b_tok[b, t], c_tok[b, t] = delta, b_j, Cm[b, j]
        directions.append((y_dir, d_tok, b_tok, c_tok))
    y = sum(d[0] for d in directions) * F.silu(z)
    out = _linear(p, f"{pre}out_proj", y)
    gamma = p.get(f"{pre}gamma")
    return (out if gamma is None else out * gamma), directions


def _batch_norm(p, name, x):
    return F.batch_norm(
        x,
        p[f"{name}.running_mean"],
        p[f"{name}.running_var"],
        p[f"{name}.weight"],
        p[f"{name}.bias"],
        eps=1e-5,
    )


def _dw(p, pre, x, positions, height, width):
    """The L1 layer-0 ``dw``: 3x3 depthwise conv (zero grid outside the tokens), BN (eval), GELU."""
    batch, length, d = x.shape
    out = torch.zeros_like(x)
    for b in range(batch):
        grid = x.new_zeros(d, height, width)
        for t, cell in enumerate(positions[b].tolist()):
            grid[:, cell // width, cell % width] = x[b, t]
        grid = F.conv2d(grid[None], p[f"{pre}dw.0.weight"], padding=1, groups=d)[0]
        for t, cell in enumerate(positions[b].tolist()):
            out[b, t] = grid[:, cell // width, cell % width]
    out = _batch_norm(p, f"{pre}dw.1", out.reshape(-1, d)).reshape(batch, length, d)
    return F.gelu(out)


def official_layer(p, i, x, height, width, positions=None, align=False):
    """PlainMambaLayer: x + mamba(LayerNorm(x)), then dw where the layer has it."""
    pre = f"layers.{i}."
    normed = F.layer_norm(x, x.shape[-1:], p[f"{pre}norm.weight"], p[f"{pre}norm.bias"], eps=1e-5)
    if positions is None:
        mixed = official_mixer(p, f"{pre}mamba.", normed, height, width)
        positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    else:
        mixed, _ = mixer_on_subset(p, f"{pre}mamba.", normed, positions, height, width, align)
    x = x + mixed
    if f"{pre}dw.0.weight" in p:
        x = _dw(p, pre, x, positions, height, width)
    return x


def official_embed(p: dict, images: torch.Tensor, patch: int) -> torch.Tensor:
    """ConvPatchEmbed + pos_embed: stem, extra convs, "corner" padding, projection."""
    x = F.relu(
        _batch_norm(
            p, "patch_embed.stem.1", F.conv2d(images, p["patch_embed.stem.0.weight"], stride=2, padding=3)
        )
    )
    i = 0
    while f"patch_embed.convs.{i}.weight" in p:
        x = F.conv2d(x, p[f"patch_embed.convs.{i}.weight"], padding=1)
        x = F.relu(_batch_norm(p, f"patch_embed.convs.{i + 1}", x))
        i += 3
    k = patch // 2
    pad_h = (math.ceil(x.shape[2] / k) - 1) * k + k - x.shape[2]
    pad_w = (math.ceil(x.shape[3] / k) - 1) * k + k - x.shape[3]
    x = F.pad(x, (0, pad_w, 0, pad_h))
    x = F.conv2d(x, p["patch_embed.projection.weight"], p["patch_embed.projection.bias"], stride=k)
    grid = x.shape[2:]
    return x.flatten(2).transpose(1, 2) + p["pos_embed"], grid


def official_forward(
    p: dict, images: torch.Tensor, patch: int, keep: dict | None = None, align: bool = False
) -> torch.Tensor:
    """Logits of the official classifier (backbone, mean-pool neck, LinearClsHead).

    ``keep``: {layer: positions (B, K)}: after that layer only the tokens at those positions survive
    (pruning, as HSA does), and later layers run ``mixer_on_subset`` (``align``: with gaps).
    """
    x, (height, width) = official_embed(p, images, patch)
    depth = 1 + max(int(k.split(".")[1]) for k in p if k.startswith("layers."))
    positions = None
    for i in range(depth):
        x = official_layer(p, i, x, height, width, positions, align)
        if keep and i in keep:
            current = positions if positions is not None else torch.arange(x.shape[1]).expand(x.shape[0], -1)
            rows = [
                [t for t, cell in enumerate(current[b].tolist()) if cell in set(keep[i][b].tolist())]
                for b in range(x.shape[0])
            ]
            x = torch.stack([x[b, rows[b]] for b in range(x.shape[0])])
            positions = keep[i]
    x = F.layer_norm(x, x.shape[-1:], p["ln1.weight"], p["ln1.bias"], eps=1e-6)
    return _linear(p, "head.fc", x.mean(dim=1))


def official_state_shapes(
    embed_dims: int,
    num_layers: int,
    num_convs_patch_embed: int,
    layers_with_dwconv=(),
    patch_size: int = 16,
    grid: int = 14,
    in_channels: int = 3,
    num_classes: int = 1000,
    d_state: int = 16,
    expand: int = 2,
    conv_size: int = 7,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an mmcls ImageClassifier(PlainMamba, CustomAveragePooling, LinearClsHead),
    as ``model.state_dict()`` names them (``backbone.`` / ``head.`` prefixes included)."""
    E, R, N = expand * embed_dims, math.ceil(embed_dims / 16), d_state
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name, channels):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{suffix}"] = (channels,)
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["backbone.pos_embed"] = (1, grid * grid, embed_dims)
    shapes["backbone.patch_embed.stem.0.weight"] = (64, in_channels, 7, 7)
    bn("backbone.patch_embed.stem.1", 64)
    for i in range(num_convs_patch_embed):
        shapes[f"backbone.patch_embed.convs.{3 * i}.weight"] = (64, 64, 3, 3)
        bn(f"backbone.patch_embed.convs.{3 * i + 1}", 64)
    shapes["backbone.patch_embed.projection.weight"] = (embed_dims, 64, patch_size // 2, patch_size // 2)
    shapes["backbone.patch_embed.projection.bias"] = (embed_dims,)
    for i in range(num_layers):
        pre = f"backbone.layers.{i}."
        shapes[f"{pre}norm.weight"] = shapes[f"{pre}norm.bias"] = (embed_dims,)
        shapes[f"{pre}mamba.in_proj.weight"] = (2 * E, embed_dims)
        shapes[f"{pre}mamba.in_proj.bias"] = (2 * E,)
        shapes[f"{pre}mamba.conv2d.weight"] = (E, 1, conv_size, conv_size)
        shapes[f"{pre}mamba.conv2d.bias"] = (E,)
        shapes[f"{pre}mamba.x_proj.weight"] = (R + 2 * N, E)
        shapes[f"{pre}mamba.dt_proj.weight"] = (E, R)
        shapes[f"{pre}mamba.dt_proj.bias"] = (E,)
        shapes[f"{pre}mamba.A_log"] = (E, N)
        shapes[f"{pre}mamba.D"] = (E,)
        shapes[f"{pre}mamba.out_proj.weight"] = (embed_dims, E)
        shapes[f"{pre}mamba.out_proj.bias"] = (embed_dims,)
        shapes[f"{pre}mamba.direction_Bs"] = (5, N)
        if i in layers_with_dwconv:
            shapes[f"{pre}dw.0.weight"] = (embed_dims, 1, 3, 3)
            bn(f"{pre}dw.1", embed_dims)
    shapes["backbone.ln1.weight"] = shapes["backbone.ln1.bias"] = (embed_dims,)
    shapes["head.fc.weight"] = (num_classes, embed_dims)
    shapes["head.fc.bias"] = (num_classes,)
    return shapes
