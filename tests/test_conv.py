"""Depthwise causal conv1d: the C++ kernel and the F.conv1d path against the reference loop."""

from __future__ import annotations

import pytest
import torch

from mambatr.ops import causal_conv1d, causal_conv1d_reference, last_impl


def make_inputs(batch, length, E, K, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, E, generator=g, dtype=dtype)
    w = torch.randn(E, K, generator=g, dtype=dtype)
    b = torch.randn(E, generator=g, dtype=dtype) if bias else None
    return x, w, b


def run(impl, x, w, b, silu, reverse, grad_out):
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = causal_conv1d(*leaves, *([None] if b is None else []), silu=silu, reverse=reverse, impl=impl)
    return y, torch.autograd.grad(y, leaves, grad_out)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(2, 1, 5, 4), (2, 3, 19, 4), (3, 17, 40, 4), (1, 9, 16, 1), (2, 6, 7, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(impl, silu, reverse, shape, bias):
    x, w, b = make_inputs(*shape, bias=bias)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run("reference", x, w, b, silu, reverse, grad_out)
    y, grads = run(impl, x, w, b, silu, reverse, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().clamp(min=1))


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(reverse):
    x, w, b = make_inputs(2, 7, 11, 4, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    fn = lambda *a: causal_conv1d(*a, silu=True, reverse=reverse, impl="cpu")
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_strided_input_and_bfloat16():
    g = torch.Generator().manual_seed(2)
    xz = torch.randn(2, 9, 48, generator=g)
    x = xz.chunk(2, dim=-1)[0]
    _, w, b = make_inputs(2, 9, 24, 4)
    torch.testing.assert_close(causal_conv1d(x, w, b, impl="cpu"), causal_conv1d_reference(x, w, b))
    y = causal_conv1d(x.bfloat16(), w, b, reverse=True, impl="cpu")
    assert y.dtype == torch.bfloat16
    want = causal_conv1d_reference(x, w, b, reverse=True)
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)


def test_inference_saves_nothing():
    x, w, b = make_inputs(1, 5, 8, 4)
    w.requires_grad_()
    with torch.no_grad():
        assert causal_conv1d(x, w, b).grad_fn is None
    assert causal_conv1d(x, w, b).grad_fn is not None
    assert last_impl()["causal_conv1d"] == "cpu"
