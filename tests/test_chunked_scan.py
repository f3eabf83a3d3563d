"""The chunked scan (standard ops only, what ONNX runs) against the reference loop where it is hardest:
long sequences, decays far past float32's range, large inputs, HSA's gaps and the reverse scan."""

from __future__ import annotations

import pytest
import torch

from mambatr.ops import chunked_scan, selective_scan_reference
from mambatr.ops.chunked_scan import linear_recurrence, selective_scan_chunked


def inputs(batch, length, E, N, delta_scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, length, E, generator=g),
        delta=torch.randn(batch, length, E, generator=g) * delta_scale,
        A=-torch.exp(torch.randn(E, N, generator=g) * 1.5),  # |A| from ~0.01 to ~50
        B=torch.randn(batch, length, N, generator=g),
        C=torch.randn(batch, length, N, generator=g),
        D=torch.randn(E, generator=g),
        z=torch.randn(batch, length, E, generator=g),
        delta_bias=torch.randn(E, generator=g),
    )


def relative_error(y: torch.Tensor, expected: torch.Tensor) -> float:
    return float((y - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("length", [1, 3, 4, 5, 17, 197, 1569])
@pytest.mark.parametrize("gap,reverse", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("delta_scale", [0.5, 8.0])  # 8: per-step log-decays down to about -400
def test_float32_error_is_the_reference_loops_own(length, gap, reverse, delta_scale):
    """Against the float64 reference, the chunked scan in float32 errs no more than a few times the
    float32 reference loop does (both about 1e-7 relative)."""
    x = inputs(2, length, 8, 6, delta_scale)
    gaps = torch.randint(0, 4, (2, length), generator=torch.Generator().manual_seed(1)) if gap else None
    flags = dict(delta_softplus=True, gap=gaps, reverse=reverse)
    exact = selective_scan_reference(**{k: v.double() for k, v in x.items()}, **flags)
    chunked = selective_scan_chunked(**x, **flags)
    loop32 = selective_scan_reference(**x, **flags)
    assert torch.isfinite(chunked).all()
    assert relative_error(chunked.double(), exact) <= max(4 * relative_error(loop32.double(), exact), 1e-6)


def test_float64_matches_reference_at_moderate_decay():
    """No step decays past exp(-CLAMP) here, so nothing is clamped: float64 gives the loop's values."""
    x = {k: v.double() for k, v in inputs(2, 37, 5, 3, 0.3).items()}
    x["A"] = -torch.rand(5, 3, dtype=torch.float64) - 0.1
    gaps = torch.randint(0, 3, (2, 37), generator=torch.Generator().manual_seed(2))
    for reverse in (False, True):
        flags = dict(delta_softplus=True, gap=gaps, reverse=reverse)
        torch.testing.assert_close(
            selective_scan_chunked(**x, **flags),
            selective_scan_reference(**x, **flags),
            rtol=1e-10,
            atol=1e-12,
        )


def test_large_inputs_and_tiny_decays_do_not_overflow():
    """Inputs of 1e15 with steps that decay by exp(-1000): finite, and no denormal is produced."""
    length = 50
    log_decay = torch.full((1, length, 3), -1000.0)
    log_decay[:, ::7] = -1e-3
    values = torch.full((1, length, 3), 1e15)
    states = linear_recurrence(log_decay, values)
    expected = values.clone()
    for t in range(1, length):
        expected[:, t] += torch.exp(log_decay[:, t]) * expected[:, t - 1]
    assert torch.isfinite(states).all()
    torch.testing.assert_close(states, expected, rtol=1e-6, atol=0)
    assert torch.exp(torch.tensor(-chunked_scan.CLAMP)) >= torch.finfo(torch.float32).tiny  # a normal float
