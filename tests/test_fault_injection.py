"""Interrupted long runs lose nothing and resume to the uninterrupted result; damaged cells are recomputed.

Each test interrupts a run at a chosen cell, by a hook that raises KeyboardInterrupt (what Ctrl-C
raises), by a real SIGKILL of a subprocess, or by a SIGINT / SIGTERM sent to the training process,
then runs the same command again and compares with a run that was never interrupted. Tiny random
models on 16 fake images: seconds each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fake_data import write_fashion_mnist
from safetensors.torch import save_file

import mambatr.probe
import mambatr.sweep
import mambatr.train
from mambatr.cli import main
from mambatr.models import create_model
from mambatr.runs import RunFolder, RunFolderError, folder_lock
from mambatr.train import Recipe, train

SMALL = dict(
    img_size=28, patch_size=4, stride=4, in_chans=1, num_classes=10, embed_dim=16, depth=4, d_state=4
)
TIMING = ("images_per_s",)  # measured again by each run: the only values a resumed row may differ in


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_inputs(tmp_path_factory.mktemp("inputs"))


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """(data folder, checkpoint) of a random tiny vim_custom saved as a `mambatr train` export."""
    root = write_fashion_mnist(folder / "data", train=5_040, test=16)
    torch.manual_seed(0)
    weights = folder / "tiny.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_model("vim_custom", **SMALL).state_dict().items()}, weights
    )
    weights.with_suffix(".json").write_text(json.dumps({"model": "vim_custom", "config": SMALL}))
    return root, weights


def sweep_argv(inputs, out: Path, *extra: str) -> list[str]:
    root, weights = inputs
    model = ["--model", "vim_custom", "--checkpoint", str(weights), "--data", str(root)]
    grid = ["--methods", "mtr,hsa", "--reductions", "0.2,0.3", "--threads", "1", "--json"]
    return ["sweep", *model, *grid, "--out", str(out), *extra]


def rows_of(capsys) -> list[dict]:
    return json.loads(capsys.readouterr().out)["rows"]


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def interrupt_at(monkeypatch, module, name: str, call: int) -> list[int]:
    """Make ``module.name`` raise KeyboardInterrupt (Ctrl-C) at its ``call``-th call; returns the
    list its calls are counted in."""
    original, calls = getattr(module, name), []

    def hooked(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, hooked)
    return calls


def counting(monkeypatch, module, name: str) -> list[int]:
    return interrupt_at(monkeypatch, module, name, call=0)


def test_interrupted_sweep_resumes_to_the_uninterrupted_rows(inputs, tmp_path, capsys, monkeypatch):
    main(sweep_argv(inputs, tmp_path / "straight"))
    straight = rows_of(capsys)
    interrupt_at(monkeypatch, mambatr.sweep, "reduced_row", call=3)  # Ctrl-C in the third pair
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(sweep_argv(inputs, tmp_path / "split"))
    capsys.readouterr()
    kept = sorted(p.name for p in (tmp_path / "split" / "cells").iterdir())
    assert kept == ["baseline.json", "mtr_0.2.json", "mtr_0.3.json"]  # everything finished is kept
    monkeypatch.undo()
    computed = counting(monkeypatch, mambatr.sweep, "reduced_row")
    main(sweep_argv(inputs, tmp_path / "split"))
    assert untimed(rows_of(capsys)) == untimed(straight) and len(computed) == 2  # only hsa was left
    csv_rows = [(tmp_path / name / "sweep.csv").read_text().splitlines() for name in ("straight", "split")]
    assert len(csv_rows[0]) == len(csv_rows[1]) == 6


def test_sigkilled_sweep_resumes(inputs, tmp_path, capsys):
    """A real SIGKILL (no handler runs, nothing is flushed at exit) in the middle of the second pair."""
    argv = sweep_argv(inputs, tmp_path / "killed")
    script = textwrap.dedent(
        f"""
        import os, signal
        import mambatr.sweep
        from mambatr.cli import main
        original, calls = mambatr.sweep.reduced_row, []
        def killing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        mambatr.sweep.reduced_row = killing
        main({argv!r})
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kept = sorted(p.name for p in (tmp_path / "killed" / "cells").iterdir())
    assert kept == ["baseline.json", "mtr_0.2.json"]
    main(argv)
    resumed = rows_of(capsys)
    main(sweep_argv(inputs, tmp_path / "straight"))
    assert untimed(resumed) == untimed(rows_of(capsys))


