"""The selective scan in standard tensor ops only, no per-token node: what ONNX and other runtimes run.

The recurrence s_t = d_t * s_{t-1} + b_t (d_t = exp(a_t), a_t = decay_t * A <= 0, b_t = delta_t u_t B_t)
is solved in chunks of ``CHUNK`` tokens, all chunks at once: a loop of ``CHUNK`` steps over the
(batch, chunks, ...) slices gives each chunk's local states (from a zero start) and its cumulative
log-decay S_t; the states at the chunks' ends follow the same recurrence one level up (decay exp(S_end),
input the local end state), solved the same way; then s_t = local_t + exp(S_t) * s_start. The graph has
about CHUNK * log_CHUNK(L) small steps per scan (17 for 197 tokens), the work stays O(L E N).

Numerically it is the reference loop's arithmetic regrouped: every factor is a decay <= 1 and every
product of decays is formed as exp of a sum of log-decays, so nothing can overflow in float32. Log-
decays (and their sums) are clamped at -CLAMP = -80 before exp: exp(-80) = 1.8e-35 is still a normal
float32, so no denormal (slow on CPUs) is ever produced, and the error, at most 1.8e-35 of the previous
state, is none at float32's resolution (6e-8). Positive log-decays (a growing state; never produced by
Mamba's A = -exp(A_log) with delta >= 0) are not clamped. Measured against the reference scan in
tests/test_chunked_scan.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

CHUNK = 8
CLAMP = 80.0


def _sequential(log_decay: Tensor, inputs: Tensor) -> Tensor:
    """The loop itself along dim 1, for at most CHUNK steps (the recursion's last level)."""
    decay = torch.exp(log_decay.clamp(min=-CLAMP))
    states = [decay[:, 0] * torch.zeros_like(inputs[:, 0]) + inputs[:, 0]]  # the loop's first step, as
    # the reference does it: with one token, A still gets its (zero) gradient
    for t in range(1, inputs.shape[1]):
        states.append(decay[:, t] * states[-1] + inputs[:, t])
    return torch.stack(states, dim=1)


def linear_recurrence(log_decay: Tensor, inputs: Tensor) -> Tensor:
    """States s_t = exp(log_decay_t) * s_{t-1} + inputs_t along dim 1 (s_{-1} = 0), same shape."""
    length = inputs.shape[1]
    if length <= CHUNK:
        return _sequential(log_decay, inputs)
    pad = (-length) % CHUNK
    trailing = [0, 0] * (inputs.ndim - 2)
    a = F.pad(log_decay.clamp(min=-CLAMP), [*trailing, 0, pad])  # padded steps: decay 1, input 0
    b = F.pad(inputs, [*trailing, 0, pad])
    chunks = a.shape[1] // CHUNK
    a = a.unflatten(1, (chunks, CHUNK))
    b = b.unflatten(1, (chunks, CHUNK))
    d = torch.exp(a)
    local, cum = [b[:, :, 0]], [a[:, :, 0]]
    for t in range(1, CHUNK):
        local.append(d[:, :, t] * local[-1] + b[:, :, t])
        cum.append(cum[-1] + a[:, :, t])
    local, cum = torch.stack(local, dim=2), torch.stack(cum, dim=2)
    ends = linear_recurrence(cum[:, :, -1], local[:, :, -1])  # the true states at the chunks' ends
    starts = F.pad(ends[:, :-1], [*trailing, 1, 0])  # each chunk starts from the previous one's end
    states = local + torch.exp(cum.clamp(min=-CLAMP)) * starts[:, :, None]
    return states.flatten(1, 2)[:, :length]


def discretized(
    u: Tensor,
    delta: Tensor,
    A: Tensor,  # noqa: N803
    B: Tensor,  # noqa: N803
    delta_bias: Tensor | None,
    delta_softplus: bool,
    gap: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """(log-decay a_t * A, input delta_t u_t B_t), both (batch, length, E, N), in u's compute dtype:
    the reference scan's discretisation, gaps included, for the vectorised implementations."""
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B = (t.to(dtype) for t in (u, delta, A, B))  # noqa: N806
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    decay = delta
    if gap is not None:  # the previous token's delta in scan order (zero before the first)
        prev = F.pad(delta[:, 1:], [0, 0, 0, 1]) if reverse else F.pad(delta[:, :-1], [0, 0, 1, 0])
        decay = delta + gap.to(dtype)[..., None] * prev
    return decay[..., None] * A, (delta * u)[..., None] * B[:, :, None, :]


def readout(states: Tensor, u: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:  # noqa: N803
    """y_t = <s_t, C_t> + D u_t, gated by silu(z), in the states' dtype."""
    y = (states * C.to(states.dtype)[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + u.to(states.dtype) * D.to(states.dtype)
    if z is not None:
        y = y * F.silu(z.to(states.dtype))
    return y


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
    log_decay, inputs = discretized(u, delta, A, B, delta_bias, delta_softplus, gap, reverse)
    if reverse:
        states = linear_recurrence(log_decay.flip(1), inputs.flip(1)).flip(1)
    else:
        states = linear_recurrence(log_decay, inputs)
    return readout(states, u, C, D, z).to(u.dtype)
