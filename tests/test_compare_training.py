"""benchmarks/compare_training.py: the per-epoch comparison used to check that a re-run reproduces."""

from __future__ import annotations

import json

import pytest
import torch
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def compare_training():
    return load_benchmark("compare_training")


def _run(device: str, vals: list[float], losses: list[float]) -> dict:
    pairs = enumerate(zip(vals, losses, strict=True), start=1)
    history = [{"epoch": epoch, "val_top1": v, "train_loss": loss} for epoch, (v, loss) in pairs]
    return {"recipe": {"epochs": 3, "device": device, "seed": 0}, "history": history}


def test_reports_recipe_differences_and_gaps(compare_training, tmp_path):
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"model": "m", **_run("cuda", [80.0, 85.0, 90.0], [1.0, 0.8, 0.5])}))
    rerun = tmp_path / "last.pth"
    torch.save({"step": 7, **_run("cpu", [79.0, 85.5], [1.1, 0.8])}, rerun)

    report = compare_training.compare(
        compare_training.load_run(shipped), compare_training.load_run(rerun), ("gpu", "cpu")
    )
    assert "Recipe fields that differ: device 'cuda' -> 'cpu'" in report
    assert "| 1     | 80.00" in report and "-1.00" in report and "+10.0 %" in report
    assert "| 3 " not in report  # the unfinished re-run has no epoch 3
    assert report.endswith(
        "Epochs compared: 2; largest |val gap| 1.00 points (epoch 1); last common epoch 2: gap +0.50 points."
    )


def test_rejects_files_that_are_not_training_records(compare_training, tmp_path):
    weights_only = tmp_path / "weights.json"
    weights_only.write_text(json.dumps({"model": "m", "config": {}}))
    with pytest.raises(ValueError, match="missing \\['history', 'recipe'\\]"):
        compare_training.load_run(weights_only)
    with pytest.raises(ValueError, match="expected an exported"):
        compare_training.load_run(tmp_path / "weights.safetensors")
