"""The selective scan in standard tensor ops only (no loop over time): what ONNX and other runtimes run.

The recurrence s_t = exp(a_t) * s_{t-1} + b_t (a_t = decay_t * A <= 0, b_t = delta_t u_t B_t) is solved
in chunks of ``CHUNK`` tokens, all chunks at once: with S_t the cumulative log-decay inside a chunk,

    s_t = exp(S_t - R) * cumsum_{s <= t}(exp(R - S_s) * b_s) + exp(S_t) * s_start,

where R is the midpoint of the chunk's S range, so no exponent exceeds CHUNK * CLAMP / 2 in
magnitude. The states at the chunks' ends follow the same recurrence one level up (log-decay S_end,
input the chunk's local end state), solved the same way, so the graph has about log_CHUNK(L) levels
and no per-token node.

Numerical stability in float32: each step's log-decay is clamped at -CLAMP (-20): a step that decays
the state by less than exp(-20) = 2e-9 is treated as decaying it by exactly that, an error of at most
2e-9 of the previous state, below float32's resolution (6e-8). With CHUNK = 4 the exponents stay
within +-40 (exp(40) = 2.4e17), far inside float32's range (3.4e38) for any input b below 1e20.
Positive log-decays (a growing state; never produced by Mamba's A = -exp(A_log) with delta >= 0)
are not clamped. Measured against the reference scan in tests/test_chunked_scan.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

CHUNK = 4
CLAMP = 20.0


def linear_recurrence(log_decay: Tensor, inputs: Tensor) -> Tensor:
    """States s_t = exp(log_decay_t) * s_{t-1} + inputs_t along dim 1 (s_{-1} = 0), same shape."""
    length = inputs.shape[1]
    pad = (-length) % CHUNK
    trailing = [0, 0] * (inputs.ndim - 2)
    a = F.pad(log_decay.clamp(min=-CLAMP), [*trailing, 0, pad])  # padded steps: decay 1, input 0
    b = F.pad(inputs, [*trailing, 0, pad])
    chunks = a.shape[1] // CHUNK
    a = a.unflatten(1, (chunks, CHUNK))
    b = b.unflatten(1, (chunks, CHUNK))
    cum = a.cumsum(dim=2)  # S_t: log-decay from the chunk's start to t, included
    ref = 0.5 * (cum[:, :, :1] + cum[:, :, -1:])
    local = torch.exp(cum - ref) * torch.cumsum(torch.exp(ref - cum) * b, dim=2)
    if chunks > 1:
        ends = linear_recurrence(cum[:, :, -1], local[:, :, -1])  # the states at the chunks' ends
        starts = F.pad(ends[:, :-1], [*trailing, 1, 0])  # each chunk starts from the previous end
        local = local + torch.exp(cum) * starts[:, :, None]
    return local.flatten(1, 2)[:, :length]


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,  # noqa: N803
    B: Tensor,  # noqa: N803
    C: Tensor,  # noqa: N803
    D: Tensor | None = None,  # noqa: N803
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    gap: Tensor | None = None,
    reverse: bool = False,
) -> Tensor:
    """The reference scan's semantics (mambatr.ops.reference), in float32 (float64 for float64 u)."""
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u_c, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))  # noqa: N806
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    decay = delta
    if gap is not None:  # the previous token's delta in scan order (zero before the first)
        prev = F.pad(delta[:, 1:], [0, 0, 0, 1]) if reverse else F.pad(delta[:, :-1], [0, 0, 1, 0])
        decay = delta + gap.to(dtype)[..., None] * prev
    log_decay = decay[..., None] * A  # (batch, length, E, N)
    inputs = (delta * u_c)[..., None] * B[:, :, None, :]
    if reverse:
        states = linear_recurrence(log_decay.flip(1), inputs.flip(1)).flip(1)
    else:
        states = linear_recurrence(log_decay, inputs)
    y = (states * C[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + u_c * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)
