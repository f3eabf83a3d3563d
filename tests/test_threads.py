"""The C++ kernels give bitwise identical outputs and gradients for any thread count.

Work is split into tasks that do not depend on the number of threads, and every reduction (dB, dC,
dA, dD, d delta_bias, the conv's weight and bias gradients) sums its partials in a fixed order.
"""

from __future__ import annotations

import pytest
import torch

from mambatr.ops import causal_conv1d, selective_scan


def _with_threads(threads: int, fn):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def _scan_outputs(gap: bool, reverse: bool, batch: int):
    g = torch.Generator().manual_seed(0)
    L, E, N = 23, 70, 16
    leaves = [
        torch.randn(batch, L, E, generator=g),
        torch.randn(batch, L, E, generator=g) * 0.5,
        -torch.rand(E, N, generator=g) * 4 - 0.1,
        torch.randn(batch, L, N, generator=g),
        torch.randn(batch, L, N, generator=g),
        torch.randn(E, generator=g),
        torch.randn(batch, L, E, generator=g),
        torch.randn(E, generator=g) * 0.3,
    ]
    leaves = [t.requires_grad_() for t in leaves]
    gaps = torch.randint(0, 3, (batch, L), generator=g) if gap else None
    u, delta, A, B, C, D, z, bias = leaves
    y = selective_scan(
        u, delta, A, B, C, D, z, bias, delta_softplus=True, gap=gaps, reverse=reverse, impl="cpu"
    )
    grads = torch.autograd.grad(y, leaves, torch.randn(y.shape, generator=g))
    return [y, *grads]


@pytest.mark.parametrize("gap", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_scan_thread_count_invariant(gap, reverse, batch):
    one = _with_threads(1, lambda: _scan_outputs(gap, reverse, batch))
    two = _with_threads(2, lambda: _scan_outputs(gap, reverse, batch))
    three = _with_threads(3, lambda: _scan_outputs(gap, reverse, batch))
    for a, b, c in zip(one, two, three, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def _conv_outputs(reverse: bool, batch: int):
    g = torch.Generator().manual_seed(1)
    leaves = [
        torch.randn(batch, 29, 70, generator=g),
        torch.randn(70, 4, generator=g),
        torch.randn(70, generator=g),
    ]
    leaves = [t.requires_grad_() for t in leaves]
    y = causal_conv1d(*leaves, silu=True, reverse=reverse, impl="cpu")
    return [y, *torch.autograd.grad(y, leaves, torch.randn(y.shape, generator=g))]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch", [1, 6])
def test_conv_thread_count_invariant(reverse, batch):
    one = _with_threads(1, lambda: _conv_outputs(reverse, batch))
    two = _with_threads(2, lambda: _conv_outputs(reverse, batch))
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_kernels_use_more_than_one_thread():
    """The extension is built with OpenMP: at::parallel_for really spreads work over threads."""
    from mambatr.ops import _cpu_kernels

    assert _with_threads(2, _cpu_kernels.parallel_threads) == 2
    assert _with_threads(1, _cpu_kernels.parallel_threads) == 1
