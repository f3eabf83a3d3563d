"""VideoMamba: official numerics (video and image), official checkpoint layouts, frame/size adaptation and
FLOPs (every reduction method on the video token sequence: tests/test_contract.py). Tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official_videomamba import (
    distill_head_shapes,
    official_image_forward,
    official_key_shapes,
    official_video_forward,
)

import mambatr
from mambatr.models import CheckpointError, create_model, load_checkpoint
from mambatr.models.checkpoint import load_into
from mambatr.models.registry import model_entry
from mambatr.models.videomamba import VideoMamba, VideoMambaConfig, VideoMambaImage

TINY = dict(img_size=16, patch_size=4, stride=4, in_chans=3, embed_dim=16, depth=3, d_state=4, num_classes=5)
FRAMES = 3
TOKENS = 1 + FRAMES * 16  # class token + 3 frames of a 4x4 grid


def perturbed(model):
    """Move every parameter away from its init so that each one matters, then eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny_video(**overrides) -> VideoMamba:
    torch.manual_seed(0)
    return perturbed(create_model("videomamba_tiny_k400", **{**TINY, "num_frames": FRAMES, **overrides}))


def tiny_image(**overrides) -> VideoMambaImage:
    torch.manual_seed(0)
    return perturbed(create_model("videomamba_tiny", **{**TINY, **overrides}))


def videos(batch=2, frames=FRAMES, size=16, dtype=torch.float32):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def official_pos_interpolation(pos_embed, new_size):
    """``image_sm/main.py`` / ``video_sm/run_class_finetuning.py``: one extra (class) token first,
    the grid resampled bicubically with align_corners=False and no antialiasing."""
    extra, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    size, dim = int(tokens.shape[1] ** 0.5), tokens.shape[-1]
    tokens = tokens.reshape(-1, size, size, dim).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    return torch.cat((extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


def random_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shape) * 0.1 for k, shape in shapes.items()}


# ---------------------------------------------------------------- numerics against the official math


def test_video_matches_official_math_float64():
    model = tiny_video().double()
    x = videos(dtype=torch.float64)
    torch.testing.assert_close(
        model(x), official_video_forward(model.state_dict(), x), rtol=1e-10, atol=1e-12
    )


def test_video_matches_official_math_float32():
    model = tiny_video()
    x = videos(batch=3)
    torch.testing.assert_close(model(x), official_video_forward(model.state_dict(), x), rtol=1e-5, atol=1e-5)


def test_video_reference_and_fast_scan_agree():
    model = tiny_video()
    x = videos()
    model.scan_impl = "reference"
    reference = model(x)
    model.scan_impl = "auto"
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)


def test_image_model_matches_official_math():
    model = tiny_image().double()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    official = official_image_forward(model.state_dict(), images, stride=4)
    torch.testing.assert_close(model(images), official, rtol=1e-10, atol=1e-12)
    model = model.float()
    torch.testing.assert_close(
        model(images.float()),
        official_image_forward(model.state_dict(), images.float(), 4),
        rtol=1e-5,
        atol=1e-5,
    )
    assert model.config.cls_index == 0 and not model.config.divide_output


def test_token_layout_cls_then_frames_in_raster_order():
    model = tiny_video()
    x = videos(batch=1)
    tokens = model.embed(x)
    assert tokens.shape == (1, TOKENS, 16)
    conv = model.patch_embed.proj
    frame_conv = F.conv2d
    for t in range(FRAMES):
        patches = frame_conv(x[:, :, t], conv.weight[:, :, 0], conv.bias, stride=4).flatten(2).transpose(1, 2)
        expected = patches + model.pos_embed[:, 1:] + model.temporal_pos_embedding[:, t]
        torch.testing.assert_close(tokens[:, 1 + 16 * t : 1 + 16 * (t + 1)], expected)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + model.pos_embed[:, :1])[:, 0])


def test_frame_order_matters():
    """The scan crosses frames: swapping two frames changes the logits (no per-frame pooling)."""
    model = tiny_video()
    x = videos()
    assert not torch.allclose(model(x), model(x[:, :, [1, 0, 2]]))


# ---------------------------------------------------------------- registry, configs and errors


