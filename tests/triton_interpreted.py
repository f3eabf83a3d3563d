"""impl="triton": the Triton kernels against the reference loops, on the CPU in Triton's interpreter.

Run by tests/test_triton.py in a child process with TRITON_INTERPRET=1 (Triton reads it when it is
imported, so it must be set before the process imports triton); directly:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/triton_interpreted.py

Not named test_*.py, so an ordinary run does not collect it. The interpreter runs each kernel op in
numpy: the shapes are tiny.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_scan import make_inputs, run  # noqa: E402

from mambatr.ops import (  # noqa: E402
    causal_conv1d,
    causal_conv1d_reference,
    dispatch,
    last_impl,
    selective_scan,
)

if not dispatch.triton_interpreter():
    pytest.skip("needs TRITON_INTERPRET=1 (see tests/test_triton.py)", allow_module_level=True)


def assert_grads_close(grads, expected, rtol, atol):
    assert grads.keys() == expected.keys()
    for name in grads:
        scale = expected[name].abs().max().clamp(min=1)  # summed gradients (A, B, C, D) grow with the sums
        torch.testing.assert_close(grads[name], expected[name], rtol=rtol, atol=atol * scale, msg=name)


SCAN_CASES = [
    # batch, length, E, N, D, z, bias, softplus, gap, reverse
    (2, 1, 5, 3, True, True, True, True, True, False),  # L = 1, with a gap before the only token
    (2, 7, 19, 5, True, True, True, True, True, False),
    (2, 7, 19, 5, True, True, True, True, True, True),
    (1, 13, 16, 1, False, False, False, False, False, False),  # N = 1
    (2, 9, 40, 4, True, False, True, True, True, True),  # two channel blocks, the second partial
    (2, 5, 8, 6, False, True, False, False, True, False),
    (1, 4, 3, 300, True, True, True, True, True, True),  # N > 256: one channel per backward program
]


@pytest.mark.parametrize("case", SCAN_CASES)
def test_scan_matches_reference_float32(case):
    batch, length, E, N, D, z, bias, softplus, gap, reverse = case
    inputs, gaps = make_inputs(batch, length, E, N, D=D, z=z, bias=bias, gap=gap)
    grad_out = torch.randn(batch, length, E, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run("reference", inputs, gaps, softplus, reverse, grad_out)
    y, grads = run("triton", inputs, gaps, softplus, reverse, grad_out)
    assert last_impl()["selective_scan"] == "triton"
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=2e-6)
    assert_grads_close(grads, g_ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("chunks", [4, 13, 100])  # 4: the last chunk shorter; 13: one step each; 100 > L
@pytest.mark.parametrize("gap, reverse", [(False, False), (True, True)])
def test_chunked_forward_matches_reference(monkeypatch, chunks, gap, reverse):
    """$MAMBATR_TRITON_CHUNKS: the forward in chunks of time, combined across programs (the backward
    stays sequential): values and gradients as the sequential scan's."""
    monkeypatch.setenv("MAMBATR_TRITON_CHUNKS", str(chunks))
    inputs, gaps = make_inputs(2, 13, 40, 5, D=True, z=True, bias=True, gap=gap)
    grad_out = torch.randn(2, 13, 40, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run("reference", inputs, gaps, True, reverse, grad_out)
    y, grads = run("triton", inputs, gaps, True, reverse, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=2e-6)
    assert_grads_close(grads, g_ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_gap_runs_at_both_ends(reverse):
    """Pruned runs before the first and after the last kept token (in both scan orders), as HSA makes
    them: the gap counts of a compacted sequence of 5 kept positions out of 12."""
    kept, length = [2, 3, 4, 8, 10], 12
    gaps = torch.zeros(2, len(kept), dtype=torch.long)
    order = kept[::-1] if reverse else kept
    previous = length if reverse else -1
    for position in order:  # pruned positions between the previous kept one (or the edge) and this one
        gaps[:, kept.index(position)] = abs(position - previous) - 1
        previous = position
    assert gaps[0].tolist() == ([0, 0, 3, 1, 1] if reverse else [2, 0, 0, 3, 1])
    inputs, _ = make_inputs(2, len(kept), 6, 3)
    grad_out = torch.randn(2, len(kept), 6, generator=torch.Generator().manual_seed(2))
    y_ref, g_ref = run("reference", inputs, gaps, True, reverse, grad_out)
    y, grads = run("triton", inputs, gaps, True, reverse, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=2e-6)
    assert_grads_close(grads, g_ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_low_precision_inputs(dtype):
    """bf16/fp16 activations (A, D, delta_bias stay float32 parameters), float32 inside: against the
    reference in float32 on the same rounded inputs; outputs and gradients in the inputs' dtypes."""
    inputs, gaps = make_inputs(2, 6, 12, 4, gap=True)
    low = {k: v.to(dtype) if v is not None and v.dim() == 3 else v for k, v in inputs.items()}
    rounded = {k: v.float() if v is not None else v for k, v in low.items()}
    grad_out = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(1)).to(dtype)
    y_ref, g_ref = run("reference", rounded, gaps, True, True, grad_out.float())
    y, grads = run("triton", low, gaps, True, True, grad_out)
    assert y.dtype == dtype and all(grads[k].dtype == low[k].dtype for k in grads)
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    assert_grads_close({k: g.float() for k, g in grads.items()}, g_ref, rtol=2e-2, atol=1e-2)


def test_scan_float64_matches_reference_exactly():
    inputs, gaps = make_inputs(2, 5, 7, 3, dtype=torch.float64, gap=True)
    grad_out = torch.randn(2, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run("reference", inputs, gaps, True, True, grad_out)
    y, grads = run("triton", inputs, gaps, True, True, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert_grads_close(grads, g_ref, rtol=1e-11, atol=1e-12)


def test_scan_strided_inputs():
    """u and z halves of one in_proj output, B and C slices of one x_proj output, strided delta."""
    batch, length, E, N, R = 2, 5, 8, 3, 2
    g = torch.Generator().manual_seed(3)
    xz = torch.randn(batch, length, 2 * E, generator=g)
    x_dbl = torch.randn(batch, length, R + 2 * N, generator=g)
    delta = torch.randn(batch, length * 2, E, generator=g)[:, ::2]
    A = -torch.rand(E, N, generator=g)
    results = []
    for impl in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (xz, x_dbl)]
        u, z = leaves[0].chunk(2, dim=-1)
        _, B, C = leaves[1].split([R, N, N], dim=-1)
        y = selective_scan(u, delta, A, B, C, None, z, delta_softplus=True, reverse=True, impl=impl)
        results.append((y, *torch.autograd.grad(y.sum(), leaves)))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=2e-6)


def strided_far_apart(rows: torch.Tensor, stride: int) -> torch.Tensor | None:
    """(1, L, E) bfloat16 whose row t starts at element t * stride of one buffer (L - 1) * stride + E long:
    t * stride passes 2**31 with the stride itself below it. Only the rows' pages are touched; None when
    the buffer (4 GiB of address space) cannot be reserved."""
    length, E = rows.shape
    try:
        buffer = torch.empty((length - 1) * stride + E, dtype=torch.bfloat16)
    except RuntimeError:
        return None
    x = buffer.as_strided((1, length, E), (buffer.numel(), stride, 1))
    x[0] = rows
    return x


def test_offsets_past_2_to_the_31():
    """Rows 2**30 elements apart: row 2's offset is 2**31, which 32-bit offsets would wrap."""
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(3, 8, generator=g).to(torch.bfloat16)
    x = strided_far_apart(rows, 2**30)
    if x is None:
        pytest.skip("cannot reserve 4 GiB of address space for the far-apart rows")
    w = torch.randn(8, 4, generator=g)
    y = causal_conv1d(x, w, None, impl="triton")
    torch.testing.assert_close(
        y.float(), causal_conv1d_reference(rows[None].float(), w), rtol=1e-2, atol=1e-2
    )
    delta, B, C = (torch.rand(1, 3, n, generator=g) for n in (8, 2, 2))
    A = -torch.rand(8, 2, generator=g)
    x.requires_grad_()
    y = selective_scan(x, delta, A, B, C, impl="triton")
    (du,) = torch.autograd.grad(y.float().sum(), x)
    dense = rows[None].float().requires_grad_()
    want = selective_scan(dense, delta, A, B, C, impl="reference")
    (du_want,) = torch.autograd.grad(want.sum(), dense)
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(du.float(), du_want, rtol=2e-2, atol=2e-2)


CONV_SHAPES = [  # batch, length, E, K, bias
    (2, 1, 5, 4, True),  # L = 1
    (2, 6, 19, 3, False),
    (1, 9, 70, 1, True),  # two channel blocks
    (2, 17, 7, 2, True),  # two time blocks
]


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_matches_reference(shape, silu, reverse):
    batch, length, E, K, bias = shape
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(batch, length, E, generator=g), torch.randn(E, K, generator=g)
    b = torch.randn(E, generator=g) if bias else None
    grad_out = torch.randn(x.shape, generator=g)
    outputs = []
    for impl in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        y = causal_conv1d(*leaves, *([] if bias else [None]), silu=silu, reverse=reverse, impl=impl)
        outputs.append((y, *torch.autograd.grad(y, leaves, grad_out)))
    assert last_impl()["causal_conv1d"] == "triton"
    for got, want in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6 * want.abs().max().clamp(min=1).item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_conv_other_dtypes(dtype):
    g = torch.Generator().manual_seed(2)
    xz = torch.randn(2, 7, 12, generator=g)
    x = xz.to(dtype).chunk(2, dim=-1)[0].requires_grad_()  # strided rows
    w, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    y = causal_conv1d(x, w, b, reverse=True, impl="triton")
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert y.dtype == dx.dtype == dtype
    x_ref = x.detach().double().requires_grad_()
    want = causal_conv1d_reference(x_ref, w.double(), b.double(), reverse=True)
    (dx_ref,) = torch.autograd.grad(want.sum(), x_ref)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y.double(), want, **tol)
    torch.testing.assert_close(dx.double(), dx_ref, **tol)


def test_impl_choice(monkeypatch):
    inputs, _ = make_inputs(1, 3, 4, 2)
    selective_scan(**inputs)
    assert last_impl()["selective_scan"] == "cpu"  # auto on CPU tensors: the C++ kernels, interpreter or not
    monkeypatch.setenv("MAMBATR_OPS_IMPL", "triton")
    selective_scan(**inputs)
    assert last_impl()["selective_scan"] == "triton"
