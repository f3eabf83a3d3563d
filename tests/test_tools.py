"""bench, viz and sweep on a tiny trained model (see tests/test_cli.py for the fixture's recipe)."""

import json

import numpy as np
import pytest
import torch
from fake_data import write_fashion_mnist
from PIL import Image

import mambatr
from mambatr.cli import main
from mambatr.sweep import run_sweep, write_outputs
from mambatr.visualize import PANEL_SCALE, PRUNED_COLOR, group_colors, patch_assignment, visualize

SMALL = dict(
    img_size=28, patch_size=4, stride=4, in_chans=1, num_classes=10, embed_dim=16, depth=4, d_state=4
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mambatr.train import Recipe, train

    root = write_fashion_mnist(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run")
    train(
        Recipe(model="vim_custom", epochs=1, batch_size=32, threads=1, model_overrides=SMALL),
        out,
        data_root=str(root),
        limit=32,
    )
    return root, out / "vim_custom.safetensors"


def test_bench_json_fields_consistent(checkpoint, capsys):
    _, weights = checkpoint
    main(
        [
            "bench",
            "--model",
            "vim_custom",
            "--checkpoint",
            str(weights),
            "--batch-size",
            "4",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--method",
            "mtr",
            "--flops-reduction",
            "0.3",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["speedup"] > 0 and result["dense"]["images_per_s"] > 0
    assert result["ideal_speedup"] == pytest.approx(1 / (1 - result["flops_reduction_achieved"]))
    assert result["speedup_vs_ideal"] == pytest.approx(result["speedup"] / result["ideal_speedup"])
    assert 0 < result["reduced"]["reduction_share"] < 1


@pytest.mark.parametrize("method", ["mtr", "hsa", "stm", "tome"])
def test_viz_png_matches_the_groups(checkpoint, tmp_path, method):
    _, weights = checkpoint
    model = mambatr.create_model("vim_custom", checkpoint=weights)
    mambatr.apply(model, method, 0.3)
    image = torch.randn(1, 28, 28)
    groups_png, importance_png, traces = visualize(model, image, tmp_path / "viz.png", (0.0,), (1.0,))
    picture = np.asarray(Image.open(groups_png).convert("RGB"))
    panel = 28 * PANEL_SCALE
    assert picture.shape == (panel, (panel + PANEL_SCALE) * len(traces) + panel, 3)
    assert Image.open(importance_png).size[0] > 0
    config = model.config
    for step, trace_ in enumerate(traces):
        owner = np.delete(patch_assignment(trace_, config.seq_len), config.cls_index)
        sizes = np.bincount(owner[owner >= 0], minlength=trace_.sources.shape[0])
        colors = group_colors(len(sizes)).clip(0, 255).astype(np.uint8)
        left = (panel + PANEL_SCALE) * (step + 1)
        for patch, token in enumerate(owner):
            row, col = divmod(patch, config.grid)
            y = (row * config.stride + config.patch_size // 2) * PANEL_SCALE
            x = left + (col * config.stride + config.patch_size // 2) * PANEL_SCALE
            if token < 0:
                assert tuple(picture[y, x]) == PRUNED_COLOR
            elif sizes[token] > 1:
                assert (picture[y, x] == colors[token]).all()
    if method == "hsa":
        assert (np.delete(patch_assignment(traces[0], config.seq_len), config.cls_index) < 0).any()


def test_sweep_rows_and_files(checkpoint, tmp_path):
    root, weights = checkpoint
    model = mambatr.create_model("vim_custom", checkpoint=weights)
    images = torch.randn(6, 1, 28, 28)
    labels = torch.randint(0, 10, (6,))

    def evaluate(m):
        with torch.inference_mode():
            correct = (m(images).argmax(-1) == labels).float().mean().item()
        return {"top1": 100 * correct, "images_per_s": 1.0}

    rows = run_sweep(model, evaluate, ["mtr", "stm"], [0.2, 0.3], progress=False)
    assert [r["method"] for r in rows] == ["baseline", "mtr", "mtr", "stm", "stm"]
    assert all(abs(r["flops_reduction"] - r["target"]) <= 0.005 for r in rows[1:])
    paths = write_outputs(rows, tmp_path, "test")
    assert [p.name for p in paths] == ["sweep.csv", "sweep.json", "sweep.png"]
    assert len(json.loads(paths[1].read_text())) == 5 and len(paths[0].read_text().splitlines()) == 6
    assert model.reduction is None  # the sweep leaves the model dense


@pytest.mark.slow
def test_shipped_weights_reach_90_percent_on_1000_test_images():
    from mambatr.data import load_fashion_mnist
    from mambatr.evaluate import evaluate_tensors

    images, labels = load_fashion_mnist("test")
    model = mambatr.create_model("vim_fmnist", pretrained=True)
    result = evaluate_tensors(model, images[:1000], labels[:1000], progress=False)
    assert result["top1"] >= 90.0


def test_viz_trace_skips_layers_that_remove_nothing(checkpoint):
    from mambatr.visualize import trace

    _, weights = checkpoint
    model = mambatr.create_model("vim_custom", checkpoint=weights)
    mambatr.apply(model, "mtr", ratio=0.2, layers=[0, 1, 2])
    model.reduction.removals = {0: 4, 1: 0, 2: 3}  # a solved schedule may leave a layer at 0
    assert [t.layer for t in trace(model, torch.randn(1, 28, 28))] == [0, 2]


@pytest.mark.slow
def test_demo_json_has_baseline_and_mtr_rows(capsys):
    main(["demo", "--limit", "64", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["baseline", "mtr", "mtr", "mtr"]
    for row, target in zip(rows[1:], (20, 30, 40), strict=True):
        assert abs(row["FLOPs reduction %"] - target) <= 0.5
        assert row["drop"] == pytest.approx(rows[0]["top-1 %"] - row["top-1 %"])
