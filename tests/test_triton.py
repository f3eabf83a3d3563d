"""impl="triton" without a GPU: dispatch and errors here; the kernels' values and gradients in Triton's
interpreter, in a child process (tests/triton_interpreted.py).

Triton reads TRITON_INTERPRET when it is imported (its own library functions are decorated then), so
the variable must be set before a process imports triton at all. Setting it in this process would
leak into every other test; `test_kernels_in_the_interpreter` runs tests/triton_interpreted.py in a
child process with TRITON_INTERPRET=1 instead, and its output names any failing case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from test_scan import make_inputs  # noqa: E402

from mambatr.ops import (  # noqa: E402
    backend_info,
    causal_conv1d,
    dispatch,
    selective_scan,
)


def test_kernels_in_the_interpreter(request):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cases = Path(__file__).with_name("triton_interpreted.py")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)]
    child = subprocess.run(command, cwd=request.config.rootpath, env=env, capture_output=True, text=True)
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0 and "skipped" not in summary, child.stdout[-6000:] + child.stderr[-2000:]


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


def test_auto_picks_triton_for_cuda_tensors():
    cuda = torch.device("cuda")
    assert dispatch.resolve("selective_scan", "auto", cuda, cuda_ok=False) == "triton"  # gap or not
    assert dispatch.resolve("causal_conv1d", "auto", cuda) == "triton"
    assert backend_info(cuda)["selective_scan"] == "triton" and backend_info()["triton"] == "importable"
