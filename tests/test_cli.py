import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from fake_data import write_fashion_mnist

from mambatr.cli import main
from mambatr.models import model_entry
from mambatr.train import Recipe, train

SMALL = dict(
    img_size=28, patch_size=7, stride=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, d_state=4
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny vim_custom trained one short epoch on fake data, exported as safetensors + JSON."""
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root)
    out = tmp_path_factory.mktemp("run")
    result = train(
        Recipe(model="vim_custom", epochs=1, batch_size=32, threads=1, model_overrides=SMALL),
        out,
        data_root=str(root),
        limit=64,
    )
    return root, out, result


def test_train_exports(trained):
    root, out, result = trained
    assert result["finished"] and (out / "vim_custom.safetensors").is_file() and (out / "last.pth").is_file()
    info = json.loads((out / "vim_custom.json").read_text())
    assert info["config"]["embed_dim"] == 16 and info["recipe"]["epochs"] == 1 and len(info["history"]) == 1
    assert torch.load(out / "last.pth", weights_only=True)["step"] == 2  # 64 images / batch 32


def test_resume_continues_exactly_where_it_stopped(trained, tmp_path):
    root = trained[0]
    recipe = Recipe(model="vim_custom", epochs=2, batch_size=32, threads=1, model_overrides=SMALL)
    train(recipe, tmp_path / "straight", data_root=str(root), limit=64)
    interrupted = train(recipe, tmp_path / "split", data_root=str(root), limit=64, max_steps=3)
    assert not interrupted["finished"] and interrupted["step"] == 3  # stopped mid-epoch 2
    resumed = train(recipe, tmp_path / "split", data_root=str(root), limit=64, resume=True)
    assert resumed["finished"] and resumed["step"] == 4
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="recipe differs"):
        train(
            Recipe(model="vim_custom", epochs=3, batch_size=32, threads=1, model_overrides=SMALL),
            tmp_path / "split",
            data_root=str(root),
            limit=64,
            resume=True,
        )


def _eval(root, out, *extra: str) -> list[str]:
    """`mambatr eval` argv for the fixture's model and data."""
    checkpoint = str(out / "vim_custom.safetensors")
    return ["eval", "--model", "vim_custom", "--checkpoint", checkpoint, "--data", str(root), *extra]


def test_eval_json_keys(trained, capsys):
    root, out, _ = trained
    main(_eval(root, out, "--json", "--threads", "1"))
    result = json.loads(capsys.readouterr().out)
    assert {"model", "top1", "images", "gflops", "images_per_s", "loss"} <= set(result)
    assert result["images"] == 40 and 0 <= result["top1"] <= 100


def test_eval_with_method_json(trained, capsys):
    root, out, _ = trained
    main(_eval(root, out, "--json", "--method", "mtr", "--ratio", "0.2", "--layers", "0", "--threads", "1"))
    result = json.loads(capsys.readouterr().out)
    assert (
        result["method"] == "mtr"
        and result["tokens_per_layer"][0] == 17
        and result["tokens_per_layer"][1] < 17
    )
    assert result["gflops"] < result["gflops_dense"]
    for key in ("flops_reduction_target", "flops_reduction_achieved"):
        assert key in result


def test_flops_json(capsys):
    main(["flops", "--model", "vim_small", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "vim_small" and result["params"] == 25_796_584
    assert len(result["per_layer"]) == 24 and result["gflops"] > 5


def test_errors_are_clear(trained, capsys):
    root, out, _ = trained
    with pytest.raises(SystemExit):
        main(["flops", "--model", "vim_huge"])
    assert "unknown model 'vim_huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", "vim_small"])
    assert "has no shipped weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_eval(root, out, "--method", "mtr", "--flops-reduction", "0.95"))
    assert "--flops-reduction must be in (0, 0.9)" in capsys.readouterr().err  # the flag, not the argument
    with pytest.raises(SystemExit):
        main(_eval(root, out, "--method", "mtr", "--flops-reduction", "0.3", "--ratio", "0.2"))
    assert "give exactly one of --flops-reduction (a FLOPs target) or --ratio" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_eval(root, out, "--ratio", "0.2"))
    assert "--ratio needs --method" in capsys.readouterr().err


def _user_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error: exit status 2, nothing on stdout, one line on stderr (besides
    progress bars)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    lines = captured.err.replace("\r", "\n").splitlines()
    lines = [line for line in lines if line.strip() and "%|" not in line]  # tqdm draws "NN%|###|"
    assert len(lines) == 1 and lines[0].startswith("mambatr"), captured.err
    return lines[0]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--indicator", "cls"], "--indicator needs --method"),
        (["--option", "seed=1"], "--option needs --method"),
        (["--layers", "0", "--flops-reduction", "0.3"], "--flops-reduction / --layers need --method"),
        (["--schedule", "s.json"], "--schedule needs --method"),
    ],
)
def test_reduction_flags_without_method_are_refused(trained, capsys, flags, named):
    root, out, _ = trained
    assert named in _user_error(capsys, _eval(root, out, *flags))
    assert named in _user_error(capsys, ["bench", "--model", "vim_custom", *flags])


def test_method_options_are_flags_typed_by_the_method(trained, capsys):
    root, out, _ = trained
    base = _eval(root, out, "--json", "--ratio", "0.2", "--layers", "0", "--threads", "1")
    main([*base, "--method", "pumer", "--prune-first", "true", "--option", "prune_share=0.25"])
    assert json.loads(capsys.readouterr().out)["options"] == {
        "weights": "size",
        "prune_first": True,
        "prune_share": 0.25,
    }
    line = _user_error(capsys, [*base, "--method", "hsa", "--indicator", "cls"])
    assert "hsa: unknown option 'indicator'" in line
    assert "mtr: seed expects int, got 'x'" in _user_error(capsys, [*base, "--method", "mtr", "--seed", "x"])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mambatr {importlib.metadata.version('mambatr')}\n"


