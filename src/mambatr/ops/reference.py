"""Reference selective scan and depthwise causal conv: plain loops, the ground truth.

Layout used throughout mambatr (time-major rows, channels last):
    u, delta, z: (batch, length, channels E)      B, C: (batch, length, state N)
    A: (E, N)   D, delta_bias: (E,)   gap: (batch, length) integer or None

The fast kernels in this package must match these functions in values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    gap: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Run the SSM recurrence token by token.

    s_t = exp(a_t * A) * s_prev + delta_t * B_t * u_t,  y_t = <s_t, C_t> + D * u_t,
    with a_t = delta_t + gap_t * delta_prev: a gap of g pruned positions before token t
    (in scan order) lets the state decay g more steps with the previous token's delta.
    ``reverse`` scans from the last token to the first (the backward branch, no flips).
    The output is gated by silu(z) when z is given. Computes in float32 (or float64).
    """
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, B, C = (t.to(compute) for t in (u, delta, B, C))
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, length, channels = u.shape
    state = u.new_zeros(batch, channels, A.shape[1])
    prev_delta = u.new_zeros(batch, channels)
    ys = [None] * length
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        step = delta[:, t]
        decay = step if gap is None else step + gap[:, t, None].to(compute) * prev_delta
        state = torch.exp(decay[..., None] * A) * state + (step * u[:, t])[..., None] * B[:, t, None, :]
        ys[t] = (state * C[:, t, None, :]).sum(-1)
        prev_delta = step
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D.to(compute)
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(dtype_in)


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu: bool = True,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv over time, x (batch, length, E), weight (E, K).

    y_t = bias + sum_k weight[:, k] * x_{t-(K-1)+k}, zero padded on the left; optional SiLU.
    ``reverse`` is the same conv run on the time-flipped sequence, flipped back (anti-causal).
    """
    length, kernel = x.shape[1], weight.shape[1]
    out = torch.zeros_like(x) if bias is None else bias.expand_as(x).clone()
    for k in range(kernel):
        shift = kernel - 1 - k
        if shift >= length:
            continue
        if reverse:
            out[:, : length - shift] += weight[:, k] * x[:, shift:]
        else:
            out[:, shift:] += weight[:, k] * x[:, : length - shift]
    return F.silu(out) if silu else out
