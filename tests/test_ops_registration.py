"""The C++ kernels are complete torch.library operators: schema, fake kernel, autograd formula and
AOT dispatch checked by torch.library.opcheck, for the scan (with and without gaps, D, z, bias, in both
directions) and the conv."""

from __future__ import annotations

import pytest
import torch

import mambatr.ops  # noqa: F401  (loads and registers the operators)
from mambatr.ops import _cpu_kernels


def scan_args(gap: bool, optional: bool, requires_grad: bool, reverse: bool):
    g = torch.Generator().manual_seed(0)
    batch, length, E, N = 2, 7, 6, 4
    rand = lambda *shape: torch.randn(*shape, generator=g).requires_grad_(requires_grad)
    A = (-torch.rand(E, N, generator=g) - 0.1).requires_grad_(requires_grad)
    gaps = torch.randint(0, 3, (batch, length), generator=g).float() if gap else None
    maybe = lambda *shape: rand(*shape) if optional else None
    return (
        rand(batch, length, E),
        rand(batch, length, E),
        A,
        rand(batch, length, N),
        rand(batch, length, N),
        maybe(E),
        maybe(batch, length, E),
        maybe(E),
        gaps,
        True,
        reverse,
    )


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize(
    "gap,optional,reverse", [(False, True, False), (True, True, True), (True, False, False)]
)
def test_scan_operator(gap, optional, reverse, requires_grad):
    _cpu_kernels.load()
    args = scan_args(gap, optional, requires_grad, reverse)
    torch.library.opcheck(torch.ops.mambatr.scan_fwd.default, args)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("bias,silu,reverse", [(True, True, False), (False, False, True)])
def test_conv_operator(bias, silu, reverse, requires_grad):
    _cpu_kernels.load()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 5, generator=g).requires_grad_(requires_grad)
    w = torch.randn(5, 4, generator=g).requires_grad_(requires_grad)
    b = torch.randn(5, generator=g).requires_grad_(requires_grad) if bias else None
    torch.library.opcheck(torch.ops.mambatr.conv_fwd.default, (x, w, b, silu, reverse))


def test_backward_operators_have_fake_kernels():
    """The backward ops appear in AOT-compiled training graphs: their fakes match the real outputs."""
    _cpu_kernels.load()
    args = scan_args(gap=True, optional=True, requires_grad=False, reverse=False)
    dout = torch.randn_like(args[0])
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.mambatr.scan_bwd.default, (dout, *args), test_utils=checks)
    x, w = torch.randn(2, 9, 5), torch.randn(5, 4)
    torch.library.opcheck(
        torch.ops.mambatr.conv_bwd.default, (torch.randn(2, 9, 5), x, w, None, True, False), test_utils=checks
    )


def test_compiled_training_step_matches_eager(tiny_vim):
    """AOTAutograd sees the ops' autograd formulas: a compiled forward and backward equal eager's."""
    model = tiny_vim()
    images = torch.randn(2, 3, 16, 16)
    eager = torch.autograd.grad(model(images).square().sum(), list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    grads = torch.autograd.grad(compiled(images).square().sum(), list(model.parameters()))
    for a, b in zip(grads, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
