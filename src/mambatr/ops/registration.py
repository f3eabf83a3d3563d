"""The C++ kernels as complete ``torch.library`` operators: fake (meta) kernels and autograd formulas.

The C++ library defines ``mambatr::scan_fwd / scan_bwd / conv_fwd / conv_bwd`` with CPU kernels.
Registered here, beside them: a fake kernel per op (the output shapes, dtypes and strides, so
FakeTensor tracing, ``torch.compile``, ``torch.export`` and AOTAutograd see them as ops) and the
autograd formula of each forward op (the backward op recomputes the states from the saved inputs).
``mambatr.ops._cpu_kernels.load`` calls :func:`register` once, right after loading the library.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

_registered = False


def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse):  # noqa: N803
    return torch.empty_like(u, memory_format=torch.contiguous_format)


def _scan_bwd_fake(dout, u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse):  # noqa: N803
    batch, length, e = u.shape
    n = A.shape[1]
    rows, states, channels = (batch, length, e), (batch, length, n), (e,)
    dz = rows if z is not None else (0,)  # the kernel returns an empty dz without z
    shapes = (rows, rows, (e, n), states, states, channels, dz, channels)
    return [u.new_empty(shape) for shape in shapes]


def _scan_setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, gap, softplus, reverse = inputs  # noqa: N806
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, gap)
    ctx.flags = (softplus, reverse)


def _scan_backward(ctx, dout):
    u, delta, A, B, C, D, z, delta_bias, gap = ctx.saved_tensors  # noqa: N806
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    du, ddelta, dA, dB, dC, dD, dz, dbias = torch.ops.mambatr.scan_bwd(  # noqa: N806
        dout, u, delta, A, B, C, D, z, delta_bias, gap, *ctx.flags
    )
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        None if D is None else dD,
        None if z is None else dz,
        None if delta_bias is None else dbias,
        None,
        None,
        None,
    )


def _conv_fwd_fake(x, weight, bias, silu, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _conv_bwd_fake(dout, x, weight, bias, silu, reverse):
    batch, length, e = x.shape
    return [
        x.new_empty((batch, length, e)),
        weight.new_empty(weight.shape),
        x.new_empty((e,)),
    ]


def _conv_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, silu, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.flags = (silu, reverse)


def _conv_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.mambatr.conv_bwd(
        dout if dout.stride(-1) == 1 else dout.contiguous(), x, weight, bias, *ctx.flags
    )
    return dx, dweight, None if bias is None else dbias, None, None


def register() -> None:
    """Register the fake kernels and autograd formulas (once; the C++ library must be loaded)."""
    global _registered
    if _registered:
        return
    torch.library.register_fake("mambatr::scan_fwd", _scan_fwd_fake)
    torch.library.register_fake("mambatr::scan_bwd", _scan_bwd_fake)
    torch.library.register_fake("mambatr::conv_fwd", _conv_fwd_fake)
    torch.library.register_fake("mambatr::conv_bwd", _conv_bwd_fake)
    torch.library.register_autograd("mambatr::scan_fwd", _scan_backward, setup_context=_scan_setup_context)
    torch.library.register_autograd("mambatr::conv_fwd", _conv_backward, setup_context=_conv_setup_context)
    _registered = True
