"""The ONNX Scan candidates of benchmarks/onnx_scan_loops.py against the reference loop, with the
chunked scan's checks (tests/test_chunked_scan.py): what benchmarks/onnx_variants.py --scans times."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from benchmark_scripts import BENCHMARKS
from test_chunked_scan import inputs, relative_error

from mambatr.ops import selective_scan_reference

sys.path.insert(0, str(BENCHMARKS))  # imported by name: torch's scan compiles its body, which re-imports it
SCANS = importlib.import_module("onnx_scan_loops").SCANS


@pytest.mark.parametrize("name", sorted(SCANS))
@pytest.mark.parametrize("length", [1, 5, 17, 197])
@pytest.mark.parametrize("gap,reverse", [(False, False), (True, True)])
@pytest.mark.parametrize("delta_scale", [0.5, 8.0])
def test_float32_error_is_the_reference_loops_own(name, length, gap, reverse, delta_scale):
    """Against the float64 reference, within 4x the float32 reference loop's own error."""
    x = inputs(2, length, 8, 6, delta_scale)
    gaps = torch.randint(0, 4, (2, length), generator=torch.Generator().manual_seed(1)) if gap else None
    flags = dict(delta_softplus=True, gap=gaps, reverse=reverse)
    exact = selective_scan_reference(**{k: v.double() for k, v in x.items()}, **flags)
    y = SCANS[name](**x, **flags)
    loop32 = selective_scan_reference(**x, **flags)
    assert y.shape == exact.shape and torch.isfinite(y).all()
    assert relative_error(y.double(), exact) <= max(4 * relative_error(loop32.double(), exact), 1e-6)