@pytest.mark.parametrize(
    "flag, value", [("--limit", "-5"), ("--limit", "0"), ("--threads", "0"), ("--batch-size", "0")]
)
def test_counts_must_be_positive(trained, capsys, flag, value):
    root, out, _ = trained
    line = _user_error(capsys, _eval(root, out, flag, value))
    assert f"argument {flag}: expected a positive integer, got '{value}'" in line


def test_eval_json_is_one_document_and_progress_goes_to_stderr(trained, capsys):
    root, out, _ = trained
    main(_eval(root, out, "--json", "--threads", "1"))
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 40  # stdout is exactly one JSON document
    assert "eval vim_custom" in captured.err and "img" in captured.err  # the tqdm bar


def test_checkpoint_of_another_model_is_refused(trained, capsys, tmp_path):
    """The JSON beside an export sets the architecture: another model's export would be built and
    reported under the wrong name (bench --model vim_tiny reported a vim_fmnist as vim_tiny)."""
    root, out, _ = trained
    shipped = str(model_entry("vim_fmnist").weights)
    line = _user_error(capsys, ["bench", "--model", "vim_tiny", "--checkpoint", shipped, "--runs", "1"])
    assert "holds a vim_fmnist" in line and "not a vim_tiny" in line and "pass --model vim_fmnist" in line
    ours = str(out / "vim_custom.safetensors")
    line = _user_error(capsys, ["eval", "--model", "vim_tiny", "--checkpoint", ours, "--data", str(root)])
    assert "holds a vim_custom" in line and "not a vim_tiny" in line and "embed_dim 16 vs 192" in line
    line = _user_error(capsys, ["eval", "--model", "plainmamba_fmnist", "--checkpoint", shipped])
    assert "not a plainmamba_fmnist: another model family" in line and "PlainMamba" in line


class NotAllowListed:
    """A class outside the checkpoint allow-list: unpickling it could run code."""


def test_checkpoint_and_data_paths_say_what_is_wrong(trained, capsys, tmp_path):
    root, out, _ = trained
    folder = tmp_path / "weights.pth"
    folder.mkdir()
    text = tmp_path / "notes.pth"
    text.write_text("lr: 0.001\n")
    pickled = tmp_path / "code.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": NotAllowListed()}, pickled)
    truncated = tmp_path / "vim_custom.safetensors"
    truncated.write_bytes((out / "vim_custom.safetensors").read_bytes()[:100])
    base = ["eval", "--model", "vim_custom", "--data", str(root), "--checkpoint"]
    assert "is a folder, not a weights file" in _user_error(capsys, [*base, str(folder)])
    assert "is not a PyTorch checkpoint" in _user_error(capsys, [*base, str(text)])
    line = _user_error(capsys, [*base, str(pickled)])
    assert "holds code" in line and "refused" in line and "weights_only" not in line and "\x1b" not in line
    line = _user_error(capsys, [*base, str(truncated)])
    assert f"{truncated} is not a readable safetensors file" in line
    data_file = tmp_path / "t10k-images-idx3-ubyte"
    data_file.write_bytes(b"")
    line = _user_error(
        capsys,
        [
            "eval",
            "--model",
            "vim_custom",
            "--checkpoint",
            str(out / "vim_custom.safetensors"),
            "--data",
            str(data_file),
        ],
    )
    assert f"{data_file} is a file" in line


def test_train_refuses_bad_out_before_work(trained, capsys, tmp_path):
    root = trained[0]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    train_args = ["train", "--model", "vim_custom", "--data", str(root), "--limit", "8", "--epochs", "1"]
    assert f"--out {a_file} is a file, not a folder" in _user_error(
        capsys, [*train_args, "--out", str(a_file)]
    )
    missing = tmp_path / "never_created"
    line = _user_error(capsys, [*train_args, "--resume", "--out", str(missing)])
    assert "--resume: no checkpoint" in line and not missing.exists()
    line = _user_error(capsys, [*train_args, "--random-erasing", "1.5", "--out", str(missing)])
    assert "--random-erasing=1.5" in line and not missing.exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's /sys, unwritable even for root")
def test_unwritable_out_is_refused(trained, capsys):
    root = trained[0]
    line = _user_error(
        capsys, ["train", "--model", "vim_custom", "--data", str(root), "--out", "/sys/mambatr/run"]
    )
    assert "--out /sys/mambatr/run: cannot write in /sys" in line


def test_a_bug_raising_key_error_is_not_reported_as_bad_input(monkeypatch):
    import mambatr.cli as cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_flops", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["flops", "--model", "vim_small"])


def test_unreadable_image_is_named_not_a_worker_traceback(image_folder_with_bad_files, capsys):
    argv, val = image_folder_with_bad_files
    line = _user_error(capsys, argv)
    assert f"{val / 'a' / '2.jpg'}: cannot read the image" in line and "--skip-bad-images" in line


def test_skip_bad_images_counts_and_lists_them(image_folder_with_bad_files, capsys):
    argv, val = image_folder_with_bad_files
    main([*argv, "--skip-bad-images", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 4 and result["skipped"] == 2
    assert [line.split(": ")[0] for line in result["skipped_images"]] == [
        str(val / "a" / "2.jpg"),
        str(val / "b" / "1.jpg"),
    ]
    main([*argv, "--skip-bad-images"])
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().out
