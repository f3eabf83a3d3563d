"""An independent functional Vim forward written from hustvl/Vim's math (flip-based, (B, E, L) layout).

It mirrors the official code path: the backward branch flips x AND z, runs its own conv and scan, and
is flipped back; the scan is mamba_ssm's selective_scan_ref loop. Tests compare our model against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm's reference loop: u, delta, z (b, d, l); B, C (b, n, l); softplus on."""
    delta = F.softplus(delta + delta_bias[..., None])
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _branch(p: dict, xz: torch.Tensor, sfx: str, a_name: str, d_name: str, n_state: int) -> torch.Tensor:
    """One direction of the official mixer on (b, 2e, l): conv, x_proj, dt_proj, scan, gate."""
    xx, z = xz.chunk(2, dim=1)
    w = p[f"mixer.conv1d{sfx}.weight"]
    conv = F.conv1d(xx, w, p[f"mixer.conv1d{sfx}.bias"], padding=w.shape[-1] - 1, groups=xx.shape[1])
    xc = F.silu(conv[..., : xx.shape[-1]])
    dbl = xc.transpose(1, 2) @ p[f"mixer.x_proj{sfx}.weight"].T
    rank = p[f"mixer.dt_proj{sfx}.weight"].shape[1]
    dt, B, C = dbl.split([rank, n_state, n_state], dim=-1)
    delta = (dt @ p[f"mixer.dt_proj{sfx}.weight"].T).transpose(1, 2)
    A = -torch.exp(p[f"mixer.{a_name}"])
    return selective_scan_ref(
        xc,
        delta,
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        p[f"mixer.{d_name}"],
        z,
        p[f"mixer.dt_proj{sfx}.bias"],
    )


def official_forward(
    sd: dict,
    images: torch.Tensor,
    patch: int,
    stride: int,
    n_state: int,
    div2: bool = True,
    cls_mode: str = "middle",
) -> torch.Tensor:
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    m = x.shape[1]
    cls_index = m // 2 if cls_mode == "middle" else 0
    cls = sd["cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat((x[:, :cls_index], cls, x[:, cls_index:]), 1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    hidden, residual = x, None
    for i in range(depth):
        layer = {k[len(f"layers.{i}.") :]: v for k, v in sd.items() if k.startswith(f"layers.{i}.")}
        residual = hidden if residual is None else residual + hidden
        u = _rms(residual, layer["norm.weight"])
        xz = (u @ layer["mixer.in_proj.weight"].T).transpose(1, 2)  # (b, 2e, l)
        y_f = _branch(layer, xz, "", "A_log", "D", n_state)
        y_b = _branch(layer, xz.flip(-1), "_b", "A_b_log", "D_b", n_state).flip(-1)
        y = (y_f + y_b) / 2 if div2 else y_f + y_b
        hidden = y.transpose(1, 2) @ layer["mixer.out_proj.weight"].T
    feat = _rms(residual + hidden, sd["norm_f.weight"])
    return feat[:, cls_index] @ sd["head.weight"].T + sd["head.bias"]
