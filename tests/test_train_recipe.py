"""The Vim / DeiT recipe options of ``mambatr train``: augmentations, drop path, init-from, resume."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_fashion_mnist
from safetensors.torch import save_file

import mambatr
from mambatr.cli import main
from mambatr.data import augment_batch, to_model_input
from mambatr.data.deit_augment import crop_box, mix_batch, random_erasing, random_resized_crop
from mambatr.data.tasks import TESTBEDS
from mambatr.models.checkpoint import pi_resize_patch_embed
from mambatr.models.vim_variants import WEIGHTS_DIR
from mambatr.train import Recipe, augmented_batch, init_from, stored_recipe, train

SMALL = dict(
    img_size=28, patch_size=7, stride=7, in_chans=1, num_classes=10, embed_dim=16, depth=3, d_state=4
)
ALL_OPTIONS = dict(
    random_resized_crop=0.35, random_erasing=0.5, mixup=0.8, cutmix=1.0, drop_path=0.2, label_smoothing=0.1
)


# written before the recipe options existed
SHIPPED_RECIPE = json.loads((WEIGHTS_DIR / "vim_fmnist.json").read_text())["recipe"]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(count: int = 8, seed: int = 0) -> torch.Tensor:
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator(seed))
    return to_model_input(images)


def test_default_recipe_augments_as_before():
    """Every new option off: the shift / flip and normalisation of the shipped runs, nothing more."""
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8, generator=generator())
    labels = torch.arange(8)
    data = TESTBEDS["fashion_mnist"]
    batch, target, soft = augmented_batch(Recipe(seed=3), data, images, labels, step=5, num_classes=10)
    expected = to_model_input(augment_batch(images, generator(3 * 7919 + 5)))
    assert torch.equal(batch, expected) and torch.equal(target, labels) and soft is None


def test_shipped_recipe_means_every_option_off():
    recipe = Recipe(**SHIPPED_RECIPE)
    assert stored_recipe(SHIPPED_RECIPE) == asdict(recipe)
    assert not recipe.mixes and recipe.random_erasing == recipe.random_resized_crop == recipe.drop_path == 0
    assert recipe.init_from is None


def test_crop_boxes_stay_inside_and_cover_the_scale():
    g = generator()
    for _ in range(200):
        top, left, h, w = crop_box(28, 28, 0.35, g)
        assert 0 <= top and top + h <= 28 and 0 <= left and left + w <= 28
        assert 0.35 * 784 * 0.85 <= h * w <= 784 and 0.7 <= w / h <= 1.45  # up to rounding


def test_random_resized_crop_changes_inputs_reproducibly():
    x = inputs()
    out = random_resized_crop(x, generator(1), 0.35)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert torch.equal(out, random_resized_crop(x, generator(1), 0.35))
    assert not torch.equal(out, random_resized_crop(x, generator(2), 0.35))
    # bilinear: every value lies within its own sample's range
    assert (out.amin((1, 2, 3)) >= x.amin((1, 2, 3)) - 1e-5).all()
    assert (out.amax((1, 2, 3)) <= x.amax((1, 2, 3)) + 1e-5).all()
    clips = x.reshape(2, 1, 4, 28, 28)
    cropped = random_resized_crop(torch.stack([clips[:, :, 0]] * 4, dim=2), generator(1), 0.35)
    assert torch.equal(cropped[:, :, 0], cropped[:, :, 3])  # a clip's frames share one crop


def test_random_erasing_fills_one_rectangle_with_noise():
    x = torch.zeros(64, 1, 28, 28)
    out = random_erasing(x, generator(0), 1.0)
    assert torch.equal(out, random_erasing(x, generator(0), 1.0)) and torch.equal(x, torch.zeros_like(x))
    for sample in out[:, 0]:
        rows, cols = sample.ne(0).any(1).nonzero(), sample.ne(0).any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert sample[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].ne(0).all()  # a full box
        assert sample.ne(0).sum() == h * w and 0.01 <= h * w / 784 <= 0.4  # 2 % to 1/3, up to rounding
    assert 0.8 < out[out != 0].std() < 1.2  # standard normal noise
    assert torch.equal(random_erasing(x, generator(0), 0.0), x)
    kept = random_erasing(x, generator(0), 0.5).ne(0).flatten(1).any(1).float().mean()
    assert 0.3 < kept < 0.7


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_sum_to_one_and_match_the_pixels(mixup, cutmix):
    x = torch.arange(8.0)[:, None, None, None].expand(8, 1, 28, 28)  # sample i is the constant i
    labels = torch.arange(8)
    for seed in range(10):
        out, targets = mix_batch(x, labels, generator(seed), 10, mixup, cutmix, smoothing=0.0)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        lam = targets[0, 0].item()  # sample 0's own share; its partner is sample 7
        assert targets[0, 7].item() == pytest.approx(1 - lam, abs=1e-6)
        # the share of sample 0's value in its mixed image is lam, whether blended or pasted
        mean_own = (7 - out[0].mean()) / 7
        assert mean_own.item() == pytest.approx(lam, abs=1e-5)
        again = mix_batch(x, labels, generator(seed), 10, mixup, cutmix, smoothing=0.0)
        assert torch.equal(out, again[0]) and torch.equal(targets, again[1])


def test_unmixed_batch_has_label_smoothing_targets():
    x = inputs()
    out, targets = mix_batch(x, torch.arange(8), generator(), 10, 0.8, 1.0, prob=0.0, smoothing=0.1)
    assert torch.equal(out, x)
    torch.testing.assert_close(targets, F.one_hot(torch.arange(8), 10) * 0.9 + 0.01)


def test_drop_path_is_identity_in_eval_and_random_in_training():
    torch.manual_seed(0)
    plain = mambatr.create_model("vim_custom", **SMALL)
    dropping = mambatr.create_model("vim_custom", **SMALL, drop_path_rate=0.5)
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    dropping.load_state_dict(plain.state_dict())
    rates = [layer.drop_path.rate for layer in dropping.layers] + [dropping.drop_path.rate]
    assert rates == pytest.approx([0.0, 0.0, 0.25, 0.5])  # linspace(0, 0.5, 3) shifted by one block
    x = inputs(4)
    with torch.no_grad():
        expected = plain.eval()(x)
        torch.testing.assert_close(dropping.eval()(x), expected)
        dropping.train()
        torch.manual_seed(1)
        first = dropping(x)
        torch.manual_seed(1)
        assert torch.equal(dropping(x), first) and not torch.allclose(first, expected)


def test_pi_resize_keeps_the_embedding_of_an_upsampled_patch():
    """<x, w> = <resize(x), w'> for every 2x2 patch x resized (bilinear) to 4x4: FlexiViT's property."""
    weight = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    resized = pi_resize_patch_embed(weight, 4)
    patches = torch.randn(7, 3, 2, 2, dtype=torch.float64)
    upsampled = F.interpolate(patches, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        upsampled.flatten(1) @ resized.flatten(1).T, patches.flatten(1) @ weight.flatten(1).T
    )
    # downsampling is the least-squares solution: for bilinear 4 -> 2, the sum of each 2x2 block
    down = pi_resize_patch_embed(weight.repeat_interleave(2, -1).repeat_interleave(2, -2), 2)
    torch.testing.assert_close(down, 4 * weight)


def test_init_from_resizes_patch_and_position_embeddings(tmp_path):
    torch.manual_seed(0)
    source = mambatr.create_model("vim_custom", **SMALL)  # patch 7: 4x4 grid
    path = tmp_path / "source.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = mambatr.create_model("vim_custom", **{**SMALL, "patch_size": 4, "stride": 4})  # 7x7 grid
    init_from(target, str(path))
    got, want = target.state_dict(), source.state_dict()
    assert got["patch_embed.proj.weight"].shape == (16, 1, 4, 4) and got["pos_embed"].shape == (1, 50, 16)
    torch.testing.assert_close(
        got["patch_embed.proj.weight"], pi_resize_patch_embed(want["patch_embed.proj.weight"], 4)
    )
    torch.testing.assert_close(got["pos_embed"][0, 24], want["pos_embed"][0, 8])  # class-token row kept
    for key in set(want) - {"patch_embed.proj.weight", "pos_embed"}:
        assert torch.equal(got[key], want[key]), key
    with pytest.raises(ValueError, match="neither a file nor a registered model"):
        init_from(target, "no_such_model")
    with pytest.raises(ValueError, match="has no shipped weights"):
        init_from(target, "vim_small")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(write_fashion_mnist(tmp_path_factory.mktemp("data"), train=5_100, test=8))


def test_resume_with_every_option_is_exact(data_root, tmp_path):
    recipe = Recipe(
        model="vim_custom", epochs=2, batch_size=16, threads=1, model_overrides=SMALL, **ALL_OPTIONS
    )
    straight = train(recipe, tmp_path / "straight", data_root=data_root, limit=48)
    assert straight["finished"] and straight["recipe"]["mixup"] == 0.8
    assert not train(recipe, tmp_path / "split", data_root=data_root, limit=48, max_steps=4)["finished"]
    assert train(recipe, tmp_path / "split", data_root=data_root, limit=48, resume=True)["finished"]
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    plain = Recipe(model="vim_custom", epochs=2, batch_size=16, threads=1, model_overrides=SMALL)
    train(plain, tmp_path / "plain", data_root=data_root, limit=48)
    c = torch.load(tmp_path / "plain" / "last.pth", weights_only=True)["model"]
    assert not torch.allclose(a["head.weight"], c["head.weight"])  # the options did something


def test_checkpoint_without_the_new_recipe_keys_resumes(data_root, tmp_path):
    """A last.pth written before the options existed compares equal to today's default recipe."""
    recipe = Recipe(model="vim_custom", epochs=1, batch_size=16, threads=1, model_overrides=SMALL)
    train(recipe, tmp_path, data_root=data_root, limit=48, max_steps=1)
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    state["recipe"] = {k: v for k, v in state["recipe"].items() if k in SHIPPED_RECIPE}
    assert set(state["recipe"]) == set(SHIPPED_RECIPE) and len(SHIPPED_RECIPE) < len(asdict(recipe))
    torch.save(state, tmp_path / "last.pth")
    assert train(recipe, tmp_path, data_root=data_root, limit=48, resume=True)["finished"]
    with pytest.raises(ValueError, match="recipe differs"):
        train(
            Recipe(**{**asdict(recipe), "mixup": 0.8}), tmp_path, data_root=data_root, limit=48, resume=True
        )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--random-erasing", "1.5"], "invalid recipe: --random-erasing=1.5"),  # flags, not fields
        (["--mixup", "-1"], "invalid recipe: --mixup=-1.0"),
        (["--drop-path", "1"], "--drop-path=1.0"),
        (
            ["--model", "plainmamba_custom", "--drop-path", "0.1"],
            "unknown PlainMambaConfig fields ['drop_path_rate']",
        ),
        (["--init-from", "vim_small"], "has no shipped weights"),
    ],
)
def test_train_bad_options_are_one_line_errors(data_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--model",
                "vim_fmnist",
                "--data",
                data_root,
                "--out",
                str(tmp_path),
                "--limit",
                "16",
                *extra,
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_init_from_the_shipped_vim_fmnist_at_patch_2_is_above_chance():
    """vim_fmnist (patch 4) loaded into vim_fmnist_p2: 26.7 % on these 300 test images (chance: 10 %)."""
    from mambatr.evaluate import evaluate_tensors

    model = mambatr.create_model("vim_fmnist_p2")
    init_from(model, "vim_fmnist")
    images, labels = TESTBEDS["fashion_mnist"].load("test", None)
    assert evaluate_tensors(model, images[:300], labels[:300], progress=False)["top1"] >= 20.0