def test_a_damaged_cell_is_recomputed_not_trusted(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    main(sweep_argv(inputs, out))
    straight = rows_of(capsys)
    edited = out / "cells" / "mtr_0.3.json"
    cell = json.loads(edited.read_text())
    cell["result"]["top1"] = 99.0  # valid JSON, plausible value: only the checksum tells
    edited.write_text(json.dumps(cell))
    truncated = out / "cells" / "hsa_0.2.json"
    truncated.write_text(truncated.read_text()[:40])
    computed = counting(monkeypatch, mambatr.sweep, "reduced_row")
    main(sweep_argv(inputs, out))
    captured = capsys.readouterr()
    assert untimed(json.loads(captured.out)["rows"]) == untimed(straight) and len(computed) == 2
    assert f"{edited} is damaged or was edited" in captured.err and str(truncated) in captured.err


def test_calibrated_sweep_reuses_the_schedules_it_found(inputs, tmp_path, capsys, monkeypatch):
    """Ctrl-C while evaluating hsa's row: mtr's schedule and row, and hsa's schedule (found just before),
    are all reused; the resumed run calibrates nothing and ends with the uninterrupted rows."""
    calibrated = ("--schedule", "calibrated", "--calibration-images", "4", "--reductions", "0.3")
    main([*sweep_argv(inputs, tmp_path / "straight"), *calibrated])
    straight = rows_of(capsys)
    interrupt_at(monkeypatch, mambatr.sweep, "reduced_row", call=2)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main([*sweep_argv(inputs, tmp_path / "split"), *calibrated])
    capsys.readouterr()
    schedules = sorted(p.name for p in (tmp_path / "split" / "schedules").iterdir())
    assert schedules == ["vim_custom_hsa_30.json", "vim_custom_mtr_30.json"]
    monkeypatch.undo()
    calibrations = counting(monkeypatch, mambatr.sweep, "calibrate")
    main([*sweep_argv(inputs, tmp_path / "split"), *calibrated])
    assert untimed(rows_of(capsys)) == untimed(straight) and calibrations == []
    edited = tmp_path / "split" / "schedules" / "vim_custom_hsa_30.json"
    edited.write_text(edited.read_text().replace('"objective"', '"objective" ', 1))  # the file changed
    (tmp_path / "split" / "cells" / "hsa_0.3.json").unlink()  # and its row is gone
    main([*sweep_argv(inputs, tmp_path / "split"), *calibrated])
    assert untimed(rows_of(capsys)) == untimed(straight) and len(calibrations) == 1  # found again


def test_a_rerun_with_other_arguments_or_into_a_foreign_folder_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    main(sweep_argv(inputs, out, "--limit", "8"))
    capsys.readouterr()
    for extra, named in (
        (["--limit", "12"], "of other arguments: --limit 8 there, 12 here"),
        (["--limit", "8", "--batch-size", "4"], "--batch-size 256 there, 4 here"),
        ([], "--limit 8 there, not given here"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(sweep_argv(inputs, out, *extra))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and named in err and "--overwrite" in err and err.count("\n") == 1
    main(sweep_argv(inputs, out, "--limit", "12", "--overwrite"))
    assert json.loads(capsys.readouterr().out)["limit"] == 12
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(sweep_argv(inputs, foreign))
    assert "is not empty (notes.txt) and holds no sweep run" in capsys.readouterr().err
    with folder_lock(out), pytest.raises(SystemExit):  # another run is writing the folder
        main(sweep_argv(inputs, out, "--limit", "12"))
    assert f"--out {out} is in use by another run (pid {os.getpid()})" in capsys.readouterr().err


def test_a_refused_run_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    with RunFolder(out, "sweep", {"--limit": 8}):
        pass  # nothing was kept
    assert not out.exists()
    with RunFolder(out, "sweep", {"--limit": 8}) as run:
        run.save("baseline", {"top1": 1.0})
    with pytest.raises(RunFolderError, match="--limit 8 there, 9 here"):
        RunFolder(out, "sweep", {"--limit": 9})
    with pytest.raises(RunFolderError, match="holds a sweep run, not a probe run"):
        RunFolder(out, "probe", {"--limit": 8})
    with RunFolder(out, "sweep", {"--limit": 8}) as run:
        assert run.done("baseline") == {"top1": 1.0} and run.saved() == 1


def probe_argv(inputs, out: Path, *extra: str) -> list[str]:
    root, weights = inputs
    model = ["--model", "vim_custom", "--checkpoint", str(weights), "--data", str(root)]
    return ["probe", *model, "--after", "0,1", "--remove", "3", "--seeds", "2", "--json", "--out", str(out)]


def test_interrupted_probe_resumes_to_the_uninterrupted_result(inputs, tmp_path, capsys, monkeypatch):
    main(probe_argv(inputs, tmp_path / "straight"))
    straight = json.loads(capsys.readouterr().out)
    interrupt_at(monkeypatch, mambatr.probe, "evaluate", call=5)  # dense + 3 of block 0's, then Ctrl-C
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(probe_argv(inputs, tmp_path / "split"))
    capsys.readouterr()
    assert len(list((tmp_path / "split" / "cells").iterdir())) == 4
    monkeypatch.undo()
    computed = counting(monkeypatch, mambatr.probe, "evaluate")
    main(probe_argv(inputs, tmp_path / "split"))
    resumed = json.loads(capsys.readouterr().out)
    assert len(computed) == 3  # block 1: two random seeds and background
    assert {k: v for k, v in resumed.items() if k != "command"} == {
        k: v for k, v in straight.items() if k != "command"
    }
    assert json.loads((tmp_path / "split" / "probe.json").read_text()) == resumed


RECIPE = Recipe(model="vim_custom", epochs=2, batch_size=4, threads=1, model_overrides=SMALL)


def train_argv(inputs, out: Path, *extra: str) -> list[str]:
    """`mambatr train` of vim_fmnist (the CLI trains registered architectures) on 8 images, 2 epochs of
    2 steps; ``extra`` flags come last, so they win over these (argparse keeps the last value)."""
    recipe = ["--epochs", "2", "--batch-size", "4", "--threads", "1", "--limit", "8", "--out", str(out)]
    return ["train", "--model", "vim_fmnist", "--data", str(inputs[0]), *recipe, *extra]


def signal_at_step(monkeypatch, step: int, number: int) -> None:
    """Send ``number`` to this process while training's ``step``-th batch (1-based) is prepared."""
    original, calls = mambatr.train.augmented_batch, []

    def hooked(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), number)
        return original(*args, **kwargs)

    monkeypatch.setattr(mambatr.train, "augmented_batch", hooked)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_train_checkpoints_on_a_signal_and_resumes_exactly(inputs, tmp_path, monkeypatch, number):
    root, handler = str(inputs[0]), signal.getsignal(number)
    straight = train(RECIPE, tmp_path / "straight", data_root=root, limit=8)
    signal_at_step(monkeypatch, step=3, number=number)  # mid-epoch 2 (2 steps per epoch)
    stopped = train(RECIPE, tmp_path / "split", data_root=root, limit=8)
    assert stopped == {
        "finished": False,
        "step": 3,
        "history": stopped["history"],
        "interrupted": signal.Signals(number).name,
    }
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["step"] == 3
    assert signal.getsignal(number) is handler  # training's handler is gone again
    monkeypatch.undo()
    resumed = train(RECIPE, tmp_path / "split", data_root=root, limit=8, resume=True)
    assert resumed["finished"] and [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [h["val_top1"] for h in resumed["history"]] == [h["val_top1"] for h in straight["history"]]


def test_train_command_exits_as_interrupted_and_guards_its_folder(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, step=1, number=signal.SIGINT)
    with pytest.raises(SystemExit) as exit_:
        main(train_argv(inputs, out))
    assert exit_.value.code == 130
    assert "stopped after step 1 (SIGINT)" in capsys.readouterr().err and (out / "last.pth").is_file()
    monkeypatch.undo()
    for extra, named in (
        ([], "holds a training run (last.pth): --resume to continue it, or --overwrite"),
        (["--resume", "--limit", "12"], "--limit=8 there, 12 here"),
        (["--resume", "--epochs", "3"], "--epochs=2 there, 3 here"),
        (["--resume", "--batch-size", "2"], "--batch-size=4 there, 2 here"),
        (["--resume", "--no-augment"], "augment=True there, False here"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(train_argv(inputs, out, *extra))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and named in err and err.count("\n") == 1, err
    main(train_argv(inputs, out, "--resume"))
    assert (out / "vim_fmnist.safetensors").is_file()
    main(train_argv(inputs, out, "--overwrite", "--epochs", "1"))
    assert json.loads((out / "vim_fmnist.json").read_text())["recipe"]["epochs"] == 1
