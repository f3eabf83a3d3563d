"""The fragility probe: fixed pruning through the reduction hook, its two orders, the command."""

from __future__ import annotations

import json

import pytest
import torch
from fake_data import write_fashion_mnist
from safetensors.torch import save_file

import mambatr
from mambatr.cli import main
from mambatr.data import to_model_input
from mambatr.models.vim import rms_norm
from mambatr.probe import (
    FixedPrune,
    PrunedModel,
    default_after,
    default_remove,
    patch_energy,
    run_probe,
)
from mambatr.reduction.api import Reduction, intercept_reduction
from mambatr.tokens import gather_tokens

# 28x28 grayscale, patch 7: 16 patch tokens + the class token at index 8, depth 3
SMALL = dict(
    img_size=28, patch_size=7, stride=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, d_state=4
)


def small_model(name: str = "vim_custom", **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = mambatr.create_model(name, **(config or SMALL))
    with torch.no_grad():  # move away from the init so every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        1, 256, (count, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def kept_positions(model, method, samples, after, count, order, seed=0) -> torch.Tensor:
    """(B, L - count) original positions surviving the prune, recorded at the reduction hook."""
    model.reduction = Reduction(method, {after: count})
    recorded = []

    def record(reduce, state, internals, n):
        out = reduce(state, internals, n)
        recorded.append(out.positions)
        return out

    with torch.no_grad(), intercept_reduction(model, record):
        PrunedModel(model, method, to_model_input, order, seed)(samples)
    return recorded[0]


def test_defaults_scale_with_depth_and_tokens():
    assert (
        default_after(12) == [2, 6, 10] and default_after(8) == [1, 4, 6] and default_after(24) == [4, 12, 20]
    )
    assert default_remove(49) == [5, 10] and default_remove(196) == [20, 39]


def test_pruning_zero_tokens_equals_dense():
    model, images = small_model(), random_images(8)
    dense = model(to_model_input(images))
    method = FixedPrune()
    model.reduction = Reduction(method, {1: 0})
    torch.testing.assert_close(PrunedModel(model, method, to_model_input, "background")(images), dense)
    result = run_probe(
        model, images, torch.zeros(8, dtype=torch.long), to_model_input, [0, 1], [0], 2, 4, False
    )
    assert all(row["top1"] == result["dense_top1"] for row in result["rows"]) and len(result["rows"]) == 4


def test_pruned_tokens_leave_the_sequence_after_block_k():
    """Same logits as running the blocks by hand and dropping the tokens from both streams after block 1."""
    model, images = small_model(), random_images(4)
    method = FixedPrune()
    keep = kept_positions(model, method, images, after=1, count=5, order="background")
    with torch.no_grad():
        logits = PrunedModel(model, method, to_model_input, "background")(images)
        hidden, residual = model.embed(to_model_input(images)), None
        for index, layer in enumerate(model.layers):
            hidden, residual, _ = layer(hidden, residual)
            if index == 1:
                hidden, residual = gather_tokens(hidden, keep), gather_tokens(residual, keep)
        features = rms_norm(residual + hidden, model.norm_f.weight, model.norm_f.eps)
        cls = (keep == model.config.cls_index).float().argmax(dim=1)
        expected = model.head(features[torch.arange(4), cls])
    torch.testing.assert_close(logits, expected)


def test_random_positions_are_the_same_for_every_image_of_a_seed():
    model, images = small_model(), random_images(6)
    method = FixedPrune()
    seed0 = kept_positions(model, method, images, after=0, count=5, order="random", seed=0)
    seed1 = kept_positions(model, method, images, after=0, count=5, order="random", seed=1)
    assert seed0.shape == (6, 12) and (seed0 == seed0[:1]).all() and (seed1 == seed1[:1]).all()
    assert not torch.equal(seed0[0], seed1[0])
    assert (seed0 == model.config.cls_index).any(dim=1).all() and (seed0.diff(dim=1) > 0).all()
    again = kept_positions(model, method, random_images(6, seed=1), after=0, count=5, order="random", seed=0)
    assert torch.equal(again, seed0)  # the positions depend on the seed only


@pytest.mark.parametrize("name", ["vim_custom", "plainmamba_custom"])
def test_background_drops_all_zero_patches_first(name):
    config = (
        SMALL
        if name == "vim_custom"
        else dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2)
    )
    model = small_model(name, **config)
    patch, grid = model.config.patch_size, model.config.grid
    images = random_images(2)
    zero_patches = [[3, 5, 6], [0, 9, 15]]  # per image, raster patch indices
    for image, patches in zip(images, zero_patches, strict=True):
        for index in patches:
            row, col = divmod(index, grid)
            image[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = 0
    energy = patch_energy(images, model.config)
    assert (
        energy.shape == (2, grid * grid)
        and (energy[0, [3, 5, 6]] == 0).all()
        and (energy > 0).sum() == 2 * (grid * grid - 3)
    )
    tokens = model.config.seq_len
    cls = model.config.cls_index
    to_token = lambda index: index + int(cls is not None and index >= cls)
    keep = kept_positions(model, FixedPrune(), images, after=0, count=2, order="background")
    for kept, patches in zip(keep, zero_patches, strict=True):
        removed = sorted(set(range(tokens)) - set(kept.tolist()))
        assert removed == [to_token(i) for i in patches[:2]]  # zero patches, ties by position


def _checkpoint(tmp_path) -> str:
    """A random small model saved as a mambatr export: safetensors + its architecture beside it."""
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small_model().state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"config": SMALL}))
    return str(path)


