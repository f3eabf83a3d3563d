"""benchmarks/roofline.py: its DeiT-S stand-in is timm's architecture, and its measuring helpers run."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def roofline():
    return load_benchmark("roofline")


def test_deit_replica_has_timms_size(roofline):
    model = roofline.DeiTSmall()
    # timm's deit_small_patch16_224 has 22,050,664 parameters
    assert sum(p.numel() for p in model.parameters()) == 22_050_664
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_small_measurements_run(roofline):
    assert roofline.scan_forward_seconds(1, 5, 16, 4, runs=1) > 0
    assert roofline.scan_train_seconds(1, 5, 16, 4, runs=1) > 0
    x, w, b = torch.randn(1, 5, 16), torch.randn(16, 4), torch.randn(16)
    assert roofline.conv_seconds(x, w, b, train=True, runs=1) > 0
    assert roofline.copy_gbps(x, runs=1) > 0
    assert roofline.with_threads(1, torch.get_num_threads) == 1