def test_registry_variants():
    expected = {
        "videomamba_tiny": (192, 24),
        "videomamba_small": (384, 24),
        "videomamba_middle": (576, 32),
        "videomamba_base": (768, 24),
    }
    for name, (dim, depth) in expected.items():
        entry = model_entry(name)
        assert entry.dataset == "imagenet"
        with torch.device("meta"):
            model = entry.builder()
        assert isinstance(model, VideoMambaImage)
        assert (model.config.embed_dim, model.config.depth, model.config.seq_len) == (dim, depth, 197)
        assert model.config.rank == -(-dim // 16)
    for size in ("tiny", "small", "middle"):
        entry = model_entry(f"videomamba_{size}_k400")
        assert entry.dataset == "kinetics"
        with torch.device("meta"):
            model = entry.builder()
            longer = entry.builder(num_frames=16)
        config = model.config
        assert (config.num_frames, config.num_classes, config.seq_len) == (8, 400, 1 + 8 * 196)
        assert longer.temporal_pos_embedding.shape[1] == 16 and longer.config.seq_len == 1 + 16 * 196
    entry = model_entry("videomamba_fmnist_clips")
    assert entry.dataset == "fmnist_clips" and entry.weights.name == "videomamba_fmnist_clips.safetensors"
    config = entry.builder().config
    assert (config.num_frames, config.in_chans, config.img_size, config.num_classes) == (4, 1, 28, 20)
    assert config.seq_len == 1 + 4 * 49 and config.input_shape(2) == (2, 1, 4, 28, 28)


def test_official_parameter_counts():
    """MODEL_ZOO.md lists 7M / 26M / 74M / 98M parameters for the ImageNet Ti / S / M / B models."""
    counts = {}
    for size in ("tiny", "small", "middle", "base"):
        with torch.device("meta"):
            counts[size] = sum(p.numel() for p in create_model(f"videomamba_{size}").parameters())
    assert counts["tiny"] == 7_148_008  # the Vim-T layout exactly
    assert [round(c / 1e6) for c in counts.values()] == [7, 26, 74, 98]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tubelet_size": 2}, "tubelet_size"),
        ({"stride": 2}, "stride = patch_size"),
        ({"cls_position": "middle"}, "class token first"),
        ({"num_frames": 0}, "num_frames"),
    ],
)
def test_bad_video_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        VideoMambaConfig(**{**TINY, **overrides})


def test_image_model_rejects_vim_layout():
    with pytest.raises(ValueError, match="class token first"):
        VideoMambaImage(mambatr.VimConfig(**TINY))


def test_wrong_input_shapes():
    model = tiny_video()
    with pytest.raises(ValueError, match="expected 3 frames, got 2"):
        model(videos(frames=2))
    with pytest.raises(ValueError, match="expected 16x16 frames"):
        model(videos(size=20))
    with pytest.raises(ValueError, match=r"expected videos \(B, 3, T, H, W\)"):
        model(torch.randn(2, 3, 16, 16))


# ---------------------------------------------------------------- official checkpoint layouts


@pytest.mark.parametrize("size, dim, depth", [("tiny", 192, 24), ("small", 384, 24), ("middle", 576, 32)])
def test_k400_layout_matches_official_and_loads_strictly(size, dim, depth):
    with torch.device("meta"):
        model = create_model(f"videomamba_{size}_k400")
        official = official_key_shapes(dim, depth, num_classes=400, num_frames=8)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
        state_dict = {k: torch.empty(s) for k, s in {**official, **distill_head_shapes(dim)}.items()}
        load_into(model, model.adapt_state_dict(state_dict))  # distill_head.* dropped, rest strict
        longer = create_model(f"videomamba_{size}_k400", num_frames=16)  # f8 checkpoint into 16 frames
        load_into(longer, longer.adapt_state_dict(state_dict))


@pytest.mark.parametrize(
    "size, dim, depth", [("tiny", 192, 24), ("small", 384, 24), ("middle", 576, 32), ("base", 768, 24)]
)
def test_image_layout_matches_official_and_loads_strictly(size, dim, depth):
    with torch.device("meta"):
        model = create_model(f"videomamba_{size}")
        official = official_key_shapes(dim, depth, num_classes=1000)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
        state_dict = {k: torch.empty(s) for k, s in {**official, **distill_head_shapes(dim)}.items()}
        load_into(model, model.adapt_state_dict(state_dict))


def test_tiny_checkpoint_files_load(tmp_path):
    """Image: a training checkpoint {'model': sd} (+ distill_head); Kinetics: a flat state dict."""
    image = tiny_image()
    official = official_key_shapes(16, 3, 5, img_size=16, patch=4, d_state=4)
    assert {k: tuple(v.shape) for k, v in image.state_dict().items()} == official
    torch.save(
        {"model": {**image.state_dict(), **random_state_dict(distill_head_shapes(16))}, "epoch": 299},
        tmp_path / "image.pth",
    )
    loaded = create_model("videomamba_tiny", checkpoint=tmp_path / "image.pth", **TINY).eval()
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(images), image(images))

    video = tiny_video()
    assert {k: tuple(v.shape) for k, v in video.state_dict().items()} == official_key_shapes(
        16, 3, 5, num_frames=FRAMES, img_size=16, patch=4, d_state=4
    )
    torch.save(video.state_dict(), tmp_path / "k400.pth")
    loaded = create_model("videomamba_tiny_k400", checkpoint=tmp_path / "k400.pth", **TINY, num_frames=FRAMES)
    assert torch.equal(loaded.eval()(videos()), video(videos()))  # equal T: nothing resampled


