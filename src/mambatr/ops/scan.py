"""Selective scan entry point and its implementations (see docs/scan.md).

Semantics and layout are those of :func:`mambatr.ops.reference.selective_scan_reference`.
"""

from __future__ import annotations

import torch

from mambatr.ops import _cpu_kernels, dispatch
from mambatr.ops.chunked_scan import discretized, readout, selective_scan_chunked
from mambatr.ops.reference import selective_scan_reference

Tensor = torch.Tensor


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    gap: Tensor | None = None,
    reverse: bool = False,
    impl: str = "auto",
) -> Tensor:
    """SSM scan over (batch, length, E) inputs; ``impl`` picks the backend (see mambatr.ops.dispatch)."""
    chosen = dispatch.resolve("selective_scan", impl, u.device, cuda_ok=gap is None)
    if chosen == "triton":  # imported here: triton is optional, and reads TRITON_INTERPRET at import
        from mambatr.ops.triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap, reverse)
    fn = {
        "reference": selective_scan_reference,
        "cpu": selective_scan_cpu,
        "torch": selective_scan_torch,
        "chunked": selective_scan_chunked,
        "cuda": selective_scan_mamba_ssm,
    }[chosen]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, gap, reverse)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Cast to the compute dtype, keeping row strides (the kernel needs only contiguous channels)."""
    if t is None:
        return None
    t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


def _dense(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype).contiguous()


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    gap: Tensor | None = None,
    reverse: bool = False,
) -> Tensor:
    """The C++ kernel; computes in float32 (float64 for float64 u) and returns u's dtype."""
    _cpu_kernels.load()
    dtype = _compute_dtype(u.dtype)
    args = (
        _rows(u, dtype),
        _rows(delta, dtype),
        _dense(A, dtype),
        _rows(B, dtype),
        _rows(C, dtype),
        _dense(D, dtype),
        _rows(z, dtype),
        _dense(delta_bias, dtype),
        _dense(gap, dtype),
    )
    # an operator with a fake kernel and an autograd formula (mambatr.ops.registration): it saves only
    # the inputs, and only when a gradient is needed; the backward kernel recomputes the states
    y = torch.ops.mambatr.scan_fwd(*args, delta_softplus, reverse)
    return y.to(u.dtype)


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    gap: Tensor | None = None,
    reverse: bool = False,
) -> Tensor:
    """Vectorised PyTorch on any device: exp(delta*A) and delta*B*u precomputed, one loop over time.

    Materialises (batch, length, E, N) twice, so it is memory hungry; autograd does the backward.
    """
    log_decay, delta_bu = discretized(u, delta, A, B, delta_bias, delta_softplus, gap, reverse)
    length = u.shape[1]
    order = range(length - 1, -1, -1) if reverse else range(length)
    a_steps, bu_steps = torch.exp(log_decay).unbind(1), delta_bu.unbind(1)
    states: list[Tensor] = [a_steps[0]] * length
    state = torch.zeros_like(a_steps[0])
    for t in order:
        state = a_steps[t] * state + bu_steps[t]
        states[t] = state
    return readout(torch.stack(states, 1), u, C, D, z).to(u.dtype)


def selective_scan_mamba_ssm(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    gap: Tensor | None = None,
    reverse: bool = False,
) -> Tensor:
    """mamba_ssm's CUDA kernel, layout (batch, E, length): transposes, and flips for ``reverse``."""
    if gap is not None:
        raise ValueError("mamba_ssm's selective_scan_fn has no gap support; use impl='torch'")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def channels_first(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return (t.flip(1) if reverse else t).transpose(1, 2)

    y = selective_scan_fn(
        channels_first(u),
        channels_first(delta),
        A,
        channels_first(B),
        channels_first(C),
        D,
        channels_first(z),
        delta_bias,
        delta_softplus,
    ).transpose(1, 2)
    return y.flip(1) if reverse else y
