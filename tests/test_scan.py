"""Selective scan: the C++ kernel, the PyTorch path and the chunked (ONNX) formulation against the
reference loop."""

from __future__ import annotations

import pytest
import torch

from mambatr.ops import last_impl, selective_scan, selective_scan_reference

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, length, E, N, dtype=torch.float32, D=True, z=True, bias=True, gap=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)
    inputs = {
        "u": rand(batch, length, E),
        "delta": rand(batch, length, E) * 0.5,
        "A": -torch.rand(E, N, generator=g, dtype=dtype) * 2 - 0.1,
        "B": rand(batch, length, N),
        "C": rand(batch, length, N),
        "D": rand(E) if D else None,
        "z": rand(batch, length, E) if z else None,
        "delta_bias": rand(E) * 0.3 if bias else None,
    }
    gaps = None
    if gap:
        gaps = torch.randint(0, 4, (batch, length), generator=g)
        gaps[:, 0] = 2  # a gap before the first token has no previous delta to decay with
    return inputs, gaps


def run(impl, inputs, gap, softplus, reverse, grad_out=None):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y = selective_scan(**leaves, delta_softplus=softplus, gap=gap, reverse=reverse, impl=impl)
    if grad_out is None:
        return y, {}
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out)
    return y, dict(zip(leaves, grads, strict=True))


CASES = [
    # batch, length, E, N, D, z, bias, softplus, gap, reverse
    (2, 1, 5, 3, True, True, True, True, False, False),
    (2, 7, 19, 5, True, True, True, True, True, False),
    (2, 7, 19, 5, True, True, True, True, True, True),
    (1, 13, 16, 1, False, False, False, False, False, False),
    (3, 9, 33, 4, True, False, True, True, True, True),
    (2, 5, 8, 6, False, True, False, False, True, False),
    (2, 31, 40, 16, True, True, True, True, False, True),
    (2, 11, 37, 23, True, True, True, True, True, False),  # N = 16 + 4 + 2 + 1: every chunk size
    (2, 12, 21, 8, True, True, True, True, True, True),  # N = 8: one pass with AVX2, chunked with AVX-512
]


