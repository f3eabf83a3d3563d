"""The Triton kernels compiled for real GPUs (sm_80, sm_90) on this machine, no GPU needed.

Triton's interpreter (tests/triton_interpreted.py) accepts code a GPU compiler may reject, and cannot
see registers or spills; this compiles the launches the launchers really make for Vim layers (ViM-T /
S / B, the Fashion-MNIST testbeds) to cubins with the ptxas that ships in the triton wheel, and fails
on a compile error or a register spill in a float32 / bfloat16 kernel. The subset and the full sweep
are in benchmarks/triton_compile.py (about a minute for this subset on 2 cores with an empty Triton
cache; seconds with a warm one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from benchmark_scripts import load_benchmark  # noqa: E402

from mambatr.ops import dispatch  # noqa: E402

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
if dispatch.triton_interpreter():
    pytest.skip(
        "TRITON_INTERPRET=1 decorates the kernels for the interpreter: nothing to compile",
        allow_module_level=True,
    )
if not PTXAS.is_file():
    pytest.skip(f"no ptxas in this triton wheel ({PTXAS}): cannot compile for a GPU", allow_module_level=True)

sweep = load_benchmark("triton_compile")
KERNELS = {"_scan_fwd", "_scan_chunk_states", "_scan_bwd", "_conv_fwd", "_conv_bwd_params", "_conv_bwd_input"}


@pytest.fixture(scope="module")
def subset():
    return sweep.distinct(sweep.cases(full=False), sweep.ARCHES)


def test_the_subset_covers_every_kernel_dtype_gap_and_direction(subset):
    covered = {(case.launch.name, str(case.dtype), arch) for case, arch in subset}
    assert {name for name, _, _ in covered} == KERNELS
    assert {arch for _, _, arch in covered} == {80, 90}
    assert {dtype for _, dtype, _ in covered} == {"torch.float32", "torch.bfloat16", "torch.float64"}
    scans = {
        (case.launch.options["HAS_GAP"], case.launch.options["REVERSE"])
        for case, _ in subset
        if "scan" in case.launch.name
    }
    assert scans == {(False, False), (False, True), (True, False), (True, True)}


def test_every_launch_compiles_for_sm80_and_sm90_without_spills(subset):
    rows = sweep.compile_all(subset, progress=False)
    assert len(rows) == len(subset)
    bad = sweep.failures(rows)
    assert not bad, "\n".join(str(r) for r in bad)


def test_failures_are_compile_errors_and_spills_outside_float64():
    row = dict(kernel="_scan_bwd", arch="sm_90", error=None, spill_bytes=0)
    rows = [
        dict(row, dtype="float32"),
        dict(row, dtype="bfloat16", spill_bytes=16),
        dict(row, dtype="float64", spill_bytes=184),
        dict(row, dtype="float64", error="CompilationError: ..."),
    ]
    assert sweep.failures(rows) == rows[1:2] + rows[3:]
