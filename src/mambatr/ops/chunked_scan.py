"""The selective scan in standard tensor ops only, no per-token node: what ONNX and other runtimes run.

The recurrence s_t = d_t * s_{t-1} + b_t (d_t = exp(a_t), a_t = decay_t * A <= 0, b_t = delta_t u_t B_t)
is solved in chunks of ``CHUNK`` tokens, all chunks at once: a loop of ``CHUNK`` steps over the
(batch, chunks, ...) slices gives each chunk's local states (from a zero start) and its cumulative
log-decay S_t; the states at the chunks' ends follow the same recurrence one level up (decay exp(S_end),
input the local end state), solved the same way; then s_t = local_t + exp(S_t) * s_start. The graph has
about CHUNK * log_CHUNK(L) small steps per scan (27 for 197 tokens), the work stays O(L E N).

What costs in onnxruntime is each pass over a (batch, L, E, N) tensor (every node writes its output),
so those are formed once, already in chunk layout, and touched as few times as possible: the reverse
scan flips, and the padding to whole chunks pads, only the (batch, L, E) / (batch, L, N) inputs; S_t is
one cumulative sum; each loop takes its slices by one ``unbind``; the readout is a matrix product.
CHUNK = 16 measured fastest of 4 / 8 / 16 / 32 (benchmarks/onnx_variants.py, docs/deploy.md).

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

CHUNK = 16
CLAMP = 80.0


def _sequential(log_decay: Tensor, inputs: Tensor) -> Tensor:
    """The loop itself along dim 1, for at most CHUNK steps (the recursion's last level)."""
    decay = torch.exp(log_decay.clamp(min=-CLAMP))
    states = [decay[:, 0] * torch.zeros_like(inputs[:, 0]) + inputs[:, 0]]  # the loop's first step, as
    # the reference does it: with one token, A still gets its (zero) gradient
    for t in range(1, inputs.shape[1]):
        states.append(decay[:, t] * states[-1] + inputs[:, t])
    return torch.stack(states, dim=1)


def _within_chunks(a: Tensor, b: Tensor) -> Tensor:
    """States of s_t = exp(a_t) * s_{t-1} + b_t along dims (1, 2) of (batch, chunks, CHUNK, ...) tensors
    (``a`` clamped): each chunk's local states from a zero start by a loop of CHUNK - 1 steps over all
    chunks at once, its cumulative log-decay by one cumulative sum, the chunks' start states one level up.
    Each (batch, chunks, ...) slice is taken once (``unbind``: one Split in ONNX, not a node per step)."""
    decays, drives = torch.exp(a).unbind(2), b.unbind(2)
    local = [drives[0]]
    for decay, drive in zip(decays[1:], drives[1:], strict=True):
        local.append(decay * local[-1] + drive)
    local = torch.stack(local, dim=2)
    cum = a.cumsum(dim=2)
    ends = linear_recurrence(cum[:, :, -1], local[:, :, -1])  # the true states at the chunks' ends
    starts = F.pad(ends[:, :-1], [0, 0] * (a.ndim - 3) + [1, 0])  # from the previous chunk's end
    return local + torch.exp(cum.clamp(min=-CLAMP)) * starts[:, :, None]


def linear_recurrence(log_decay: Tensor, inputs: Tensor) -> Tensor:
    """States s_t = exp(log_decay_t) * s_{t-1} + inputs_t along dim 1 (s_{-1} = 0), same shape."""
    length = inputs.shape[1]
    if length <= CHUNK:
        return _sequential(log_decay, inputs)
    chunks = -(-length // CHUNK)
    trailing = [0, 0] * (inputs.ndim - 2)
    pad = [*trailing, 0, chunks * CHUNK - length]  # padded steps: decay 1, input 0

    def chunked(t: Tensor) -> Tensor:
        return F.pad(t, pad).unflatten(1, (chunks, CHUNK))

    return _within_chunks(chunked(log_decay.clamp(min=-CLAMP)), chunked(inputs)).flatten(1, 2)[:, :length]


def step_terms(
    u: Tensor,
    delta: Tensor,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    gap: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """(decay timescale, delta * u), both (batch, length, E) in u's compute dtype (float64 for float64
    u, else float32): the reference scan's discretisation before A and B enter, gaps included."""
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    decay = delta
    if gap is not None:  # the previous token's delta in scan order (zero before the first)
        prev = F.pad(delta[:, 1:], [0, 0, 0, 1]) if reverse else F.pad(delta[:, :-1], [0, 0, 1, 0])
        decay = delta + gap.to(dtype)[..., None] * prev
    return decay, delta * u


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
    decay, drive = step_terms(u, delta, delta_bias, delta_softplus, gap, reverse)
    return decay[..., None] * A.to(decay.dtype), drive[..., None] * B.to(decay.dtype)[:, :, None, :]


def readout(states: Tensor, u: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:  # noqa: N803
    """y_t = <s_t, C_t> + D u_t, gated by silu(z), in the states' dtype."""
    return skip_and_gate((states * C.to(states.dtype)[:, :, None, :]).sum(-1), u, D, z)


def skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:  # noqa: N803
    """y + D u, gated by silu(z), in y's dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
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
    """The reference scan's semantics (mambatr.ops.reference), in float32 (float64 for float64 u).

    Only (batch, length, E) and (batch, length, N) tensors are flipped (a reverse scan is the forward
    scan of the flipped sequence, gaps included), padded to whole chunks and cut back; the
    (batch, length, E, N) terms are formed once, in chunk layout, and read out by a matrix product."""
    if reverse:
        u, delta, B, C, z, gap = (None if t is None else t.flip(1) for t in (u, delta, B, C, z, gap))  # noqa: N806
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap).flip(1)
    decay, drive = step_terms(u, delta, delta_bias, delta_softplus, gap, reverse=False)
    dtype, length = decay.dtype, u.shape[1]
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)  # noqa: N806
    if length <= CHUNK:
        states = _sequential(decay[..., None] * A, drive[..., None] * B[:, :, None, :])
        return readout(states, u, C, D, z).to(u.dtype)
    chunks = -(-length // CHUNK)

    def chunked(t: Tensor) -> Tensor:  # (batch, chunks, CHUNK, X); padded steps: decay 1, input 0
        return F.pad(t, [0, 0, 0, chunks * CHUNK - length]).unflatten(1, (chunks, CHUNK))

    log_decay = (chunked(decay)[..., None] * A).clamp(min=-CLAMP)
    states = _within_chunks(log_decay, chunked(drive)[..., None] * chunked(B)[..., None, :])
    y = (states @ chunked(C)[..., None]).squeeze(-1).flatten(1, 2)[:, :length]
    return skip_and_gate(y, u, D, z).to(u.dtype)
