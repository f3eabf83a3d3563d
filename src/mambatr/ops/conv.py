"""Depthwise causal conv1d entry point and its implementations (see docs/scan.md).

Semantics and layout are those of :func:`mambatr.ops.reference.causal_conv1d_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambatr.ops import _cpu_kernels, dispatch
from mambatr.ops.reference import causal_conv1d_reference

Tensor = torch.Tensor


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    silu: bool = True,
    reverse: bool = False,
    impl: str = "auto",
) -> Tensor:
    """Conv over time of x (batch, length, E) with weight (E, K); ``impl`` as in mambatr.ops.dispatch."""
    chosen = dispatch.resolve("causal_conv1d", impl, x.device)
    if chosen == "triton":  # imported here: triton is optional, and reads TRITON_INTERPRET at import
        from mambatr.ops.triton_conv import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, silu, reverse)
    fn = {
        "reference": causal_conv1d_reference,
        "cpu": causal_conv1d_cpu,
        "torch": causal_conv1d_torch,
        "chunked": causal_conv1d_torch,  # already standard ops: what "chunked" (ONNX export) runs
        "cuda": causal_conv1d_cuda,
    }[chosen]
    return fn(x, weight, bias, silu, reverse)


def causal_conv1d_cpu(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True, reverse: bool = False
) -> Tensor:
    """The C++ kernel; computes in float32 (float64 for float64 x) and returns x's dtype."""
    _cpu_kernels.load()
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(dtype)
    xc = xc if xc.stride(-1) == 1 else xc.contiguous()
    w = weight.to(dtype).contiguous()
    b = None if bias is None else bias.to(dtype).contiguous()
    # an operator with a fake kernel and an autograd formula (mambatr.ops.registration); the backward
    # recomputes the pre-activation for SiLU's gradient
    return torch.ops.mambatr.conv_fwd(xc, w, b, silu, reverse).to(x.dtype)


def causal_conv1d_torch(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True, reverse: bool = False
) -> Tensor:
    """F.conv1d in layout (batch, E, length) with the transposes and flips mambatr's layout needs."""
    length, kernel = x.shape[1], weight.shape[1]
    xt = x.transpose(1, 2)
    if reverse:
        xt = xt.flip(-1)
    b = None if bias is None else bias.to(x.dtype)
    y = F.conv1d(xt, weight.to(x.dtype)[:, None], b, padding=kernel - 1, groups=weight.shape[0])[..., :length]
    if reverse:
        y = y.flip(-1)
    y = y.transpose(1, 2)
    return F.silu(y) if silu else y


def causal_conv1d_cuda(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True, reverse: bool = False
) -> Tensor:
    """The `causal_conv1d` package's CUDA kernel (layout (batch, E, length), channels-last strides)."""
    from causal_conv1d import causal_conv1d_fn

    xt = (x.flip(1) if reverse else x).transpose(1, 2)
    b = None if bias is None else bias.to(x.dtype)
    y = causal_conv1d_fn(xt, weight.to(x.dtype), b, activation="silu" if silu else None).transpose(1, 2)
    return y.flip(1) if reverse else y
