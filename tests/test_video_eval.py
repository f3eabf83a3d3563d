"""`mambatr eval` on a Kinetics-style frame-folder set: one prediction per video, views averaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import mambatr
from mambatr.cli import main
from mambatr.data import VideoFrameFolder, average_views
from mambatr.video_eval import VideoViews, ViewAveraging

TINY = {"img_size": 32, "patch_size": 16, "stride": 16, "embed_dim": 32, "depth": 2, "num_frames": 2}


def _write_set(root: Path, videos: int = 5, frames: int = 7) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for v in range(videos):
        folder = root / f"class{v % 3}" / f"video{v}"
        folder.mkdir(parents=True)
        for i in range(frames):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # not square: resize + crops matter
            Image.fromarray(pixels).save(folder / f"img_{i:05d}.png")
        lines.append(f"class{v % 3}/video{v}.mp4,{v % 3}")  # the official test.csv: path,label
    (root / "test.csv").write_text("\n".join(lines) + "\n")
    return root


def test_eval_counts_videos_and_averages_views(tmp_path, capsys):
    data = _write_set(tmp_path / "k400")
    torch.manual_seed(0)
    model = mambatr.create_model("videomamba_tiny_k400", num_classes=3, **TINY).eval()
    checkpoint = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    checkpoint.with_suffix(".json").write_text(json.dumps({"config": {"num_classes": 3, **TINY}}))

    main(["eval", "--model", "videomamba_tiny_k400", "--checkpoint", str(checkpoint), "--data", str(data),
          "--views", "2x3", "--batch-size", "2", "--workers", "0", "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 5  # videos, not the 30 views

    folder = VideoFrameFolder(data, data / "test.csv", num_frames=2, img_size=32, num_clips=2, num_crops=3)
    with torch.no_grad():
        probs = torch.cat([average_views(model(folder.video_views(v)[0]), 6) for v in range(5)])
        wrapped = ViewAveraging(model)(torch.stack([VideoViews(folder)[v][0] for v in range(5)]))
    torch.testing.assert_close(wrapped.exp(), probs)
    labels = torch.tensor([v % 3 for v in range(5)])
    assert result["correct"] == int((probs.argmax(-1) == labels).sum())


def test_train_and_eval_the_clip_testbed_from_the_command_line(tmp_path, capsys):
    """`train` and `eval` go through the clip testbed (5-D input, 20 classes) like the image ones."""
    from fake_data import write_fashion_mnist

    root = write_fashion_mnist(tmp_path / "fmnist", train=5_100, test=30)
    out = tmp_path / "run"
    main(["train", "--model", "videomamba_fmnist_clips", "--data", str(root), "--out", str(out),
          "--epochs", "1", "--batch-size", "32", "--limit", "64", "--threads", "1"])  # fmt: skip
    weights = out / "videomamba_fmnist_clips.safetensors"
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["recipe"]["model"] == "videomamba_fmnist_clips" and len(info["history"]) == 1
    capsys.readouterr()
    main(["eval", "--model", "videomamba_fmnist_clips", "--checkpoint", str(weights), "--data", str(root),
          "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 30 and 0 <= result["top1"] <= 100
