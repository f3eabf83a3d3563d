"""impl="triton" without a GPU: dispatch and errors here; the kernels' values and gradients, and the ops
they are registered as, in Triton's interpreter, in child processes (tests/triton_interpreted.py,
tests/triton_ops_interpreted.py).

Triton reads TRITON_INTERPRET when it is imported (its own library functions are decorated then), so
the variable must be set before a process imports triton at all. Setting it in this process would
leak into every other test; `test_kernels_in_the_interpreter` and `test_operators_in_the_interpreter`
run those files in a child process with TRITON_INTERPRET=1 instead, and its output names any failing
case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from test_scan import make_inputs  # noqa: E402

from mambatr.ops import (  # noqa: E402
    backend_info,
    causal_conv1d,
    dispatch,
    selective_scan,
)


def run_interpreted(request: pytest.FixtureRequest, cases: str) -> None:
    """Run the test file ``cases`` in a child process with TRITON_INTERPRET=1; nothing may fail or skip."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    path = Path(__file__).with_name(cases)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    child = subprocess.run(command, cwd=request.config.rootpath, env=env, capture_output=True, text=True)
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0 and "skipped" not in summary, child.stdout[-6000:] + child.stderr[-2000:]


def test_kernels_in_the_interpreter(request):
    run_interpreted(request, "triton_interpreted.py")


