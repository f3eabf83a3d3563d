"""Depthwise causal conv1d in Triton (``impl="triton"``), forward and backward; see docs/scan.md.

Each program computes a (time block x channel block) tile from K shifted loads of the input, in
float32 (float64 for float64 inputs), with the bias and SiLU fused. The backward is two kernels: the
first recomputes the pre-activation for SiLU's gradient and reduces the weight and bias gradients per
tile, the second gathers the input gradient from the K shifted output gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from mambatr.ops import dispatch
from mambatr.ops.triton_launch import Launch, keep_whole_when_traced

Tensor = torch.Tensor

# The kernels below are decorated for Triton's interpreter iff TRITON_INTERPRET is set at this import.
INTERPRETED = dispatch.triton_interpreter()


@triton.jit
def _tile(pid_t, pid_e, L, E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """This program's time rows (int64: row * row stride can pass 2**31) and channels, with masks."""
    t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    return t, e, t < L, e < E


@triton.jit
def _source(t, k, K: tl.constexpr, REVERSE: tl.constexpr):
    """The input row that tap k reads for output row t."""
    if REVERSE:
        src = t + (K - 1 - k)
    else:
        src = t - (K - 1 - k)
    return src


@triton.jit
def _pre_activation(x, w, bias, b, t, e, me, L, s_xb, s_xt, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                    REVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    """bias + sum_k w_k x_{source(t, k)} for the tile, in the weights' (compute) dtype."""
    acc = tl.zeros([BLOCK_T, BLOCK_E], w.dtype.element_ty)
    for k in tl.static_range(K):
        src = _source(t, k, K, REVERSE)
        mask = ((src >= 0) & (src < L))[:, None] & me[None, :]
        x_k = tl.load(x + b * s_xb + src[:, None] * s_xt + e[None, :], mask=mask, other=0.0)
        acc += tl.load(w + e * K + k, mask=me, other=0.0)[None, :] * x_k.to(acc.dtype)
    if HAS_BIAS:
        acc += tl.load(bias + e, mask=me, other=0.0)[None, :]
    return acc


@triton.jit
def _conv_fwd(
    x, w, bias, y, L, E, s_xb, s_xt, s_yb, s_yt, K: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    t, e, mt, me = _tile(tl.program_id(1), tl.program_id(2), L, E, BLOCK_T, BLOCK_E)
    out = _pre_activation(x, w, bias, b, t, e, me, L, s_xb, s_xt, K, HAS_BIAS, REVERSE, BLOCK_T, BLOCK_E)
    if SILU:
        out *= tl.sigmoid(out)
    mask = mt[:, None] & me[None, :]
    tl.store(y + b * s_yb + t[:, None] * s_yt + e[None, :], out.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_params(
    x, w, bias, dout, dpre, dw_part, dbias_part, L, E, s_xb, s_xt, s_ob, s_ot,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Gradient of the pre-activation (stored when SiLU is fused) and per-tile weight/bias gradients."""
    b = tl.program_id(0).to(tl.int64)
    t, e, mt, me = _tile(tl.program_id(1), tl.program_id(2), L, E, BLOCK_T, BLOCK_E)
    mask = mt[:, None] & me[None, :]
    grad = tl.load(dout + b * s_ob + t[:, None] * s_ot + e[None, :], mask=mask, other=0.0)
    grad = grad.to(w.dtype.element_ty)
    if SILU:
        pre = _pre_activation(x, w, bias, b, t, e, me, L, s_xb, s_xt, K, HAS_BIAS, REVERSE, BLOCK_T, BLOCK_E)
        sig = tl.sigmoid(pre)
        grad *= sig * (1.0 + pre * (1.0 - sig))
        tl.store(dpre + (b * L + t[:, None]) * E + e[None, :], grad, mask=mask)
    tile = b * tl.num_programs(1) + tl.program_id(1)
    for k in tl.static_range(K):
        src = _source(t, k, K, REVERSE)
        src_mask = ((src >= 0) & (src < L))[:, None] & me[None, :]
        x_k = tl.load(x + b * s_xb + src[:, None] * s_xt + e[None, :], mask=src_mask, other=0.0)
        tl.store(dw_part + (tile * E + e) * K + k, tl.sum(grad * x_k.to(grad.dtype), 0), mask=me)
    tl.store(dbias_part + tile * E + e, tl.sum(grad, 0), mask=me)


@triton.jit
def _conv_bwd_input(
    w, grad, dx, L, E, s_gb, s_gt, K: tl.constexpr, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
):  # fmt: skip
    """dx_s = sum_k w_k * grad_{row that input s feeds through tap k}."""
    b = tl.program_id(0).to(tl.int64)
    s, e, ms, me = _tile(tl.program_id(1), tl.program_id(2), L, E, BLOCK_T, BLOCK_E)
    acc = tl.zeros([BLOCK_T, BLOCK_E], w.dtype.element_ty)
    for k in tl.static_range(K):
        if REVERSE:
            dst = s - (K - 1 - k)
        else:
            dst = s + (K - 1 - k)
        mask = ((dst >= 0) & (dst < L))[:, None] & me[None, :]
        g_k = tl.load(grad + b * s_gb + dst[:, None] * s_gt + e[None, :], mask=mask, other=0.0)
        acc += tl.load(w + e * K + k, mask=me, other=0.0)[None, :] * g_k.to(acc.dtype)
    mask = ms[:, None] & me[None, :]
    tl.store(dx + (b * L + s[:, None]) * E + e[None, :], acc.to(dx.dtype.element_ty), mask=mask)


BLOCK_T, BLOCK_E = 16, 64


def forward_launch(x, weight, bias, silu, reverse) -> tuple[Launch, Tensor]:
    """The forward kernel's launch and the output it writes."""
    batch, L, E = x.shape
    y = torch.empty(batch, L, E, dtype=x.dtype, device=x.device)
    grid = (batch, triton.cdiv(L, BLOCK_T), triton.cdiv(E, BLOCK_E))
    args = (x, weight, weight if bias is None else bias, y, L, E, *x.stride()[:2], *y.stride()[:2])
    flags = dict(K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu, REVERSE=reverse)
    return Launch(_conv_fwd, grid, args, dict(flags, BLOCK_T=BLOCK_T, BLOCK_E=BLOCK_E)), y


def backward_launches(x, weight, bias, silu, reverse, dout) -> tuple[list[Launch], dict]:
    """The two backward kernels' launches (run in order) and the buffers they write."""
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    batch, L, E = x.shape
    K = weight.shape[1]
    grid = (batch, triton.cdiv(L, BLOCK_T), triton.cdiv(E, BLOCK_E))
    dpre = torch.empty(batch, L, E, dtype=weight.dtype, device=x.device) if silu else dout
    out = dict(
        dx=torch.empty(batch, L, E, dtype=x.dtype, device=x.device),
        dw=torch.empty(batch * grid[1], E, K, dtype=weight.dtype, device=x.device),  # per time tile
        dbias=torch.empty(batch * grid[1], E, dtype=weight.dtype, device=x.device),
    )
    blocks = dict(REVERSE=reverse, BLOCK_T=BLOCK_T, BLOCK_E=BLOCK_E)
    params = Launch(
        _conv_bwd_params,
        grid,
        (x, weight, weight if bias is None else bias, dout, dpre, out["dw"], out["dbias"], L, E,
         *x.stride()[:2], *dout.stride()[:2]),
        dict(blocks, K=K, HAS_BIAS=bias is not None, SILU=silu),
    )  # fmt: skip
    inputs = Launch(
        _conv_bwd_input, grid, (weight, dpre, out["dx"], L, E, *dpre.stride()[:2]), dict(blocks, K=K)
    )
    return [params, inputs], out


@torch.library.triton_op("mambatr::triton_conv_fwd", mutates_args=())
def conv_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, reverse: bool) -> Tensor:
    """The forward kernel on :func:`_prepared` inputs: y, in x's dtype."""
    launch, y = forward_launch(x, weight, bias, silu, reverse)
    launch.run()
    return y


@torch.library.triton_op("mambatr::triton_conv_bwd", mutates_args=())
def conv_bwd(
    dout: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The two backward kernels (the first recomputes the pre-activation): (dx, dweight, dbias) in
    x's / the weight's dtype; dbias is zeros without bias (as the C++ ``mambatr::conv_bwd``)."""
    kernels, out = backward_launches(x, weight, bias, silu, reverse, dout)
    for launch in kernels:
        launch.run()
    return out["dx"], out["dw"].sum(0), out["dbias"].sum(0)


@conv_fwd.register_fake
def _conv_fwd_fake(x: Tensor, *_: object) -> Tensor:
    return x.new_empty(x.shape)


@conv_bwd.register_fake
def _conv_bwd_fake(dout: Tensor, x: Tensor, weight: Tensor, *_: object) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _conv_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    """Save only the inputs: the backward recomputes the pre-activation for SiLU's gradient."""
    x, weight, bias, silu, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.flags = (silu, reverse)


def _conv_backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = conv_bwd(dout, x, weight, bias, *ctx.flags)
    return dx, dweight, None if bias is None else dbias, None, None


conv_fwd.register_autograd(_conv_backward, setup_context=_conv_setup_context)
if INTERPRETED:
    for _op in (conv_fwd, conv_bwd):
        keep_whole_when_traced(_op)


def _prepared(x, weight, bias, silu, reverse) -> tuple:
    """The kernels' arguments: x with contiguous channels, weight and bias in the compute dtype
    (float32, float64 for float64 x)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (
        x if x.stride(-1) == 1 else x.contiguous(),
        weight.to(compute).contiguous(),
        None if bias is None else bias.to(compute).contiguous(),
        silu,
        reverse,
    )


def launches(x, weight, bias=None, silu=True, reverse=False) -> list[Launch]:
    """The forward and backward launches of that ``causal_conv1d_triton`` call, without running them
    (meta tensors work: what tests/test_triton_compile.py compiles for a GPU)."""
    prepared = _prepared(x, weight, bias, silu, reverse)
    forward, y = forward_launch(*prepared)
    return [forward, *backward_launches(*prepared, torch.empty_like(y))[0]]


def causal_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True, reverse: bool = False
) -> Tensor:
    """The Triton kernels; compute in float32 (float64 for float64 x) and return x's dtype.

    x is read in its dtype with its row strides; weight and bias are cast to the compute dtype
    (autograd casts their gradients back).
    """
    dispatch.check_triton_kernels("causal_conv1d", x.device, INTERPRETED)
    return conv_fwd(*_prepared(x, weight, bias, silu, reverse))
