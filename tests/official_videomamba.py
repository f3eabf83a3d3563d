"""A plain functional transcription of OpenGVLab/VideoMamba's forward math, for tests.

Written from ``videomamba/video_sm/models/videomamba.py`` (video), ``videomamba/image_sm/models/
videomamba.py`` (image) and ``mamba/mamba_ssm/modules/mamba_simple.py`` (``bimamba=True`` fast path:
``mamba_inner_fn_no_out_proj`` on ``xz`` and on ``xz.flip(-1)``, summed after flipping back, no /2),
in the official (B, channels, L) layout, with explicit flips and mamba_ssm's python-loop reference scan.
It shares nothing with ``mambatr`` (nor with ``official_vim.py``): tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_loop(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm ``selective_scan_ref`` with delta_softplus: u, delta, z (b, e, l); B, C (b, n, l)."""
    delta = F.softplus(delta + delta_bias[:, None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # (b, e, n)
        state = decay * state + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        outputs.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(outputs, dim=2) + u * D[:, None]
    return y * F.silu(z)


def inner_no_out_proj(xz, p, suffix, a_key, d_key):
    """``mamba_inner_fn_no_out_proj``: causal conv + SiLU, x_proj, dt_proj (no bias), scan, gate."""
    x, z = xz.chunk(2, dim=1)
    length = x.shape[-1]
    weight = p[f"conv1d{suffix}.weight"]
    x = F.conv1d(x, weight, p[f"conv1d{suffix}.bias"], padding=weight.shape[-1] - 1, groups=x.shape[1])
    x = F.silu(x[..., :length])
    x_dbl = F.linear(x.transpose(1, 2), p[f"x_proj{suffix}.weight"])  # (b, l, R + 2N)
    dt_weight = p[f"dt_proj{suffix}.weight"]
    rank, n = dt_weight.shape[1], p[a_key].shape[1]
    dt = x_dbl[..., :rank] @ dt_weight.T  # (b, l, e)
    B = x_dbl[..., rank : rank + n].transpose(1, 2)
    C = x_dbl[..., -n:].transpose(1, 2)
    A = -torch.exp(p[a_key])
    return selective_scan_loop(x, dt.transpose(1, 2), A, B, C, p[d_key], z, p[f"dt_proj{suffix}.bias"])


def mamba_bimamba(u, p):
    """``Mamba.forward`` with ``bimamba=True`` on u (b, l, d): out_proj(forward + flip(backward(flip)))."""
    batch, length, dim = u.shape
    xz = p["in_proj.weight"] @ u.permute(2, 0, 1).reshape(dim, batch * length)  # "b l d -> d (b l)"
    xz = xz.reshape(-1, batch, length).permute(1, 0, 2)  # "d (b l) -> b d l"
    out = inner_no_out_proj(xz, p, "", "A_log", "D")
    out_b = inner_no_out_proj(xz.flip([-1]), p, "_b", "A_b_log", "D_b")
    return F.linear((out + out_b.flip([-1])).transpose(1, 2), p["out_proj.weight"])


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def blocks_and_head(sd, x):
    """The block loop with fused add + RMSNorm (prenorm, residual kept), then add + norm_f, cls 0, head."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    hidden, residual = x, None
    for i in range(depth):
        prefix = f"layers.{i}."
        p = {k[len(prefix + "mixer.") :]: v for k, v in sd.items() if k.startswith(prefix + "mixer.")}
        residual = hidden if residual is None else residual + hidden
        hidden = mamba_bimamba(rms_norm(residual, sd[prefix + "norm.weight"]), p)
    features = rms_norm(residual + hidden, sd["norm_f.weight"])
    return F.linear(features[:, 0, :], sd["head.weight"], sd["head.bias"])


def official_video_forward(sd, videos):
    """``video_sm`` VisionMamba.forward on videos (B, C, T, H, W), embedding step by step as official."""
    weight = sd["patch_embed.proj.weight"]  # (D, C, 1, p, p)
    x = F.conv3d(videos, weight, sd["patch_embed.proj.bias"], stride=weight.shape[2:])
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
    cls_token = sd["cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat((cls_token, x), dim=1)
    x = x + sd["pos_embed"]
    cls_tokens = x[:B, :1, :]
    x = x[:, 1:]
    x = x.reshape(B, T, H * W, C).permute(0, 2, 1, 3).reshape(B * H * W, T, C)  # (b t) n m -> (b n) t m
    x = x + sd["temporal_pos_embedding"]
    x = x.reshape(B, H * W, T, C).permute(0, 2, 1, 3).reshape(B, T * H * W, C)  # (b n) t m -> b (t n) m
    x = torch.cat((cls_tokens, x), dim=1)
    return blocks_and_head(sd, x)


def official_image_forward(sd, images, stride):
    """``image_sm`` VisionMamba.forward on images (B, C, H, W): cls first, pos_embed, blocks, head."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1) + sd["pos_embed"]
    return blocks_and_head(sd, x)


def official_key_shapes(
    embed_dim: int,
    depth: int,
    num_classes: int,
    num_frames: int | None = None,
    img_size: int = 224,
    patch: int = 16,
    in_chans: int = 3,
    d_state: int = 16,
    d_conv: int = 4,
) -> dict[str, tuple[int, ...]]:
    """Every state-dict key and shape of an official model (``num_frames``: video, else image),
    from the official module tree: PatchEmbed.proj, cls_token, pos_embed, [temporal_pos_embedding],
    head, layers.i.{norm, mixer (Mamba with bimamba)}, norm_f."""
    d, e, n = embed_dim, 2 * embed_dim, d_state
    r = -(-embed_dim // 16)
    grid = img_size // patch
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, grid * grid + 1, d),
        "patch_embed.proj.weight": (d, in_chans, patch, patch)
        if num_frames is None
        else (d, in_chans, 1, patch, patch),
        "patch_embed.proj.bias": (d,),
        "head.weight": (num_classes, d),
        "head.bias": (num_classes,),
        "norm_f.weight": (d,),
    }
    if num_frames is not None:
        shapes["temporal_pos_embedding"] = (1, num_frames, d)
    for i in range(depth):
        p = f"layers.{i}."
        shapes[p + "norm.weight"] = (d,)
        shapes[p + "mixer.in_proj.weight"] = (2 * e, d)
        shapes[p + "mixer.out_proj.weight"] = (d, e)
        shapes[p + "mixer.A_log"] = (e, n)
        shapes[p + "mixer.A_b_log"] = (e, n)
        shapes[p + "mixer.D"] = (e,)
        shapes[p + "mixer.D_b"] = (e,)
        for s in ("", "_b"):
            shapes[p + f"mixer.conv1d{s}.weight"] = (e, 1, d_conv)
            shapes[p + f"mixer.conv1d{s}.bias"] = (e,)
            shapes[p + f"mixer.x_proj{s}.weight"] = (r + 2 * n, e)
            shapes[p + f"mixer.dt_proj{s}.weight"] = (e, r)
            shapes[p + f"mixer.dt_proj{s}.bias"] = (e,)
    return shapes


def distill_head_shapes(embed_dim: int, teacher_dim: int = 384) -> dict[str, tuple[int, ...]]:
    """``videomamba_distill.py`` student: distill_head = Sequential(RMSNorm(D), Linear(D, teacher))."""
    return {
        "distill_head.0.weight": (embed_dim,),
        "distill_head.1.weight": (teacher_dim, embed_dim),
        "distill_head.1.bias": (teacher_dim,),
    }
