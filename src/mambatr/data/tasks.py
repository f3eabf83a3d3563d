"""The in-memory testbeds by name: how to load a split, turn uint8 samples into model input, augment.

A registered model names its dataset (``ModelEntry.dataset``); ``train``, ``eval`` and ``sweep`` look
the testbed up here, so a new testbed is one entry below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from mambatr.data.batches import augment_batch, to_model_input
from mambatr.data.fashion_mnist import load_fashion_mnist
from mambatr.data.fmnist_clips import clips_to_model_input, load_fmnist_clips

# The video testbed's clips move left or right ("shift"). The "orbit" motion, whose direction no single
# frame can tell even with its time index, did not train within our CPU budget (docs/testbed.md).
CLIP_MOTION = "shift"


@dataclass(frozen=True)
class Testbed:
    name: str
    load: Callable[[str, str | Path | None], tuple[torch.Tensor, torch.Tensor]]  # split, root -> x, y
    to_input: Callable[[torch.Tensor], torch.Tensor]  # uint8 samples -> normalised float model input
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # uint8 -> uint8, seeded
    description: str


TESTBEDS: dict[str, Testbed] = {
    "fashion_mnist": Testbed(
        "fashion_mnist",
        load_fashion_mnist,
        to_model_input,
        augment_batch,  # 2-px random shift and horizontal flip
        "Fashion-MNIST images (N, 1, 28, 28)",
    ),
    "fmnist_clips": Testbed(
        "fmnist_clips",
        partial(load_fmnist_clips, motion=CLIP_MOTION),
        clips_to_model_input,
        partial(augment_batch, flip=False),  # frames as channels: one shift per clip; no flip, which
        # would reverse the motion
        "Fashion-MNIST clips (N, 1, 4, 28, 28), item moving left or right, 20 classes",
    ),
}


def testbed(name: str) -> Testbed:
    if name not in TESTBEDS:
        raise ValueError(f"no in-memory testbed {name!r}; known: {', '.join(TESTBEDS)}")
    return TESTBEDS[name]
