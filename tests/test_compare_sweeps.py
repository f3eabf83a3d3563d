"""benchmarks/compare_sweeps.py: default against calibrated sweep results, the table in results.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def compare_sweeps():
    return load_benchmark("compare_sweeps")


def _row(method: str, target: float, top1: float, flops: float = 0.0) -> dict:
    return {"method": method, "target": target, "top1": top1, "drop": 91.0 - top1, "flops_reduction": flops}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_pairs_rows_and_reports_gain(compare_sweeps, tmp_path, capsys):
    default = _write(
        tmp_path / "d.json",
        [_row("baseline", 0.0, 91.0), _row("mtr", 0.2, 80.0, 0.2), _row("hsa", 0.2, 82.0, 0.2)],
    )
    calibrated = _write(
        tmp_path / "c.json",
        [_row("baseline", 0.0, 91.0), _row("mtr", 0.2, 85.5, 0.2031), _row("stm", 0.2, 88.0, 0.2)],
    )
    compare_sweeps.main([str(default), str(calibrated)])
    out = capsys.readouterr().out
    assert "| mtr    | 20%    | 80.00" in out and "**85.50**" in out and "+5.50" in out and "20.31" in out
    assert "hsa" not in out and "stm" not in out  # only pairs present in both files


def test_refuses_sweeps_on_different_images(compare_sweeps, tmp_path, capsys):
    default = _write(tmp_path / "d.json", [_row("baseline", 0.0, 91.0), _row("mtr", 0.2, 80.0)])
    calibrated = _write(tmp_path / "c.json", [_row("baseline", 0.0, 90.5), _row("mtr", 0.2, 85.0)])
    with pytest.raises(SystemExit):
        compare_sweeps.main([str(default), str(calibrated)])
    assert "baselines differ" in capsys.readouterr().err
    compare_sweeps.main([str(default), str(calibrated), "--metric", "drop", "--labels", "a,b"])
    out = capsys.readouterr().out
    assert "a 91.0 %, b 90.5 %" in out and "| a drop (points) | b drop (points) | points kept |" in out


def test_drop_metric_counts_points_kept(compare_sweeps):
    first = [_row("mtr", 0.3, 60.0, 0.3) | {"drop": 31.0}]
    second = [_row("mtr", 0.3, 75.0, 0.3) | {"drop": 15.5}]
    assert compare_sweeps.compare(first, second, "drop") == [
        ["mtr", "30%", "31.00", "**15.50**", "+15.50", "30.00"]
    ]


def test_refuses_a_file_that_is_not_a_sweep(compare_sweeps, tmp_path):
    with pytest.raises(ValueError, match="not a `mambatr sweep` JSON"):
        compare_sweeps.load_rows(_write(tmp_path / "x.json", {"model": "m"}))
