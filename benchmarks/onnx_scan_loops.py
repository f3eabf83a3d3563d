"""Candidate ONNX formulations of the selective scan built on ONNX ``Scan`` (torch's ``scan``
higher-order op, which torch.onnx exports as ``Scan`` with the body as a subgraph), to compare with
mambatr's loop-free chunked scan (``mambatr.ops.chunked_scan``) in benchmarks/onnx_variants.py:

* ``scan_token``: one Scan step per token, the state (batch, E, N) carried; each step forms its own
  decay and input from the (batch, E) / (batch, N) rows, so no (batch, L, E, N) tensor exists at all;
* ``scan_chunk``: one Scan step per chunk of ``chunked_scan.CHUNK`` tokens, the body the plain loop
  over the chunk's tokens (from the carried state), its (batch, CHUNK, E, N) terms formed in the body:
  no cumulative sums, no second level, no correction pass.

Same semantics as the reference scan (gaps, reverse, D, z); tests/test_onnx_scan_loops.py checks
them against it as tests/test_chunked_scan.py checks the chunked scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan

from mambatr.ops import chunked_scan
from mambatr.ops.chunked_scan import CLAMP, skip_and_gate, step_terms

Tensor = torch.Tensor


def _terms(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias, softplus, gap, reverse):  # noqa: N803
    """(decay timescale, delta * u) rows and A, B, C, all in the compute dtype."""
    decay, drive = step_terms(u, delta, delta_bias, softplus, gap, reverse)
    return decay, drive, A.to(decay.dtype), B.to(decay.dtype), C.to(decay.dtype)


def scan_token(
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
    """One Scan step per token on the (batch, E, N) state."""
    decay, drive, A, B, C = _terms(u, delta, A, B, C, delta_bias, delta_softplus, gap, reverse)  # noqa: N806

    def step(state: Tensor, rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        dec, dtu, b, c = rows
        state = torch.exp((dec[..., None] * A).clamp(min=-CLAMP)) * state + dtu[..., None] * b[:, None, :]
        return state, (state @ c[..., None]).squeeze(-1)

    init = decay.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    _, y = scan(step, init, (decay, drive, B, C), dim=1, reverse=reverse)
    return skip_and_gate(y, u, D, z).to(u.dtype)


def scan_chunk(
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
    """One Scan step per chunk of CHUNK tokens, the loop over its tokens unrolled in the body."""
    if reverse:  # the forward scan of the flipped sequence, as in chunked_scan
        u, delta, B, C, z, gap = (None if t is None else t.flip(1) for t in (u, delta, B, C, z, gap))  # noqa: N806
        return scan_chunk(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap).flip(1)
    decay, drive, A, B, C = _terms(u, delta, A, B, C, delta_bias, delta_softplus, gap, False)  # noqa: N806
    length, size = u.shape[1], chunked_scan.CHUNK
    chunks = -(-length // size)

    def chunked(t: Tensor) -> Tensor:  # (chunks, batch, CHUNK, X); padded steps: decay 1, input 0
        return F.pad(t, [0, 0, 0, chunks * size - length]).unflatten(1, (chunks, size)).transpose(0, 1)

    def step(state: Tensor, rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        dec, dtu, b, c = rows
        decays = torch.exp((dec[..., None] * A).clamp(min=-CLAMP)).unbind(1)
        states = []
        for d, x in zip(decays, (dtu[..., None] * b[:, :, None, :]).unbind(1), strict=True):
            state = d * state + x
            states.append(state)
        return state.clone(), (torch.stack(states, 1) @ c[..., None]).squeeze(-1)  # clone: no aliasing

    init = decay.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    _, y = scan(step, init, tuple(chunked(t) for t in (decay, drive, B, C)))
    return skip_and_gate(y.transpose(0, 1).flatten(1, 2)[:, :length], u, D, z).to(u.dtype)


SCANS = {"scan_token": scan_token, "scan_chunk": scan_chunk}
