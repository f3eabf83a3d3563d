"""bench, viz and sweep on a tiny trained model (see tests/test_cli.py for the fixture's recipe)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_fashion_mnist
from PIL import Image

import mambatr
from mambatr.cli import main
from mambatr.outputs import atomic_path
from mambatr.sweep import read_rows, run_sweep, write_outputs, x_range
from mambatr.visualize import (
    PANEL_SCALE,
    PRUNED_COLOR,
    PRUNED_MARK,
    group_colors,
    groups_figure,
    layer_counts,
    patch_assignment,
    render_layer,
    to_rgb_uint8,
    trace,
    visualize,
)

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
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout: exactly one JSON document
    assert "dense:" in captured.err and "mtr:" in captured.err and "pass" in captured.err  # progress bars
    assert result["speedup"] > 0 and result["dense"]["images_per_s"] > 0
    assert result["ideal_speedup"] == pytest.approx(1 / (1 - result["flops_reduction_achieved"]))
    assert result["speedup_vs_ideal"] == pytest.approx(result["speedup"] / result["ideal_speedup"])
    assert 0 < result["reduced"]["reduction_share"] < 1


@pytest.mark.parametrize("method", ["mtr", "hsa", "stm", "tome"])
def test_viz_panels_match_the_groups(checkpoint, tmp_path, method):
    _, weights = checkpoint
    model = mambatr.create_model("vim_custom", checkpoint=weights)
    mambatr.apply(model, method, 0.3)
    image = torch.randn(1, 28, 28)
    groups_png, importance_png, traces = visualize(model, image, tmp_path / "viz.png", (0.0,), (1.0,))
    assert Image.open(groups_png).size[0] > 0 and Image.open(importance_png).size[0] > 0
    config = model.config
    rgb = to_rgb_uint8(image, (0.0,), (1.0,))
    size = config.patch_size * PANEL_SCALE
    for trace_ in traces:
        picture = render_layer(model, rgb, trace_)
        assert picture.shape == (28 * PANEL_SCALE, 28 * PANEL_SCALE, 3)
        owner = np.delete(patch_assignment(trace_, config.seq_len), config.cls_index)
        sizes = np.bincount(owner[owner >= 0], minlength=trace_.sources.shape[0])
        colors = group_colors(len(sizes)).clip(0, 255).astype(np.uint8)
        for patch, token in enumerate(owner):
            row, col = divmod(patch, config.grid)
            y, x = row * config.stride * PANEL_SCALE, col * config.stride * PANEL_SCALE
            if token < 0:  # black with a grey cross: its centre on the cross, mid-edge off it
                assert tuple(picture[y + size // 2, x + size // 2]) == PRUNED_MARK
                assert tuple(picture[y + 1, x + size // 2]) == PRUNED_COLOR
            elif sizes[token] > 1:
                assert (picture[y + size // 2, x + size // 2] == colors[token]).all()
        assert not any(tuple(color) in (PRUNED_COLOR, PRUNED_MARK) for color in colors)
    if method == "hsa":
        assert (np.delete(patch_assignment(traces[0], config.seq_len), config.cls_index) < 0).any()


def test_viz_figure_titles_counts_and_legend(checkpoint):
    _, weights = checkpoint
    model = mambatr.create_model("vim_custom", checkpoint=weights)
    mambatr.apply(model, "pumer", 0.3, prune_first=True)  # prunes, then merges
    image = torch.randn(1, 28, 28)
    traces = trace(model, image)
    figure = groups_figure(model, to_rgb_uint8(image, (0.0,), (1.0,)), traces, "pumer at 30 %")
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[0] == "input" and len(titles) == 1 + len(traces)
    for text, trace_ in zip(titles[1:], traces, strict=True):
        counts = layer_counts(model, trace_)
        assert text.startswith(f"after block {trace_.layer}:")
        assert f"{counts['kept']} kept" in text and f"{counts['pruned']} pruned" in text
        assert f"{counts['merged']} merged" in text
        assert counts["kept"] + counts["merged"] + counts["pruned"] == model.config.grid**2
    assert any(layer_counts(model, t)["merged"] for t in traces) and any(
        layer_counts(model, t)["pruned"] for t in traces
    )
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["kept: the image shows", "merged: one colour per group", "pruned"]
    assert figure.get_suptitle() == "pumer at 30 %"


def test_viz_cli_titles_method_and_target(checkpoint, tmp_path, monkeypatch):
    import mambatr.visualize as visualize_module

    root, weights = checkpoint
    drawn = []
    original = visualize_module.groups_figure
    monkeypatch.setattr(
        visualize_module, "groups_figure", lambda *args: drawn.append(original(*args)) or drawn[-1]
    )
    out = tmp_path / "viz.png"
    argv = [
        "viz",
        "--model",
        "vim_custom",
        "--checkpoint",
        str(weights),
        "--data",
        str(root),
        "--out",
        str(out),
    ]
    main([*argv, "--method", "hsa", "--flops-reduction", "0.3"])
    assert out.is_file() and (tmp_path / "viz_importance.png").is_file()
    title = drawn[0].get_suptitle()
    assert "hsa" in title and "target 30%" in title and "vim_custom" in title


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
    assert len(read_rows(paths[1])) == 5 and len(paths[0].read_text().splitlines()) == 6
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
    from mambatr.cli import DEMO_MODEL

    main(["demo", "--limit", "64", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == DEMO_MODEL and result["images"] == 64
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["baseline", "mtr", "mtr", "mtr", "mtr (calibrated)"]
    for row, target in zip(rows[1:], (0.2, 0.3, 0.4, 0.3), strict=True):
        assert row["flops_reduction_target"] == target
        assert abs(row["flops_reduction_achieved"] - target) <= 0.005
        assert row["drop"] == pytest.approx(rows[0]["top1"] - row["top1"])


def _sweep_argv(checkpoint, out, *extra: str) -> list[str]:
    root, weights = checkpoint
    model = ["--model", "vim_custom", "--checkpoint", str(weights)]
    return ["sweep", *model, "--data", str(root), "--out", str(out), "--threads", "1", *extra]


@pytest.mark.parametrize(
    "grid, named",
    [
        (["--methods", "mtr,foo"], "unknown method(s) 'foo'"),
        (["--reductions", "0.3,1.5"], "--reductions: 1.5 is not a FLOPs-reduction target in (0, 0.9)"),
        (["--reductions", "0.3,abc"], "--reductions: 'abc' is not a number"),
    ],
)
def test_sweep_refuses_a_bad_entry_before_any_evaluation(
    checkpoint, tmp_path, capsys, monkeypatch, grid, named
):
    import mambatr.evaluate

    monkeypatch.setattr(
        mambatr.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking")
    )
    with pytest.raises(SystemExit) as exit_:
        main(_sweep_argv(checkpoint, tmp_path / "out", *grid))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and named in err
    assert not (tmp_path / "out").exists()


def test_run_sweep_solves_every_pair_before_evaluating(checkpoint):
    model = mambatr.create_model("vim_custom", checkpoint=checkpoint[1])
    calls = []
    with pytest.raises(ValueError, match="unknown reduction method 'foo'"):
        run_sweep(model, calls.append, ["mtr", "foo"], [0.3], progress=False)
    assert calls == [] and model.reduction is None


def test_run_sweep_leaves_the_model_dense_when_an_evaluation_fails():
    model = mambatr.create_model("vim_custom", **SMALL).eval()
    reduced = []

    def evaluate(m):
        reduced.append(m.reduction is not None)
        if len(reduced) == 2:  # the first reduced run
            raise RuntimeError("evaluation failed")
        return {"top1": 50.0, "images_per_s": 1.0}

    with pytest.raises(RuntimeError, match="evaluation failed"):
        run_sweep(model, evaluate, ["mtr"], [0.3], progress=False)
    assert reduced == [False, True] and model.reduction is None


def test_sweep_with_calibrated_schedules_then_from_their_folder(checkpoint, tmp_path, capsys):
    """--schedule calibrated finds one schedule per pair on val images and saves it; --schedule DIR
    applies those files and reproduces the rows exactly."""
    grid = ("--methods", "mtr,hsa", "--reductions", "0.3", "--limit", "16", "--json")
    main(
        _sweep_argv(
            checkpoint, tmp_path / "a", *grid, "--schedule", "calibrated", "--calibration-images", "8"
        )
    )
    calibrated = json.loads(capsys.readouterr().out)["rows"]
    saved = sorted(p.name for p in (tmp_path / "a" / "schedules").iterdir())
    assert saved == ["vim_custom_hsa_30.json", "vim_custom_mtr_30.json"]
    schedule = mambatr.Schedule.load(tmp_path / "a" / "schedules" / "vim_custom_mtr_30.json")
    assert schedule.calibration["source"] == "fashion_mnist val[:8]" and schedule.calibration["images"] == 8
    assert [r["schedule"] for r in calibrated] == ["", *["calibrated on fashion_mnist val[:8]"] * 2]
    assert calibrated[1]["removals"] == {str(k): v for k, v in schedule.removals.items()}
    main(_sweep_argv(checkpoint, tmp_path / "b", *grid, "--schedule", str(tmp_path / "a" / "schedules")))
    from_folder = json.loads(capsys.readouterr().out)["rows"]
    keys = ("method", "removals", "top1", "flops_reduction")
    assert [[r[k] for k in keys] for r in from_folder] == [[r[k] for k in keys] for r in calibrated]
    main(_sweep_argv(checkpoint, tmp_path / "c", "--methods", "mtr", "--reductions", "0.3", "--limit", "16"))
    assert "| mtr " in capsys.readouterr().out
    main(_sweep_argv(checkpoint, tmp_path / "d", *grid[:-1], "--schedule", str(tmp_path / "a" / "schedules")))
    assert "| mtr (calibrated) " in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--reductions", "0.2"], "no schedule made for vim_custom for mtr at 20%; expected exactly one"),
        (["--schedule", "calibrated", "--split", "val"], "evaluate on --split test"),
    ],
)
def test_sweep_schedule_mistakes_fail_before_any_evaluation(
    checkpoint, tmp_path, capsys, monkeypatch, extra, named
):
    import mambatr.evaluate

    folder = tmp_path / "schedules"
    folder.mkdir()
    monkeypatch.setattr(
        mambatr.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking")
    )
    argv = _sweep_argv(checkpoint, tmp_path / "out", "--methods", "mtr", "--schedule", str(folder), *extra)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and named in err


def test_sweep_progress_covers_the_baseline_and_json_stays_clean(checkpoint, tmp_path, capsys):
    main(_sweep_argv(checkpoint, tmp_path / "out", "--methods", "mtr", "--reductions", "0.3", "--json"))
    captured = capsys.readouterr()
    assert [row["method"] for row in json.loads(captured.out)["rows"]] == ["baseline", "mtr"]
    assert "sweep:" in captured.err and "baseline" in captured.err and "images:" in captured.err
    kept = ["cells", "run.json", "run.lock", "sweep.csv", "sweep.json", "sweep.png"]  # mambatr.runs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == kept


@pytest.mark.parametrize("command", ["sweep", "viz"])
def test_out_refused_before_any_work(checkpoint, tmp_path, capsys, monkeypatch, command):
    import mambatr.cli

    monkeypatch.setattr(mambatr.cli, "_load_model", lambda args: pytest.fail("loaded a model before --out"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    if command == "sweep":
        bad = {a_file: "is a file, not a folder", a_file / "sub": "is a file, not a folder"}
    else:
        bad = {tmp_path: "is a folder: give a file name", a_file / "viz.png": "is a file, not a folder"}
    if Path("/sys").is_dir():  # unwritable even for root
        bad[Path("/sys/mambatr/out.png")] = "cannot write in /sys"
    for out, words in bad.items():
        if command == "sweep":
            argv = _sweep_argv(checkpoint, out)
        else:
            argv = ["viz", "--model", "vim_custom", "--method", "mtr", "--ratio", "0.2", "--out", str(out)]
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert err.startswith(f"mambatr {command}: error: --out {out}") and words in err, err


def test_result_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    rows = [{"method": "baseline", "target": 0.0, "flops_reduction": 0.0, "top1": 50.0}]
    (tmp_path / "sweep.csv").write_text("the previous run's table\n")

    def crash(self, rows):
        raise KeyboardInterrupt  # e.g. Ctrl-C halfway through the rows

    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(rows, tmp_path, "crash")
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]  # no half file, no temporary left
    assert (tmp_path / "sweep.csv").read_text() == "the previous run's table\n"
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "model.safetensors") as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]


def test_sweep_plot_of_one_target_has_a_readable_x_range(tmp_path, monkeypatch):
    import matplotlib.figure

    limits = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda self, *a, **k: limits.append(self.axes[0].get_xlim()) or savefig(self, *a, **k),
    )
    rows = [{"method": "baseline", "target": 0.0, "flops_reduction": 0.0, "top1": 90.0}]
    rows += [{"method": m, "target": 0.3, "flops_reduction": 0.301, "top1": 89.0} for m in ("mtr", "hsa")]
    write_outputs(rows, tmp_path, "one target")
    low, high = limits[0]
    assert high - low == pytest.approx(10) and low <= 30.1 <= high  # matplotlib alone: 30.09..30.11
    assert x_range([20.0, 30.0, 40.0]) == pytest.approx((19.0, 41.0))
    assert x_range([2.0]) == (0.0, 10.0)


def test_demo_shows_progress_per_evaluation(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path, train=0, test=16)
    main(["demo", "--data", str(root), "--limit", "16", "--threads", "1", "--json"])
    captured = capsys.readouterr()
    methods = [row["method"] for row in json.loads(captured.out)["rows"]]
    assert methods == ["baseline", "mtr", "mtr", "mtr", "mtr (calibrated)"]
    assert "sweep:" in captured.err and "baseline" in captured.err and "mtr 40%" in captured.err
    assert captured.err.count("images:") >= 5  # one bar per evaluation
