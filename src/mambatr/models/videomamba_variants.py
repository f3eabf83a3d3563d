"""Registered VideoMamba variants: the official ImageNet and Kinetics-400 sizes and the clip testbed.

Sizes from ``videomamba/{image_sm,video_sm}/models/videomamba.py`` (OpenGVLab/VideoMamba): patch 16,
d_state 16, expand 2, dt_rank ceil(D / 16); tiny 192 / depth 24, small 384 / 24, middle 576 / 32,
base 768 / 24. Kinetics-400 models exist for tiny, small and middle, trained at 8, 16, 32 and 64
frames (``videomamba_{t,s,m}16_k400_f{8,16,32,64}_res224.pth``): the variants default to 8 frames,
``num_frames=16`` (any count) builds the others, and a checkpoint of another frame count loads with
its temporal position embedding interpolated.
"""

from __future__ import annotations

from mambatr.models.registry import register_model
from mambatr.models.videomamba import VideoMamba, VideoMambaConfig, VideoMambaImage
from mambatr.models.vim import VimConfig
from mambatr.models.vim_variants import WEIGHTS_DIR

# size: (embed_dim, depth, ImageNet-1k checkpoint file)
OFFICIAL_SIZES = {
    "tiny": (192, 24, "videomamba_t16_in1k_res224.pth"),
    "small": (384, 24, "videomamba_s16_in1k_res224.pth"),
    "middle": (576, 32, "videomamba_m16_in1k_res224.pth"),
    "base": (768, 24, "videomamba_b16_in1k_res224.pth"),
}
K400_SIZES = ("tiny", "small", "middle")
K400_CLASSES = 400
K400_FRAMES = 8


def _image(embed_dim: int, depth: int):
    def build(**overrides) -> VideoMambaImage:
        config = VimConfig(embed_dim=embed_dim, depth=depth, cls_position="first", divide_output=False)
        return VideoMambaImage(config.with_overrides(**overrides))

    return build


def _video(embed_dim: int, depth: int):
    def build(**overrides) -> VideoMamba:
        config = VideoMambaConfig(
            embed_dim=embed_dim, depth=depth, num_classes=K400_CLASSES, num_frames=K400_FRAMES
        )
        return VideoMamba(config.with_overrides(**overrides))

    return build


for _size, (_dim, _depth, _file) in OFFICIAL_SIZES.items():
    _tag = _size[0].upper() if _size != "tiny" else "Ti"
    register_model(
        f"videomamba_{_size}",
        f"VideoMamba-{_tag} ImageNet (OpenGVLab/VideoMamba {_file}), 224, patch 16, class token first, "
        f"no div2, D={_dim}, depth {_depth}",
    )(_image(_dim, _depth))
for _size in K400_SIZES:
    _dim, _depth, _ = OFFICIAL_SIZES[_size]
    _tag = _size[0].upper() if _size != "tiny" else "Ti"
    register_model(
        f"videomamba_{_size}_k400",
        f"VideoMamba-{_tag} Kinetics-400 (videomamba_{_size[0]}16_k400_f8_res224.pth), {K400_FRAMES} frames "
        f"x 224, 1 + {K400_FRAMES}x196 tokens, D={_dim}, depth {_depth}; num_frames=16/32/64 for the others",
        dataset="kinetics",
    )(_video(_dim, _depth))

FMNIST_CLIPS_CONFIG = VideoMambaConfig(
    img_size=28,
    patch_size=4,
    stride=4,
    in_chans=1,
    num_classes=20,
    embed_dim=64,
    depth=8,
    num_frames=4,
)


@register_model(
    "videomamba_fmnist_clips",
    "Fashion-MNIST clips testbed: VideoMamba, 4 frames of 28x28, patch 4 (1 + 4x49 = 197 tokens, "
    "class token first), D=64, depth 8, 20 classes (item x direction)",
    weights=WEIGHTS_DIR / "videomamba_fmnist_clips.safetensors",
    dataset="fmnist_clips",
)
def videomamba_fmnist_clips(**overrides) -> VideoMamba:
    return VideoMamba(FMNIST_CLIPS_CONFIG.with_overrides(**overrides))
