"""VideoMamba (OpenGVLab/VideoMamba) in pure PyTorch, with the official state-dict layout.

The blocks are Vim's (``mambatr.models.vim``): the same bidirectional mixer with separate backward
parameters and identical key names (``mamba/mamba_ssm/modules/mamba_simple.py`` of the VideoMamba
repo, ``bimamba=True``), the same pre-norm block (fused add + RMSNorm, eps 1e-5, residual in float32),
the same final add + RMSNorm. Two differences from Vim, both in ``VimConfig`` already:

- the mixer returns ``out_proj(y_forward + y_backward)``, with no division by 2;
- the class token is the first token and the head reads ``features[:, 0]``.

Image models (``videomamba/image_sm/models/videomamba.py``) are therefore a ``VisionMamba`` with
``cls_position="first", divide_output=False``; ``VideoMambaImage`` only adds the checkpoint cleanup
(``distill_head.*``, official position-embedding resampling) and the official zero class-token init.

Video models (``videomamba/video_sm/models/videomamba.py``) add a Conv3d patch embedding with kernel
``(1, p, p)`` and a temporal position embedding; the token sequence is ``[cls, frame 0 in raster
order, frame 1 in raster order, ...]``, ``1 + T * grid**2`` tokens, and everything after ``embed``
(blocks, reduction, readout, FLOPs) is shared with Vim.

Drop path and dropout are identity at inference and are not modelled (mambatr does not train with
them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mambatr.models.checkpoint import resample_pos_embed
from mambatr.models.vim import ClsPosition, VimConfig, VisionMamba

__all__ = [
    "DISTILL_HEAD_PREFIX",
    "VideoMamba",
    "VideoMambaConfig",
    "VideoMambaImage",
    "VideoPatchEmbed",
    "adapt_videomamba_state_dict",
    "drop_distill_head",
    "inflate_image_checkpoint",
    "interpolate_temporal_pos_embed",
]

DISTILL_HEAD_PREFIX = "distill_head."


@dataclass(frozen=True)
class VideoMambaConfig(VimConfig):
    """A VideoMamba video model: Vim's fields (class token first, no div2) plus the frame count.

    ``num_patches`` counts the patch tokens of the whole clip (``num_frames * grid**2``), so the FLOPs
    counter and the reduction schedule see the true sequence length; ``frame_patches`` is one frame's.
    Only what the official Kinetics models use is supported: tubelet 1 (Conv3d kernel ``(1, p, p)``),
    stride equal to the patch size, class token first.
    """

    cls_position: ClsPosition = "first"
    divide_output: bool = False
    num_frames: int = 8
    tubelet_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.tubelet_size != 1:
            raise ValueError(
                f"tubelet_size={self.tubelet_size} is not supported: the official VideoMamba video models "
                "embed each frame separately (Conv3d kernel (1, p, p), tubelet_size=1)"
            )
        if self.stride != self.patch_size:
            raise ValueError(
                f"the VideoMamba video patch embedding has stride = patch_size; got stride={self.stride}, "
                f"patch_size={self.patch_size}"
            )
        if self.cls_position != "first":
            raise ValueError(
                f"VideoMamba video models put the class token first, got cls_position={self.cls_position!r}"
            )

    @property
    def frame_patches(self) -> int:
        """Patch tokens of one frame (``grid**2``); rows of ``pos_embed`` after the class row."""
        return self.grid**2

    @property
    def temporal_tokens(self) -> int:
        """Rows of ``temporal_pos_embedding``: frames // tubelet_size."""
        return self.num_frames // self.tubelet_size

    @property
    def num_patches(self) -> int:
        return self.temporal_tokens * self.frame_patches

    def input_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        """The input the model takes: (B, C, T, H, W)."""
        return (batch, self.in_chans, self.num_frames, self.img_size, self.img_size)


