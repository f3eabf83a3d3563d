from __future__ import annotations

import json

import numpy as np
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


@pytest.fixture
def image_folder_with_bad_files(tmp_path):
    """A tiny ImageNet-style model (a vim_tiny export whose JSON makes it 48x48, depth 2) and a val
    folder of 6 JPEGs, one truncated and one that is text."""
    from PIL import Image
    from safetensors.torch import save_file

    config = dict(img_size=48, patch_size=16, stride=16, num_classes=2, embed_dim=16, depth=2, d_state=4)
    weights = tmp_path / "vim_tiny.safetensors"
    save_file(mambatr.create_model("vim_tiny", **config).state_dict(), str(weights))
    (tmp_path / "vim_tiny.json").write_text(json.dumps({"model": "vim_tiny", "config": config}))
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "val" / name).mkdir(parents=True)
        for index in range(3):
            pixels = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "val" / name / f"{index}.jpg")
    truncated = tmp_path / "val" / "b" / "1.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (tmp_path / "val" / "a" / "2.jpg").write_text("not an image")
    argv = ["eval", "--model", "vim_tiny", "--checkpoint", str(weights), "--data", str(tmp_path / "val")]
    return [*argv, "--workers", "1", "--threads", "1"], tmp_path / "val"