def test_wrong_keys_are_named(tmp_path):
    model = tiny_video()
    renamed = dict(model.state_dict())
    renamed["layers.1.mixer.Db"] = renamed.pop("layers.1.mixer.D_b")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"layers\.1\.mixer\.D_b.*layers\.1\.mixer\.Db"):
        load_checkpoint(tiny_video(), tmp_path / "renamed.pth")
    extra = {**model.state_dict(), "head_dist.weight": torch.zeros(5, 16)}  # only distill_head.* is dropped
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys.*head_dist\.weight"):
        load_checkpoint(tiny_video(), tmp_path / "extra.pth")


# ---------------------------------------------------------------- frame counts, sizes, inflation


@pytest.mark.parametrize("frames", [6, 2])
def test_temporal_pos_embedding_interpolated_for_other_frame_counts(tmp_path, frames):
    model = tiny_video()
    torch.save(model.state_dict(), tmp_path / "k400.pth")
    other = create_model("videomamba_tiny_k400", checkpoint=tmp_path / "k400.pth", **TINY, num_frames=frames)
    # the official call (video_sm/run_class_finetuning.py): permute, linear, align_corners=False
    expected = F.interpolate(
        model.temporal_pos_embedding.permute(0, 2, 1), size=(frames,), mode="linear", align_corners=False
    ).permute(0, 2, 1)
    torch.testing.assert_close(other.temporal_pos_embedding, expected)
    assert torch.equal(other.pos_embed, model.pos_embed)
    assert other.eval()(videos(frames=frames)).shape == (2, 5)


def test_temporal_interpolation_of_a_ramp():
    """A linear ramp over 2 frames stays linear on the sample centres (align_corners=False)."""
    from mambatr.models.videomamba import interpolate_temporal_pos_embed

    ramp = torch.tensor([0.0, 1.0]).reshape(1, 2, 1)
    torch.testing.assert_close(
        interpolate_temporal_pos_embed(ramp, 4)[0, :, 0], torch.tensor([0.0, 0.25, 0.75, 1.0])
    )
    assert interpolate_temporal_pos_embed(ramp, 2) is ramp


def test_spatial_pos_embed_resampled_with_class_row_first(tmp_path):
    model = tiny_video()
    torch.save(model.state_dict(), tmp_path / "k400.pth")
    bigger = create_model(
        "videomamba_tiny_k400",
        checkpoint=tmp_path / "k400.pth",
        **{**TINY, "img_size": 24},
        num_frames=FRAMES,
    )
    assert bigger.pos_embed.shape == (1, 1 + 36, 16)
    torch.testing.assert_close(bigger.pos_embed, official_pos_interpolation(model.pos_embed, 6))
    assert torch.equal(bigger.pos_embed[:, 0], model.pos_embed[:, 0])
    assert torch.equal(bigger.temporal_pos_embedding, model.temporal_pos_embedding)
    assert bigger.eval()(videos(size=24)).shape == (2, 5)


def test_image_pos_embed_resampled_the_official_way(tmp_path):
    image = tiny_image()
    torch.save({"model": image.state_dict()}, tmp_path / "image.pth")
    small = create_model("videomamba_tiny", checkpoint=tmp_path / "image.pth", **{**TINY, "img_size": 12})
    torch.testing.assert_close(small.pos_embed, official_pos_interpolation(image.pos_embed, 3))


def test_image_checkpoint_inflates_into_a_video_model(tmp_path):
    """The official Kinetics init: Conv2d -> Conv3d (kernel 1 in time), temporal embedding zero.
    With one frame the video model is then exactly the image model."""
    image = tiny_image()
    torch.save({"model": image.state_dict()}, tmp_path / "image.pth")
    one = create_model("videomamba_tiny_k400", checkpoint=tmp_path / "image.pth", **TINY, num_frames=1).eval()
    assert torch.equal(one.patch_embed.proj.weight[:, :, 0], image.patch_embed.proj.weight)
    assert not one.temporal_pos_embedding.any()
    frame = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(one(frame[:, :, None]), image(frame), rtol=1e-5, atol=1e-6)
    four = create_model("videomamba_tiny_k400", checkpoint=tmp_path / "image.pth", **TINY, num_frames=4)
    assert four.temporal_pos_embedding.shape == (1, 4, 16)
    with pytest.raises(CheckpointError, match="head.weight"):  # an ImageNet head into a 400-class model
        create_model(
            "videomamba_tiny_k400", checkpoint=tmp_path / "image.pth", **{**TINY, "num_classes": 400}
        )


# ---------------------------------------------------------------- FLOPs


def test_flops_count_the_whole_clip():
    model = tiny_video()
    report = mambatr.count_flops(model.config)
    assert [layer.tokens for layer in report.layers] == [TOKENS] * 3
    conv = model.patch_embed.proj  # Conv3d MACs: output elements x kernel volume
    conv_macs = 16 * FRAMES * 4 * 4 * conv.weight[0].numel()
    assert report.embed["patch_embed"] == conv_macs
    with torch.device("meta"):
        k400 = create_model("videomamba_tiny_k400")
    dense = mambatr.count_flops(k400.config)
    assert dense.embed["patch_embed"] == 8 * 196 * 192 * 3 * 16 * 16
    assert dense.layers[0].tokens == 1 + 8 * 196
