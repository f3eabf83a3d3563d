"""mambatr reproduce end to end on a tiny ImageNet-layout folder with random-weight tiny models: the
figures mean nothing here; the tests check the table's shape, the paper figures' lookup and the resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import mambatr
from mambatr import reproduce
from mambatr.cli import main

TINY = dict(img_size=48, patch_size=6, stride=6, embed_dim=16, depth=4, d_state=4, num_classes=2)


def tiny(name: str):
    """The named official model's builder at a tiny size, random weights (no download)."""
    return mambatr.create_model(name, **TINY)


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory):
    """An ImageNet-style val folder: 2 classes x 2 random JPEGs."""
    root = tmp_path_factory.mktemp("imagenet_val")
    rng = np.random.default_rng(0)
    for label in ("n01440764", "n01443537"):
        (root / label).mkdir()
        for index in range(2):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"ILSVRC2012_val_{index}.JPEG")
    return root


def run_vim_small(val_folder, out, **kwargs):
    return reproduce.run(
        "mtr",
        str(val_folder),
        out,
        models=["vim_small"],
        workers=0,
        progress=False,
        load_model=tiny,
        **kwargs,
    )


def test_paper_figures_are_found_by_cell():
    figure = reproduce.figure_for("mtr", "ViM-S", "mtr", 0.3)
    assert (figure.table, figure.top1, figure.drop) == ("Table 1", 77.7, 2.8)
    assert "77.7" in figure.row
    assert reproduce.figure_for("mtr", "ViM-B", "evit", 0.4).top1 == 75.9
    assert reproduce.figure_for("hsa", "ViM-S", "hsa", 0.294).gflops == 3.60
    with pytest.raises(KeyError, match="no figure for ViM-S tome"):
        reproduce.figure_for("mtr", "ViM-S", "tome", 0.3)
    for paper in reproduce.papers():  # every figure's method is one this library has
        assert {f.method for f in reproduce.figures(paper)} <= {"baseline", *mambatr.METHODS}


def test_mtr_table_1_shape_and_side_by_side(val_folder, tmp_path):
    result = run_vim_small(val_folder, tmp_path / "out")
    rows = result["rows"]
    assert len(rows) == 16  # ViM-S: baseline + 5 methods x 3 targets
    assert {(r["method"], r["flops_reduction_paper"]) for r in rows[1:]} == {
        (m, t) for m in ("evit", "pumer", "utr", "hsa", "mtr") for t in (0.2, 0.3, 0.4)
    }
    for row in rows:
        figure = reproduce.figure_for("mtr", "ViM-S", row["method"], row["flops_reduction_paper"])
        assert row["top1_paper"] == figure.top1 and row["drop_paper"] == figure.drop
        assert row["top1_delta"] == pytest.approx(row["top1"] - figure.top1)
        assert row["model"] == "vim_small" and row["paper_model"] == "ViM-S"
        assert abs(row["flops_reduction"] - row["flops_reduction_paper"]) < 0.05
    assert rows[0]["method"] == "baseline" and rows[0]["drop"] == 0.0
    printed = reproduce.table_rows(result)
    assert len(printed) == 16 and all(len(r) == len(reproduce.TABLE_HEADERS) for r in printed)


def test_a_killed_run_continues_where_it_stopped(val_folder, tmp_path, monkeypatch):
    calls = []
    evaluate = reproduce.evaluate

    def dies_at_the_fifth(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt  # as Ctrl-C would
        calls.append(1)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(reproduce, "evaluate", dies_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        run_vim_small(val_folder, tmp_path / "out")
    kept = sorted(p.stem for p in (tmp_path / "out" / "mtr" / "vim_small" / "cells").glob("*.json"))
    assert len(kept) == 4 and "baseline" in kept
    calls.clear()
    monkeypatch.setattr(reproduce, "evaluate", lambda *a, **k: (calls.append(1), evaluate(*a, **k))[1])
    result = run_vim_small(val_folder, tmp_path / "out")
    assert len(calls) == 12 and len(result["rows"]) == 16  # only the 12 cells not kept
    calls.clear()
    run_vim_small(val_folder, tmp_path / "out")
    assert calls == []  # all kept: nothing evaluated again


def test_plans_map_paper_models_and_refuse_bad_names(val_folder):
    chosen, notes = reproduce.plan("mtr", "fmnist")
    assert list(chosen) == ["vim_fmnist_p2"] and len(chosen["vim_fmnist_p2"]) == 32  # ViM-S and ViM-B rows
    assert notes == ["VideoM-S: no fmnist testbed of its kind", "VideoM-B: no fmnist testbed of its kind"]
    chosen, notes = reproduce.plan("mtr", str(val_folder))
    assert list(chosen) == ["vim_small", "vim_base", "videomamba_small", "videomamba_base"] and not notes
    chosen, notes = reproduce.plan("hsa", str(val_folder))
    assert list(chosen) == ["vim_tiny", "vim_small"] and all("ChenhongyiYang/PlainMamba" in n for n in notes)
    with pytest.raises(ValueError, match="--models plainmamba_l1: .*ChenhongyiYang/PlainMamba"):
        reproduce.plan("hsa", str(val_folder), ["plainmamba_l1"])
    with pytest.raises(ValueError, match="--models: vim_tiny not in mtr's tables"):
        reproduce.plan("mtr", str(val_folder), ["vim_tiny"])
    with pytest.raises(ValueError, match="--data /no/such: not a folder"):
        reproduce.plan("mtr", "/no/such")


def test_cli_prints_the_table_and_writes_json(val_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "create_model", lambda name, pretrained: tiny(name))
    out = tmp_path / "out"
    argv = ["reproduce", "--paper", "mtr", "--data", str(val_folder), "--models", "vim_small"]
    main([*argv, "--workers", "0", "--out", str(out)])
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("| table") and len(lines) == 2 + 16
    assert "| Table 1 | ViM-S" in lines[2] and "80.5" in lines[2]
    saved = json.loads((out / "mtr" / "table.json").read_text())
    assert len(saved["rows"]) == 16 and saved["paper"] == "mtr"
    with pytest.raises(SystemExit) as error:
        main(["reproduce", "--paper", "mtr", "--data", str(tmp_path / "nope")])
    assert error.value.code == 2 and "--data" in capsys.readouterr().err
