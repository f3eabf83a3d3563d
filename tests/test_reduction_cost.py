"""benchmarks/reduction_cost.py: the free twin runs the method's token counts with slices for steps."""

from __future__ import annotations

import argparse

import pytest
import torch
from benchmark_scripts import load_benchmark

import mambatr
from mambatr.reduction.api import intercept_reduction

TINY = dict(img_size=32, patch_size=4, stride=4, embed_dim=16, depth=4, d_state=4, num_classes=5)


@pytest.fixture
def bench(monkeypatch):
    module = load_benchmark("reduction_cost")

    def tiny(name: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return mambatr.create_model("vim_custom", **TINY).eval()

    monkeypatch.setattr(module, "create", tiny)
    return module


def lengths(model: torch.nn.Module, images: torch.Tensor) -> list[tuple[int, int]]:
    """(tokens before, tokens after) of every reduction step in one forward pass."""
    seen = []

    def record(reduce, state, internals, count):
        out = reduce(state, internals, count)
        seen.append((state.length, out.length))
        return out

    with intercept_reduction(model, record), torch.no_grad():
        model(images)
    return seen


@pytest.mark.parametrize("method", ["mtr", "hsa"])
def test_twin_has_the_methods_token_counts(bench, method: str) -> None:
    reduced, twin, achieved = bench.models("tiny", method, 0.3)
    images = torch.randn(2, 3, 32, 32)
    assert achieved > 0.25
    assert lengths(twin, images) == lengths(reduced, images) != []
    assert isinstance(twin.reduction.method, bench.FreeSlice)
    assert twin.reduction.method.aligns_scan == (method == "hsa")


def test_table_rows(bench, monkeypatch) -> None:
    monkeypatch.setattr(bench, "compiled", lambda model, images: model)  # eager: the wiring, not Inductor
    args = argparse.Namespace(model="tiny", methods="mtr,tome", target=0.3, batches="1,2", warmup=0, runs=1,
                              rounds=2)  # fmt: skip
    rows = bench.measure(args)
    assert [(r["method"], r["batch"]) for r in rows] == [("mtr", 1), ("mtr", 2), ("tome", 1), ("tome", 2)]
    for r in rows:
        assert r["of_ideal"] == pytest.approx(r["twin_of_ideal"] * (1 - r["step_share"]))
        assert min(r["dense_images_per_s"], r["images_per_s"], r["twin_images_per_s"]) > 0
