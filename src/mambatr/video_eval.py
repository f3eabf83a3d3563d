"""Video-level evaluation with several views per video (VideoMamba's Kinetics test: 4 clips x 3 crops).

``VideoViews`` turns a ``VideoFrameFolder`` into one item per video holding all its views, and
``ViewAveraging`` runs the model on every view and returns the log of the view-averaged softmax
(the official ``merge``), so ``mambatr.evaluate`` counts videos, not views, and its loss is the
negative log-likelihood of the averaged prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from mambatr.data.video_folder import VideoFrameFolder, average_views


class VideoViews(torch.utils.data.Dataset):
    """Item i: (views of video i (V, 3, T, S, S), label)."""

    def __init__(self, folder: VideoFrameFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder) // self.folder.num_views

    def __getitem__(self, video: int) -> tuple[torch.Tensor, int]:
        return self.folder.video_views(video)


class ViewAveraging(nn.Module):
    """(B, V, 3, T, H, W) -> (B, classes) log of the mean over views of each view's softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.dim() != 6:
            raise ValueError(f"expected views (B, V, C, T, H, W), got {tuple(views.shape)}")
        logits = self.model(views.flatten(0, 1))
        return average_views(logits, views.shape[1]).clamp(min=1e-30).log()


def parse_views(text: str) -> tuple[int, int]:
    """``"4x3"`` -> (4 clips, 3 crops)."""
    clips, sep, crops = text.lower().partition("x")
    if not sep or not clips.isdigit() or not crops.isdigit() or int(clips) < 1 or int(crops) < 1:
        raise ValueError(f"--views expects CLIPSxCROPS such as 1x1 or 4x3, got {text!r}")
    return int(clips), int(crops)
