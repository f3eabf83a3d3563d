"""What the search benchmarks share: a shipped model with its first val images, and a block-work counter.

Block work is image x token x block, counted by a hook on every block as it runs: proportional to the
blocks' FLOPs and independent of what else the machine runs, so it is the figure to compare on a
shared machine (calibration_speed.py, tune_cost.py).
"""

from __future__ import annotations

import torch

import mambatr
from mambatr.data.tasks import TESTBEDS
from mambatr.models import model_entry


def shipped_model_and_val_images(name: str, count: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """``name`` with its shipped weights (eval mode) and its testbed's first ``count`` val images."""
    model = mambatr.create_model(name, pretrained=True).eval()
    testbed = TESTBEDS[model_entry(name).dataset]
    return model, testbed.to_input(testbed.load("val")[0][:count])


class BlockWork:
    """Counts image x token x block over ``model.layers`` from construction on; ``reset`` zeroes it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        for layer in model.layers:
            layer.register_forward_pre_hook(self._add)

    def _add(self, block: torch.nn.Module, inputs: tuple) -> None:
        self.count += inputs[0].shape[0] * inputs[0].shape[1]  # images x tokens entering the block

    def reset(self) -> None:
        self.count = 0
