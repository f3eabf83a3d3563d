"""Batched reductions equal a simple per-image reference: each image reduced on its own."""

import pytest
import torch

import mambatr
from mambatr.data import ImageFolder, build_eval_transform
from mambatr.evaluate import evaluate
from mambatr.reduction import METHODS, build_method
from mambatr.reduction.state import TokenState


def _slice_internals(internals, index: int):
    def one(branch):
        fields = {k: getattr(branch, k) for k in ("delta", "B", "C", "y", "y_ungated")}
        return type(branch)(**{k: v[index : index + 1] for k, v in fields.items()}, A=branch.A)

    return type(internals)(
        tuple(one(branch) for branch in internals.branches),
        hidden=internals.hidden[index : index + 1],
        residual=internals.residual[index : index + 1],
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batched_equals_per_image(tiny_vim, method):
    model = tiny_vim()
    tokens = model.embed(torch.randn(4, 3, 16, 16))
    hidden, residual, internals = model.layers[0](tokens, None, capture=True)
    state = TokenState.initial(tokens, model.config.cls_index).with_streams(hidden, residual)
    reducer = build_method(method)
    batched = reducer.reduce(state, internals, count=4)
    for i in range(4):
        single_state = TokenState.initial(tokens[i : i + 1], model.config.cls_index).with_streams(
            hidden[i : i + 1], residual[i : i + 1]
        )
        single = reducer.reduce(single_state, _slice_internals(internals, i), count=4)
        assert torch.equal(single.positions, batched.positions[i : i + 1])
        torch.testing.assert_close(single.hidden, batched.hidden[i : i + 1], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(single.residual, batched.residual[i : i + 1], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(single.sizes, batched.sizes[i : i + 1])


def test_image_folder_eval_end_to_end(tmp_path, tiny_vim):
    """An ImageNet-style folder of JPEGs, Vim's eval transform, a random small model, dense and reduced."""
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i, size in enumerate(((60, 50), (64, 80), (100, 70))):
            Image.new("RGB", size, color=(40 * i, 100, 200)).save(tmp_path / label / f"{i}.jpg")
    dataset = ImageFolder(tmp_path, transform=build_eval_transform(input_size=48))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    model = tiny_vim(img_size=48, patch_size=16, stride=16, num_classes=2)
    dense = evaluate(model, loader, total=len(dataset), progress=False)
    assert dense["images"] == 6 and 0 <= dense["top1"] <= 100
    mambatr.apply(model, "mtr", ratio=0.3, layers=[0])
    reduced = evaluate(model, loader, total=len(dataset), progress=False)
    assert reduced["images"] == 6
