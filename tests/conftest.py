from __future__ import annotations

import pytest
import torch

import mambatr


@pytest.fixture
def tiny_vim():
    """A small random Vim (16x16 RGB, patch 4 -> 16 patches + middle class token, depth 3)."""

    def build(**overrides):
        torch.manual_seed(0)
        config = dict(img_size=16, patch_size=4, stride=4, embed_dim=16, depth=3, num_classes=5, d_state=4)
        config.update(overrides)
        model = mambatr.create_model("vim_custom", **config)
        with torch.no_grad():  # move away from the init so every parameter matters
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        return model.eval()

    return build
