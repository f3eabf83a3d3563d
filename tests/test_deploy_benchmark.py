"""benchmarks/deploy.py: every cell prepared once, timed round-robin, speed-ups against dense."""

from __future__ import annotations

import argparse

import pytest
import torch
from benchmark_scripts import load_benchmark

import mambatr

TINY = dict(img_size=32, patch_size=4, stride=4, embed_dim=16, depth=4, d_state=4, num_classes=5)


@pytest.fixture
def bench(monkeypatch):
    module = load_benchmark("deploy")

    def tiny(name: str, method: str | None, target: float):
        torch.manual_seed(0)
        model = mambatr.create_model("vim_custom", **TINY).eval()
        if method is None:
            return model, 0.0
        return model, mambatr.apply(model, method, flops_reduction=target).flops_reduction_achieved

    monkeypatch.setattr(module, "build", tiny)
    return module


def args(**overrides) -> argparse.Namespace:
    values = dict(models="tiny", methods="mtr,tome", target=0.3, batches="1,2", runtimes="eager",
                  warmup=0, runs=2, rounds=3)  # fmt: skip
    return argparse.Namespace(**{**values, **overrides})


def test_every_cell_timed_in_every_round(bench, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(
        bench.deploy, "images_per_s", lambda fn, images, **_: calls.append(len(images)) or 10.0
    )
    rows = bench.measure(args())
    cells = [(r["method"], r["batch"]) for r in rows]
    assert cells == [(m, b) for m in ("dense", "mtr", "tome") for b in (1, 2)]
    assert calls == [1, 2] * 3 * 3  # 3 rounds, each every cell in the same order
    for row in rows:
        assert row["images_per_s"] == 10.0
        assert row["ideal"] == pytest.approx(1 / (1 - row["flops_reduction"]))
        assert row["speedup"] == 1.0 and row["of_ideal"] == pytest.approx(1 / row["ideal"])


def test_median_of_rounds(bench, monkeypatch) -> None:
    rates = iter([1.0, 100.0, 3.0, 2.0])  # one cell, four rounds: the median round is 2.5
    monkeypatch.setattr(bench.deploy, "images_per_s", lambda *a, **k: next(rates))
    (row,) = bench.measure(args(methods="", batches="1", rounds=4))
    assert row["images_per_s"] == 2.5 and row["speedup"] == 1.0


def test_compiled_cells_do_not_recompile_while_timed(bench) -> None:
    rows = bench.measure(args(methods="mtr", batches="2", runtimes="compile", runs=1, rounds=2))
    assert [r["method"] for r in rows] == ["dense", "mtr"] and all(r["images_per_s"] > 0 for r in rows)
    assert not torch._dynamo.config.error_on_recompile  # the benchmark's settings do not leak


def test_unknown_runtime_is_refused(bench) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--runtimes", "eager,tensorrt"])