@pytest.mark.parametrize("impl", ["cpu", "torch", "chunked"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_float32(impl, case):
    batch, length, E, N, D, z, bias, softplus, gap, reverse = case
    inputs, gaps = make_inputs(batch, length, E, N, D=D, z=z, bias=bias, gap=gap)
    grad_out = torch.randn(batch, length, E, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run("reference", inputs, gaps, softplus, reverse, grad_out)
    y, grads = run(impl, inputs, gaps, softplus, reverse, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == g_ref.keys()
    for name in grads:
        scale = g_ref[name].abs().max().clamp(min=1)  # summed gradients (A, B, C, D) grow with the sums
        torch.testing.assert_close(grads[name], g_ref[name], rtol=1e-5, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("gap,reverse", [(False, False), (True, False), (True, True)])
def test_gradcheck_float64(gap, reverse):
    inputs, gaps = make_inputs(2, 6, 11, 3, dtype=torch.float64, gap=gap)
    names = [k for k, v in inputs.items() if v is not None]
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def fn(*args):
        kwargs = dict(zip(names, args, strict=True))
        return selective_scan(**kwargs, delta_softplus=True, gap=gaps, reverse=reverse, impl="cpu")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_float64_matches_reference_exactly():
    inputs, gaps = make_inputs(2, 17, 21, 7, dtype=torch.float64, gap=True)
    y_ref = selective_scan_reference(**inputs, delta_softplus=True, gap=gaps)
    y = selective_scan(**inputs, delta_softplus=True, gap=gaps, impl="cpu")
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def test_strided_inputs():
    """B and C as slices of one x_proj output, u and z as halves of one in_proj output (no copies)."""
    batch, length, E, N, R = 2, 9, 24, 4, 3
    g = torch.Generator().manual_seed(3)
    xz = torch.randn(batch, length, 2 * E, generator=g)
    u, z = xz.chunk(2, dim=-1)
    x_dbl = torch.randn(batch, length, R + 2 * N, generator=g)
    _, B, C = x_dbl.split([R, N, N], dim=-1)
    delta = torch.randn(batch, length * 2, E, generator=g)[:, ::2]
    A = -torch.rand(E, N, generator=g)
    assert not (u.is_contiguous() or B.is_contiguous() or delta.is_contiguous())
    args = (u, delta, A, B, C, None, z)
    ref = selective_scan_reference(*args, delta_softplus=True, reverse=True)
    torch.testing.assert_close(selective_scan(*args, delta_softplus=True, reverse=True, impl="cpu"), ref)
    leaves = [t.detach().contiguous().requires_grad_() for t in (xz, x_dbl)]
    for impl in ("reference", "cpu"):
        xz_, x_dbl_ = leaves
        u_, z_ = xz_.chunk(2, dim=-1)
        _, B_, C_ = x_dbl_.split([R, N, N], dim=-1)
        y = selective_scan(u_, delta, A, B_, C_, None, z_, delta_softplus=True, impl=impl)
        grads = torch.autograd.grad(y.sum(), leaves)
        if impl == "reference":
            expected = grads
    torch.testing.assert_close(grads, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs():
    inputs, gaps = make_inputs(2, 8, 20, 4, gap=True)
    low = {k: (v.bfloat16() if v is not None and v.dim() == 3 else v) for k, v in inputs.items()}
    y_ref = selective_scan_reference(**low, delta_softplus=True, gap=gaps)
    y = selective_scan(**low, delta_softplus=True, gap=gaps, impl="cpu")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)
    u = low["u"].clone().requires_grad_()
    selective_scan(**{**low, "u": u}, delta_softplus=True, impl="cpu").float().sum().backward()
    assert u.grad is not None and u.grad.dtype == torch.bfloat16


def test_inference_saves_nothing():
    inputs, _ = make_inputs(1, 5, 8, 2)
    inputs["u"].requires_grad_()
    with torch.inference_mode():
        y = selective_scan(**inputs, impl="cpu")
    assert y.grad_fn is None
    y = selective_scan(**inputs, impl="cpu")
    assert y.grad_fn is not None
    assert last_impl()["selective_scan"] == "cpu"


def test_auto_picks_cpu_kernel(monkeypatch):
    inputs, _ = make_inputs(1, 4, 8, 2)
    selective_scan(**inputs)
    assert last_impl()["selective_scan"] == "cpu"
    monkeypatch.setenv("MAMBATR_OPS_IMPL", "torch")
    selective_scan(**inputs)
    assert last_impl()["selective_scan"] == "torch"
    with pytest.raises(ValueError):
        selective_scan(**inputs, impl="fast")


@pytest.mark.parametrize("reverse", [False, True])
def test_gap_is_zero_input_steps_with_previous_delta(reverse):
    """HSA definition: a compacted scan with gap counts equals the full scan in which each pruned
    position has zero input (u = 0, B = 0) and decays with the previous kept token's delta."""
    batch, E, N, length = 2, 10, 3, 12
    inputs, _ = make_inputs(batch, length, E, N)
    kept = [2, 3, 4, 8, 10]  # pruned runs before (in scan order) the first kept token in both directions
    order = kept[::-1] if reverse else kept
    gaps = torch.zeros(batch, len(kept), dtype=torch.long)
    u, B, delta = inputs["u"].clone(), inputs["B"].clone(), inputs["delta"].clone()
    scan_positions = list(range(length - 1, -1, -1)) if reverse else list(range(length))
    prev = None  # previous kept position in scan order
    for pos in scan_positions:
        if pos in kept:
            prev = pos
            continue
        u[:, pos], B[:, pos] = 0, 0  # pruned: no input ...
        if prev is not None:
            delta[:, pos] = inputs["delta"][:, prev]  # ... and the previous kept token's delta
        nxt = next((p for p in order if (p < pos if reverse else p > pos)), None)
        if nxt is not None:
            gaps[:, kept.index(nxt)] += 1
    assert gaps[:, kept.index(order[0])].min() > 0  # the first kept token has a gap too
    full = {**inputs, "u": u, "B": B, "delta": delta}
    y_full = selective_scan_reference(**full, delta_softplus=True, reverse=reverse)[:, kept]
    compact = {k: (v[:, kept] if v is not None and v.dim() == 3 else v) for k, v in inputs.items()}
    for impl in ("reference", "cpu", "torch"):
        y = selective_scan(**compact, delta_softplus=True, gap=gaps, reverse=reverse, impl=impl)
        torch.testing.assert_close(y, y_full, rtol=1e-5, atol=1e-5, msg=impl)
