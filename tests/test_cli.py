import json

import pytest
import torch
from fake_data import write_fashion_mnist

from mambatr.cli import main
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
    assert "flops_reduction must be in (0, 0.9)" in capsys.readouterr().err
