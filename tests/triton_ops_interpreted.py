"""The Triton kernels as torch.library operators (``mambatr::triton_scan_fwd`` / ``_bwd``,
``mambatr::triton_conv_fwd`` / ``_bwd``), checked by torch.library.opcheck in Triton's interpreter, and
torch.compile of a function calling them.

Run by tests/test_triton.py in a child process with TRITON_INTERPRET=1 (see tests/triton_interpreted.py);
directly:

    TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/triton_ops_interpreted.py

Under the interpreter the ops are kept whole in AOTAutograd graphs (mambatr.ops.triton_launch.
keep_whole_when_traced): ``wrap_triton`` cannot trace an interpreted kernel, so opcheck's aot_dispatch
tests and torch.compile see each op as one node, with the fake kernels giving its shapes. Tiny shapes:
the interpreter runs every kernel op in numpy, and opcheck runs each op several times.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_scan import make_inputs  # noqa: E402

from mambatr.ops import causal_conv1d, dispatch, selective_scan  # noqa: E402

if not dispatch.triton_interpreter():
    pytest.skip("needs TRITON_INTERPRET=1 (see tests/test_triton.py)", allow_module_level=True)

from mambatr.ops import triton_conv, triton_scan  # noqa: E402, F401  (triton_conv: registers its ops)

EVERY_CHECK = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)
# the backward ops have no autograd formula of their own (no double backward)
BACKWARD_CHECKS = ("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic")


def scan_args(optional: bool, gap: bool, reverse: bool, requires_grad: bool) -> tuple:
    """The forward op's arguments, as selective_scan_triton prepares them (batch 2, L 4, E 5, N 3)."""
    inputs, gaps = make_inputs(2, 4, 5, 3, D=optional, z=optional, bias=optional, gap=gap)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    prepared = triton_scan._prepared(*(inputs[k] for k in names), True, gaps, reverse)
    leaf = lambda t: t.detach().clone().requires_grad_(requires_grad and t.is_floating_point())  # noqa: E731
    return tuple(leaf(t) if isinstance(t, torch.Tensor) else t for t in prepared)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize(
    "optional, gap, reverse, chunks", [(True, True, False, 1), (False, False, True, 1), (True, True, True, 2)]
)
def test_scan_forward_operator(optional, gap, reverse, chunks, requires_grad):
    args = (*scan_args(optional, gap, reverse, requires_grad), chunks)
    torch.library.opcheck(torch.ops.mambatr.triton_scan_fwd.default, args, test_utils=EVERY_CHECK)


@pytest.mark.parametrize("optional", [True, False])
def test_scan_backward_operator(optional):
    args = scan_args(optional, gap=True, reverse=optional, requires_grad=False)
    dout = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(
        torch.ops.mambatr.triton_scan_bwd.default, (dout, *args), test_utils=BACKWARD_CHECKS
    )


def conv_args(bias: bool, requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x (batch 2, L 5, E 3) and a K = 3 weight, with a bias or none."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 3, generator=g), torch.randn(3, 3, generator=g), torch.randn(3, generator=g)
    return (
        x.requires_grad_(requires_grad),
        w.requires_grad_(requires_grad),
        b.requires_grad_(requires_grad) if bias else None,
    )


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("bias, silu, reverse", [(True, True, False), (False, False, True)])
def test_conv_forward_operator(bias, silu, reverse, requires_grad):
    args = (*conv_args(bias, requires_grad), silu, reverse)
    torch.library.opcheck(torch.ops.mambatr.triton_conv_fwd.default, args, test_utils=EVERY_CHECK)


@pytest.mark.parametrize("bias, silu", [(True, True), (False, False)])
def test_conv_backward_operator(bias, silu):
    dout = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    args = (dout, *conv_args(bias, requires_grad=False), silu, True)
    torch.library.opcheck(torch.ops.mambatr.triton_conv_bwd.default, args, test_utils=BACKWARD_CHECKS)


def mixer_branch(x, w, b, delta, A, B, C, D):
    """A Vim branch's conv and scan through the public entry points, impl="triton"."""
    u = causal_conv1d(x, w, b, silu=True, impl="triton")
    return selective_scan(u, delta, A, B, C, D, z=x, delta_softplus=True, reverse=True, impl="triton")


def branch_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x, delta = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    A = -torch.rand(5, 3, generator=g) - 0.1
    tensors = [x, torch.randn(5, 3, generator=g), torch.randn(5, generator=g), delta, A]
    tensors += [
        torch.randn(2, 4, 3, generator=g),
        torch.randn(2, 4, 3, generator=g),
        torch.randn(5, generator=g),
    ]
    return [t.requires_grad_() for t in tensors]


def test_compiled_branch_has_no_graph_break_and_matches_eager():
    """torch.compile(fullgraph=True, backend="aot_eager"): one graph, calling the forward ops; values
    and every gradient as eager's."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    inputs = branch_inputs()
    eager = mixer_branch(*inputs)
    eager_grads = torch.autograd.grad(eager.square().sum(), inputs)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(mixer_branch, fullgraph=True, backend=counter)(*inputs)
    grads = torch.autograd.grad(compiled.square().sum(), inputs)
    assert counter.frame_count == 1
    targets = {node.target for node in counter.graphs[0].graph.nodes if node.op == "call_function"}
    assert {torch.ops.mambatr.triton_conv_fwd.default, torch.ops.mambatr.triton_scan_fwd.default} <= targets
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_aot_graphs_keep_the_operators_whole():
    """The forward graph AOTAutograd makes calls the forward ops, the backward graph the backward ops:
    each a node of its own (the interpreter's kernels are not traced into)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm: torch.fx.GraphModule, _example_inputs: list) -> object:
        graphs.append({str(node.target) for node in gm.graph.nodes if node.op == "call_function"})
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    inputs = branch_inputs()
    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    out = torch.compile(mixer_branch, fullgraph=True, backend=backend)(*inputs)
    torch.autograd.grad(out.sum(), inputs)
    forward, backward = graphs
    assert {"mambatr.triton_conv_fwd.default", "mambatr.triton_scan_fwd.default"} <= forward
    assert {"mambatr.triton_conv_bwd.default", "mambatr.triton_scan_bwd.default"} <= backward
    assert not any("triton_kernel_wrapper" in target for target in forward | backward)