def test_probe_command_json_and_table(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "data", train=10, test=20)
    argv = ["probe", "--model", "vim_custom", "--checkpoint", _checkpoint(tmp_path), "--data", str(root)]
    main([*argv, "--json", "--seeds", "2", "--threads", "1", "--out", str(tmp_path / "a")])
    result = json.loads(capsys.readouterr().out)
    assert {"model", "dense_top1", "images", "rows"} <= set(result) and result["images"] == 20
    assert [(r["after"], r["remove"], r["order"]) for r in result["rows"]] == [
        (1, 2, "random"), (1, 2, "background"), (1, 3, "random"), (1, 3, "background"),
    ]  # fmt: skip
    assert all(
        0 <= r["top1"] <= 100 and r["seeds"] == (2 if r["order"] == "random" else 1) for r in result["rows"]
    )
    out = ["--out", str(tmp_path / "b")]
    main([*argv, "--after", "0", "--remove", "4", "--limit", "10", "--threads", "1", *out])
    table = capsys.readouterr().out
    assert "| dense" in table and "| background" in table and "10 test images" in table


def test_probe_on_the_val_split(tmp_path, capsys):
    """Testbed decisions are made on val: --split val probes its first --limit images."""
    root = write_fashion_mnist(tmp_path / "data", train=5004, test=4)
    argv = ["probe", "--model", "vim_custom", "--checkpoint", _checkpoint(tmp_path), "--data", str(root)]
    argv += ["--out", str(tmp_path / "out")]  # the second run continues the first (the same arguments)
    main([*argv, "--split", "val", "--limit", "6", "--after", "0", "--remove", "2", "--seeds", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["images"] == 6
    main([*argv, "--split", "val", "--limit", "6", "--after", "0", "--remove", "2", "--seeds", "1"])
    assert "6 val images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--after", "2"], "out of range"),  # depth 3: prune after blocks 0..1
        (["--remove", "16"], "the model has 16 patch tokens"),
        (["--remove", "a,b"], "--remove expects comma-separated integers"),
        (["--seeds", "0"], "argument --seeds: expected a positive integer, got '0'"),
    ],
)
def test_probe_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    root = write_fashion_mnist(tmp_path / "data", train=10, test=4)
    argv = ["probe", "--model", "vim_custom", "--checkpoint", _checkpoint(tmp_path), "--data", str(root)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_probe_refuses_other_models(capsys):
    for name, message in (("vim_huge", "unknown model 'vim_huge'"), ("vim_small", "evaluates on imagenet")):
        with pytest.raises(SystemExit):
            main(["probe", "--model", name])
        assert message in capsys.readouterr().err
