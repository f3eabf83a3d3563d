"""Every shipped testbed loads by name with no network and classifies its own data."""

from __future__ import annotations

import pytest
import torch

import mambatr
from mambatr.models import list_models, model_entry


def _shipped() -> list[str]:
    return [name for name in list_models() if model_entry(name).weights is not None]


def test_the_five_testbeds_are_shipped():
    assert _shipped() == [
        "plainmamba_fmnist",
        "videomamba_fmnist_clips",
        "vim_fmnist",
        "vim_fmnist_deit",
        "vim_fmnist_p2",
    ]


@pytest.mark.parametrize("name", _shipped())
def test_shipped_weights_load_strictly_and_run(name):
    model = mambatr.create_model(name, pretrained=True).eval()
    inputs = torch.randn(model.config.input_shape(2))
    with torch.no_grad():
        logits = model(inputs)
    assert logits.shape == (2, model.config.num_classes) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, floor", [("plainmamba_fmnist", 90.0), ("videomamba_fmnist_clips", 82.0)]
)  # measured: 91.22 % (92.1 % on these 1,000) and 83.63 % on all 10,000 (docs/testbed.md)
def test_shipped_testbeds_accuracy_on_1000_test_samples(name, floor):
    from mambatr.data.tasks import testbed
    from mambatr.evaluate import evaluate_tensors

    model = mambatr.create_model(name, pretrained=True)
    data = testbed(model_entry(name).dataset)
    inputs, labels = data.load("test", None)
    result = evaluate_tensors(model, inputs[:1000], labels[:1000], progress=False, to_input=data.to_input)
    assert result["top1"] >= floor