def test_operators_in_the_interpreter(request):
    """opcheck of the four Triton ops; torch.compile of a conv + scan (tests/triton_ops_interpreted.py)."""
    run_interpreted(request, "triton_ops_interpreted.py")


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    inputs, _ = make_inputs(1, 3, 4, 2)
    x = torch.randn(1, 3, 4)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        selective_scan(**inputs, impl="triton")
    with pytest.raises(ValueError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        causal_conv1d(x, torch.randn(4, 3), impl="triton")
    # kernels decorated for the GPU (triton imported before the variable was set)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 before the process imports triton"):
        dispatch.check_triton_kernels("selective_scan", torch.device("cpu"), interpreted=False)


@pytest.fixture
def stub_mamba_ssm(monkeypatch):
    """A `mamba_ssm` that imports, whose selective_scan_fn runs the reference loops in mamba_ssm's
    (batch, E, length) layout and records each call."""
    calls = []

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        calls.append(tuple(u.shape))
        rows = (t if t is None else t.transpose(1, 2) for t in (u, delta, B, C, z))
        u_, delta_, B_, C_, z_ = rows
        y = selective_scan(u_, delta_, A, B_, C_, D, z_, delta_bias, delta_softplus, impl="reference")
        return y.transpose(1, 2)

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_fn
    for name, module in {
        "mamba_ssm": types.ModuleType("mamba_ssm"),
        "mamba_ssm.ops": types.ModuleType("mamba_ssm.ops"),
        "mamba_ssm.ops.selective_scan_interface": interface,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    dispatch.cuda_package_available.cache_clear()
    yield calls
    dispatch.cuda_package_available.cache_clear()


def test_auto_on_cuda_without_mamba_ssm_picks_triton(monkeypatch):
    monkeypatch.delenv("MAMBATR_OPS_IMPL", raising=False)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # import mamba_ssm raises ImportError
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    dispatch.cuda_package_available.cache_clear()
    cuda = torch.device("cuda")
    assert dispatch.resolve("selective_scan", "auto", cuda, cuda_ok=True) == "triton"
    assert dispatch.resolve("selective_scan", "auto", cuda, cuda_ok=False) == "triton"
    assert dispatch.resolve("causal_conv1d", "auto", cuda) == "triton"
    info = backend_info(cuda)
    assert info["selective_scan"] == info["selective_scan with gap (HSA aligned)"] == "triton"
    assert info["triton"] == "importable" and info["mamba_ssm (CUDA)"] == "not installed"
    dispatch.cuda_package_available.cache_clear()


def test_auto_on_cuda_sends_dense_scans_to_mamba_ssm_and_gaps_to_triton(monkeypatch, stub_mamba_ssm):
    monkeypatch.delenv("MAMBATR_OPS_IMPL", raising=False)
    cuda = torch.device("cuda")
    dispatch.impls_used(reset=True)
    assert dispatch.resolve("selective_scan", "auto", cuda, cuda_ok=True) == "cuda"
    assert dispatch.resolve("selective_scan", "auto", cuda, cuda_ok=False) == "triton"  # HSA's gaps
    assert dispatch.impls_used(reset=True) == {"selective_scan": ["cuda", "triton"]}
    info = backend_info(cuda)
    assert info["selective_scan"] == "cuda" and info["selective_scan with gap (HSA aligned)"] == "triton"
    assert info["mamba_ssm (CUDA)"] == "importable"
    assert backend_info("cpu")["selective_scan"] == "cpu"
    monkeypatch.setenv("MAMBATR_OPS_IMPL", "triton")  # an explicit choice still wins
    assert dispatch.resolve("selective_scan", "auto", cuda, cuda_ok=True) == "triton"


def test_the_cuda_path_reaches_mamba_ssm_in_its_layout(stub_mamba_ssm):
    """What "cuda" runs (the stub on CPU tensors): the transposes and the flip for reverse are right."""
    from mambatr.ops.scan import selective_scan_mamba_ssm

    inputs, _ = make_inputs(2, 5, 6, 3, D=True, z=True, bias=True)
    for reverse in (False, True):
        y = selective_scan_mamba_ssm(**inputs, delta_softplus=True, reverse=reverse)
        want = selective_scan(**inputs, delta_softplus=True, reverse=reverse, impl="reference")
        torch.testing.assert_close(y, want)
    assert stub_mamba_ssm == [(2, 6, 5), (2, 6, 5)]


class _FailingKernel:
    """Stands in for a JIT function whose compile fails as ptxas would fail it."""

    __name__ = "_scan_fwd"

    def __getitem__(self, grid):
        from triton.runtime.errors import PTXASError

        def launch(*args, **kwargs):
            raise PTXASError("`ptxas` failed with error code 255\nptxas fatal: ...")

        return launch


def test_a_kernel_that_does_not_build_names_the_way_round(monkeypatch):
    from mambatr.ops import triton_launch

    # wrap_triton accepts only Triton kernels; outside tracing it hands the kernel back, as here
    monkeypatch.setattr(triton_launch, "wrap_triton", lambda kernel: kernel)
    with pytest.raises(RuntimeError, match=r"_scan_fwd: triton .*PTXASError.*MAMBATR_OPS_IMPL=torch"):
        triton_launch.Launch(_FailingKernel(), (1,), (), {}).run()


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_the_chunk_count_must_be_a_whole_number(monkeypatch, value):
    from mambatr.ops.triton_scan import forward_chunks

    monkeypatch.setenv("MAMBATR_TRITON_CHUNKS", value)
    with pytest.raises(ValueError, match=r"\$MAMBATR_TRITON_CHUNKS=.*whole number of chunks"):
        forward_chunks()


class _Traced(Exception):
    """Stops AOTAutograd once the forward graph is traced: fake CUDA tensors cannot run."""


def aot_kernel_calls(op, args: tuple, dynamic: bool) -> list[str]:
    """The Triton kernels (in order) of the graph AOTAutograd traces for ``op`` on CUDA tensors, as
    torch.compile would on a GPU; here the CUDA tensors are fake (no GPU needed to trace)."""
    from torch._functorch.aot_autograd import aot_function
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    cuda = torch.device("cuda", 0)

    def fake(t):
        if not isinstance(t, torch.Tensor):
            return t
        return FakeTensor(mode, torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta"), cuda)

    graphs = []

    def record(gm: torch.fx.GraphModule, _example_inputs: list) -> None:
        graphs.append(gm)
        raise _Traced

    with mode, pytest.raises(_Traced):
        aot_function(op, fw_compiler=record, dynamic=dynamic)(*map(fake, args))
    (graph,) = graphs
    calls, names = [node for node in graph.graph.nodes if node.op == "call_function"], []
    assert not any("mambatr" in str(node.target) for node in calls)  # decomposed into its kernels
    for node in calls:
        if "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            while not isinstance(kernel, triton.runtime.JITFunction):  # wrap_triton's autotuner (num_warps)
                kernel = kernel.fn
            names.append(kernel.__name__)
    return names


@pytest.mark.skipif(dispatch.triton_interpreter(), reason="traces the GPU kernels, not interpreted ones")
@pytest.mark.parametrize("dynamic", [False, True])
def test_on_a_gpu_torch_compile_sees_the_kernels(dynamic):
    """The triton_ops decompose into their wrap_triton kernel calls when traced for CUDA tensors (what
    Inductor compiles): one call per Launch of the launchers, forward and backward, scan and conv."""
    from mambatr.ops import triton_conv, triton_scan  # noqa: F401  (triton_conv: registers the conv ops)

    inputs, gaps = make_inputs(2, 5, 6, 3, D=True, z=False, bias=True, gap=True)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    args = triton_scan._prepared(*(inputs[k] for k in names), True, gaps, False)
    ops = torch.ops.mambatr
    assert aot_kernel_calls(lambda *a: ops.triton_scan_fwd(*a, 1), args, dynamic) == ["_scan_fwd"]
    chunked = aot_kernel_calls(lambda *a: ops.triton_scan_fwd(*a, 3), args, dynamic)
    assert chunked == ["_scan_chunk_states", "_scan_fwd"]
    dout = torch.randn(2, 5, 6)
    assert aot_kernel_calls(ops.triton_scan_bwd, (dout, *args), dynamic) == ["_scan_bwd"]
    x, w = torch.randn(2, 5, 6), torch.randn(6, 4)
    conv = aot_kernel_calls(lambda *a: ops.triton_conv_fwd(*a, True, False), (x, w, None), dynamic)
    assert conv == ["_conv_fwd"]
    backward = aot_kernel_calls(lambda *a: ops.triton_conv_bwd(*a, True, False), (dout, x, w, None), dynamic)
    assert backward == ["_conv_bwd_params", "_conv_bwd_input"]


@pytest.mark.skipif(
    dispatch.triton_interpreter(), reason="torch.library finds JIT kernels, not interpreted ones"
)
def test_the_ops_name_their_kernels_for_the_compile_cache():
    """torch.compile's AOTAutograd cache key holds the source of each triton_op's kernels, which
    torch.library finds by reading the op's source: a kernel it missed could be edited and still be
    served from the cache."""
    from torch._library.triton import get_triton_kernels_for_op

    from mambatr.ops import triton_conv, triton_scan  # noqa: F401  (registers the ops)

    ops = ("triton_scan_fwd", "triton_scan_bwd", "triton_conv_fwd", "triton_conv_bwd")
    found = {op: [kernel.__name__ for kernel in get_triton_kernels_for_op(f"mambatr::{op}")] for op in ops}
    assert found == {
        "triton_scan_fwd": ["_scan_chunk_states", "_scan_fwd"],
        "triton_scan_bwd": ["_scan_bwd"],
        "triton_conv_fwd": ["_conv_fwd"],
        "triton_conv_bwd": ["_conv_bwd_params", "_conv_bwd_input"],
    }