def drop_distill_head(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without ``distill_head.*``, the self-distillation projection.

    VideoMamba-M and -B on ImageNet were trained with self-distillation
    (``videomamba/image_sm/models/videomamba_distill.py``): the student carries
    ``distill_head = Sequential(RMSNorm(D), Linear(D, teacher_dim))`` mapping its final features to the
    teacher's for the distillation loss. It never reaches the logits, and the official loader drops
    it (``image_sm/main.py``, ``--load_from_distill``: every key containing ``distill_head`` is deleted
    before a strict load). Only keys under that prefix are removed; anything else unknown still fails
    the strict load.
    """
    return {k: v for k, v in state_dict.items() if not k.startswith(DISTILL_HEAD_PREFIX)}


class VideoMambaImage(VisionMamba):
    """A VideoMamba ImageNet model: Vim's architecture with the class token first and no div2.

    Key for key the official image model (``image_sm/models/videomamba.py``) is Vim's layout, so only
    checkpoint reading differs: ``distill_head.*`` keys of the self-distilled M/B checkpoints are
    dropped, and ``pos_embed`` is resampled for other image sizes the official way
    (``resample_pos_embed`` with the class row at 0, plain bicubic). As officially, ``cls_token``
    starts at zero (Vim draws it trunc-normal); this only matters when training from scratch.
    """

    def __init__(self, config: VimConfig) -> None:
        if config.cls_position != "first" or config.divide_output:
            raise ValueError(
                "VideoMamba image models put the class token first and do not divide the mixer output: "
                f"got cls_position={config.cls_position!r}, divide_output={config.divide_output}"
            )
        super().__init__(config)
        nn.init.zeros_(self.cls_token)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state_dict = drop_distill_head(state_dict)
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.ndim == 3 and pos.shape[1] != self.config.seq_len:
            state_dict = {**state_dict, "pos_embed": resample_pos_embed(pos, self.config.grid, 0, 0)}
        return state_dict


class VideoPatchEmbed(nn.Module):
    """Conv3d patchify, kernel = stride = ``(1, p, p)``: (B, C, T, H, W) -> (B, T, grid**2, D)."""

    def __init__(self, config: VideoMambaConfig) -> None:
        super().__init__()
        self.img_size = config.img_size
        self.in_chans = config.in_chans
        self.num_frames = config.num_frames
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel, stride=kernel)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[1] != self.in_chans:
            raise ValueError(
                f"expected videos (B, {self.in_chans}, T, H, W) with T={self.num_frames}, "
                f"got shape {tuple(videos.shape)}"
            )
        if videos.shape[2] != self.num_frames:
            raise ValueError(
                f"expected {self.num_frames} frames, got {videos.shape[2]}; create the model with "
                "num_frames=... (the temporal position embedding is interpolated on load)"
            )
        if videos.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}x{self.img_size} frames, "
                f"got {videos.shape[-2]}x{videos.shape[-1]}; "
                "create the model with img_size=... (position embeddings are interpolated on load)"
            )
        x = self.proj(videos)  # (B, D, T, h, w)
        return x.flatten(3).permute(0, 2, 3, 1)  # (B, T, h*w, D): each frame in raster order


class VideoMamba(VisionMamba):
    """VideoMamba video classifier: Vim's blocks on ``[cls, frame 0 patches, frame 1 patches, ...]``.

    Parameters as the official model: ``patch_embed.proj`` (Conv3d), ``cls_token`` (1, 1, D),
    ``pos_embed`` (1, 1 + grid**2, D) shared by all frames (row 0: the class token),
    ``temporal_pos_embedding`` (1, T, D) added to every patch of frame t, then Vim's layers, ``norm_f``
    and ``head``.
    """

    config: VideoMambaConfig

    def __init__(self, config: VideoMambaConfig) -> None:
        if not isinstance(config, VideoMambaConfig):
            raise TypeError(f"VideoMamba needs a VideoMambaConfig, got {type(config).__name__}")
        super().__init__(config)
        d = config.embed_dim
        # VisionMamba built an image patch embed and a full-sequence pos_embed: replace both
        self.patch_embed = VideoPatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.frame_patches, d))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, config.temporal_tokens, d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # official init: cls_token and temporal_pos_embedding start at zero (only pos_embed is trunc-normal)
        nn.init.zeros_(self.cls_token)

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, 1 + T * grid**2, D) in the official order and summation order."""
        patches = self.patch_embed(videos)  # (B, T, M, D)
        patches = patches + self.pos_embed[:, None, 1:]  # spatial position, the same in every frame
        patches = patches + self.temporal_pos_embedding[:, :, None]  # then the frame's temporal position
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat((cls, patches.flatten(1, 2)), dim=1)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return adapt_videomamba_state_dict(state_dict, self.config)


def interpolate_temporal_pos_embed(temporal: torch.Tensor, frames: int) -> torch.Tensor:
    """(1, T_old, D) -> (1, frames, D) by linear interpolation, ``align_corners=False``.

    As the official fine-tuning code does when the frame count changes
    (``videomamba/video_sm/run_class_finetuning.py``, "Temporal interpolate from ... to ...").
    """
    if temporal.shape[1] == frames:
        return temporal
    rows = temporal.float().permute(0, 2, 1)  # (1, D, T): interpolate along time
    rows = F.interpolate(rows, size=(frames,), mode="linear", align_corners=False)
    return rows.permute(0, 2, 1).to(temporal.dtype)


def inflate_image_checkpoint(
    state_dict: dict[str, torch.Tensor], config: VideoMambaConfig
) -> dict[str, torch.Tensor]:
    """An ImageNet VideoMamba checkpoint as a video checkpoint, as the official ``load_state_dict``
    in ``video_sm/models/videomamba.py`` starts Kinetics fine-tuning: the Conv2d patch weight
    (D, C, p, p) becomes the Conv3d weight (D, C, 1, p, p) (``inflate_weight`` with ``center=True``,
    for tubelet 1 an exact copy) and ``temporal_pos_embedding``, absent from image checkpoints,
    takes its initial value, zero. Only applied when the patch weight is 4-D. The head is kept: the
    official code deletes it before fine-tuning; here a strict load needs ``num_classes`` to match
    (1000 for an ImageNet head), or fails naming ``head.weight``.
    """
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        return state_dict
    inflated = {**state_dict, "patch_embed.proj.weight": weight.unsqueeze(2)}
    if "temporal_pos_embedding" not in state_dict:
        inflated["temporal_pos_embedding"] = weight.new_zeros(1, config.temporal_tokens, weight.shape[0])
    return inflated


def adapt_videomamba_state_dict(
    state_dict: dict[str, torch.Tensor], config: VideoMambaConfig
) -> dict[str, torch.Tensor]:
    """An official VideoMamba checkpoint (Kinetics flat dict, or ImageNet ``{'model': ...}`` already
    unwrapped by ``read_state_dict``) in this model's layout.

    ``distill_head.*`` is dropped (``drop_distill_head``); an image checkpoint is inflated
    (``inflate_image_checkpoint``); ``pos_embed`` (class row 0 + one frame's grid) is resampled
    bicubically for another image size and ``temporal_pos_embedding`` linearly for another frame count,
    as ``video_sm/run_class_finetuning.py`` does. Nothing else is renamed or removed.
    """
    state_dict = inflate_image_checkpoint(drop_distill_head(state_dict), config)
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != 1 + config.frame_patches:
        state_dict = {**state_dict, "pos_embed": resample_pos_embed(pos, config.grid, 0, 0)}
    temporal = state_dict.get("temporal_pos_embedding")
    if temporal is not None and temporal.ndim == 3 and temporal.shape[1] != config.temporal_tokens:
        state_dict = {
            **state_dict,
            "temporal_pos_embedding": interpolate_temporal_pos_embed(temporal, config.temporal_tokens),
        }
    return state_dict
