"""Video data: VideoMamba-style frame-folder evaluation views and the Fashion-MNIST clip generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_fashion_mnist
from PIL import Image

from mambatr.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    DatasetError,
    DatasetNotFoundError,
    load_fashion_mnist,
    train_val_indices,
)
from mambatr.data.fmnist_clips import (
    CLIP_CLASSES,
    ORBIT_CLIP_CLASSES,
    TEST_KEY_OFFSET,
    clip_hash,
    clips_to_model_input,
    frame_offsets,
    iterate_clip_batches,
    load_fmnist_clips,
    make_clips,
    orbit_offsets,
)
from mambatr.data.video_folder import (
    VideoFrameFolder,
    average_views,
    crop_box,
    parse_annotation,
    resize_frame,
    resized_size,
    sample_frame_indices,
)

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1)


# ---------------------------------------------------------------- frame folders


def write_video(folder: Path, frames: int, width: int, height: int, ext: str = "png", name="img_{:05d}"):
    """Frame i is constant red 8 * i (i < 32); green holds the column index * 9 and blue the row index * 9."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = np.broadcast_to(np.arange(width) * 9 % 256, (height, width))
    rows = np.broadcast_to((np.arange(height) * 9 % 256)[:, None], (height, width))
    for i in range(frames):
        pixels = np.stack([np.full((height, width), 8 * i), cols, rows], -1).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name.format(i)}.{ext}")
    return folder


def pixels(clip: torch.Tensor) -> torch.Tensor:
    """Normalised (3, T, H, W) back to the 0..255 values."""
    return (clip * STD + MEAN).mul(255).round()


def official_seq_frames(video_size: int, num_frames: int, clip_idx: int, num_segment: int) -> list[int]:
    """kinetics_sparse.py ``_get_seq_frames`` (clip_idx >= 0 branch), verbatim but for ``self``."""
    seg_size = max(0.0, float(video_size - 1) / num_frames)
    max_frame = int(video_size) - 1
    seq = []
    duration = seg_size / (num_segment + 1)
    for i in range(num_frames):
        start = int(np.round(seg_size * i))
        frame_index = start + int(duration * (clip_idx + 1))
        seq.append(min(frame_index, max_frame))
    return seq


@pytest.fixture
def videos(tmp_path):
    """Two videos in the official K400 layout: ``test.csv`` with ``<path>.mp4,<label>`` lines."""
    root = tmp_path / "k400"
    write_video(root / "abseiling" / "vid_a", 30, width=26, height=16)  # landscape, short side 16
    write_video(root / "zumba" / "vid_b", 9, width=16, height=26)  # portrait
    (tmp_path / "test.csv").write_text("abseiling/vid_a.mp4,0\nzumba/vid_b.mp4,399\n")
    return root, tmp_path / "test.csv"


def test_sample_frame_indices_follow_the_official_formula():
    assert sample_frame_indices(30, 8) == [1, 5, 8, 12, 15, 19, 23, 26]  # middle of 8 segments
    assert sample_frame_indices(1, 4) == [0, 0, 0, 0]
    assert sample_frame_indices(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]
    for n in (1, 2, 7, 8, 9, 30, 250, 301):
        for frames in (1, 8, 16, 64):
            for clips in (1, 4, 5):
                for c in range(clips):
                    assert sample_frame_indices(n, frames, c, clips) == official_seq_frames(
                        n, frames, c, clips
                    )
    with pytest.raises(ValueError):
        sample_frame_indices(10, 8, clip_index=4, num_clips=4)


def test_resize_sizes_and_crop_positions():
    assert resized_size(256, 340, 224) == (224, 297)  # cv2.resize gives (297, 224) too
    assert resized_size(720, 1280, 224) == (224, 398) and resized_size(200, 150, 224) == (298, 224)
    assert resized_size(224, 224, 384) == (384, 384)
    assert [crop_box(224, 398, 224, k, 3) for k in range(3)] == [(0, 0), (0, 87), (0, 174)]
    assert crop_box(224, 398, 224) == (0, 87) and crop_box(224, 299, 224) == (0, 37)  # int(), not round()
    assert [crop_box(398, 224, 224, k, 3) for k in range(3)] == [(0, 0), (87, 0), (174, 0)]
    assert crop_box(256, 300, 224) == (16, 38)  # short side > crop: centred across
    with pytest.raises(ValueError):
        crop_box(200, 300, 224)


def test_resize_frame_matches_bilinear_and_skips_when_already_sized():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    same = resize_frame(image, 30)
    assert same.dtype == torch.uint8 and torch.equal(same, torch.from_numpy(np.array(image)).permute(2, 0, 1))
    small = resize_frame(image, 15)  # exactly 2x down: half-pixel bilinear = mean of 2x2 blocks
    assert small.shape == (3, 15, 20)
    blocks = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().view(3, 15, 2, 20, 2).mean((2, 4))
    assert (small.float() - blocks).abs().max() <= 0.5


def test_video_frame_folder_end_to_end(videos):
    root, annotation = videos
    data = VideoFrameFolder(root, annotation, num_frames=4, img_size=16, num_classes=400)
    assert len(data) == 2 and data.targets == [0, 399] and data.num_views == 1
    clip, label = data[0]
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32 and label == 0
    values = pixels(clip)
    expected = sample_frame_indices(30, 4)
    assert expected == [3, 10, 17, 25]
    assert values[0, :, 0, 0].tolist() == [8.0 * i for i in expected]
    assert torch.equal(values[1, 0, 0], torch.arange(5, 21) * 9.0)  # centre crop: columns 5..20
    assert torch.equal(values[2, 0, :, 0], torch.arange(16) * 9.0)
    # normalisation: (x / 255 - mean) / std per channel
    raw = torch.tensor([8.0 * expected[0], 45.0, 0.0]) / 255
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
    assert torch.allclose(clip[:, 0, 0, 0], (raw - mean) / std, atol=1e-6)
    clip, label = data[1]  # portrait 16x26: crop rows int(10 / 2) = 5..20, 9 frames -> [1, 3, 5, 7]
    assert label == 399 and clip.shape == (3, 4, 16, 16)
    values = pixels(clip)
    assert values[0, :, 0, 0].tolist() == [8.0, 24.0, 40.0, 56.0]
    assert torch.equal(values[2, 0, :, 0], torch.arange(5, 21) * 9.0)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    assert batch[0].shape == (2, 3, 4, 16, 16)  # (B, 3, T, H, W): VideoMamba's input layout


def test_multi_clip_multi_crop_views(videos):
    root, annotation = videos
    data = VideoFrameFolder(root, annotation, num_frames=4, img_size=16, num_clips=4, num_crops=3)
    assert len(data) == 2 * 12
    views, label = data.video_views(0)
    assert views.shape == (12, 3, 4, 16, 16) and label == 0
    for view in range(12):
        clip, crop = divmod(view, 3)
        item, _ = data[view]
        assert torch.equal(item, views[view])
        values = pixels(item)
        assert values[0, :, 0, 0].tolist() == [8.0 * i for i in sample_frame_indices(30, 4, clip, 4)]
        assert values[1, 0, 0, 0].item() == 9.0 * [0, 5, 10][crop]  # left, centre, right
    assert data.frame_indices(0, 3) == sample_frame_indices(30, 4, 3, 4)
    item, label = data[12 + 2]  # video 1, clip 0, crop 2: bottom rows 10..25
    assert label == 399 and pixels(item)[2, 0, 0, 0].item() == 90.0
    assert data[-1][1] == 399
    logits = torch.randn(2 * 12, 5)
    probs = average_views(logits, 12)
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.allclose(probs[1], logits[12:].softmax(-1).mean(0))


def test_resize_to_short_side_then_crop(tmp_path):
    root = tmp_path / "root"
    write_video(root / "png", 5, width=40, height=30)  # resized 30x40 -> 12x16, 8x8 crop at (2, 4)
    write_video(root / "jpg", 5, width=40, height=30, ext="jpg")
    (tmp_path / "a.txt").write_text("png 3\njpg 4\n")
    data = VideoFrameFolder(root, tmp_path / "a.txt", num_frames=2, img_size=8, short_side_size=12)
    clip, label = data[0]
    assert clip.shape == (3, 2, 8, 8) and label == 3
    for t, index in enumerate(sample_frame_indices(5, 2)):  # [1, 3]
        frame = resize_frame(Image.open(root / "png" / f"img_{index:05d}.png"), 12)
        assert frame.shape == (3, 12, 16) and crop_box(12, 16, 8) == (2, 4)
        assert torch.equal(pixels(clip)[:, t], frame[:, 2:10, 4:12].float())
    clip, label = data[1]
    assert label == 4 and (pixels(clip)[0, :, 4, 4] - torch.tensor([8.0, 24.0])).abs().max() <= 8  # JPEG


def test_annotation_parsing(tmp_path):
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("a/x.mp4 1\n\n  b/y   22  \n")
    assert parse_annotation(spaced) == [("a/x.mp4", 1, 1), ("b/y", 22, 3)]
    comma = tmp_path / "comma.csv"
    comma.write_text("a/x y.mp4,1\n")
    assert parse_annotation(comma) == [("a/x y.mp4", 1, 1)]
    for text, line, match in [
        ("path,label\na,1\n", 1, "not a non-negative integer"),  # a header is a bad line
        ("a,1\nb,1,2\n", 2, "expected '<path>,<label>'"),
        ("a 1\nb\n", 2, "expected"),
        ("a 1\nb 2\nc -3\n", 3, "not a non-negative integer"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DatasetError, match=rf"bad\.csv:{line}: .*{match}"):
            parse_annotation(bad)
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(DatasetError, match="lists no videos"):
        parse_annotation(tmp_path / "empty.csv")
    with pytest.raises(DatasetNotFoundError):
        parse_annotation(tmp_path / "nope.csv")


def test_frame_folder_errors(tmp_path, videos):
    root, annotation = videos
    lines = tmp_path / "lines.csv"
    lines.write_text("abseiling/vid_a.mp4,0\nmissing/vid.mp4,1\nzumba/vid_b,2\n")
    with pytest.raises(
        DatasetNotFoundError, match=r"1 frame folder\(s\) not found.*missing/vid.mp4 \(line 2\)"
    ):
        VideoFrameFolder(root, lines)
    kept = VideoFrameFolder(root, lines, num_frames=2, img_size=16, skip_missing=True)
    assert len(kept) == 2 and kept.targets == [0, 2] and kept.missing == ["missing/vid.mp4 (line 2)"]
    with pytest.raises(DatasetError, match=r"lines.csv:3: label 2 is not a class index 0\.\.1"):
        VideoFrameFolder(root, lines, num_classes=2, skip_missing=True)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no frames here")
    (tmp_path / "empty.csv").write_text("abseiling/vid_a,0\nempty,1\n")
    data = VideoFrameFolder(root, tmp_path / "empty.csv", num_frames=2, img_size=16)
    with pytest.raises(DatasetError, match=r"empty.csv:2: frame folder .*empty holds no images"):
        data[1]
    bad = write_video(root / "bad", 3, width=16, height=16)
    (bad / "img_00001.png").write_bytes(b"not a png")
    (tmp_path / "bad.csv").write_text("bad 0\n")
    with pytest.raises(DatasetError, match=r"bad.csv:1: .*img_00001.png: cannot read the image"):
        VideoFrameFolder(root, tmp_path / "bad.csv", num_frames=3, img_size=16)[0]
    mixed = write_video(root / "mixed", 2, width=16, height=16)
    write_video(root / "mixed2", 1, width=20, height=16)
    (root / "mixed2" / "img_00000.png").rename(mixed / "img_00009.png")
    (tmp_path / "mixed.csv").write_text("mixed 0\n")
    with pytest.raises(DatasetError, match="20x16 but earlier frames are 16x16"):
        VideoFrameFolder(root, tmp_path / "mixed.csv", num_frames=8, img_size=16)[0]
    with pytest.raises(DatasetNotFoundError):
        VideoFrameFolder(tmp_path / "nowhere", annotation)
    with pytest.raises(ValueError, match="short_side_size"):
        VideoFrameFolder(root, annotation, img_size=16, short_side_size=8)


def test_frames_sort_by_number_in_name(tmp_path):
    write_video(tmp_path / "v", 12, width=16, height=16, name="{}")  # 0.png .. 11.png, unpadded
    (tmp_path / "a.csv").write_text("v,0\n")
    data = VideoFrameFolder(tmp_path, tmp_path / "a.csv", num_frames=12, img_size=16)
    assert [Path(path).stem for path in data.frame_files(0)] == [str(i) for i in range(12)]
    assert pixels(data[0][0])[0, :, 0, 0].tolist() == [8.0 * i for i in sample_frame_indices(12, 12)]


# ---------------------------------------------------------------- Fashion-MNIST clips


def translate(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Reference zero-filled shift: pad, then cut the window."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(image, pad)
    h, w = image.shape
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def keys_with_direction(direction: int, count: int = 1, seed: int = 0) -> list[int]:
    keys = np.arange(1000)
    return keys[(clip_hash(keys, seed) >> np.uint64(63)) == direction][:count].tolist()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    array = np.zeros((6, 28, 28), np.uint8)
    array[:, 4:24, 6:22] = rng.integers(1, 256, (6, 20, 16))  # an "item" with a black border
    return torch.from_numpy(array)


def test_frame_offsets():
    assert frame_offsets(4, 8) == [-4, -1, 1, 4] and frame_offsets(4, 6) == [-3, -1, 1, 3]
    assert frame_offsets(2, 8) == [-4, 4] and frame_offsets(3, 8) == [-4, 0, 4]
    for t, s in [(5, 7), (8, 8), (16, 10)]:
        offsets = frame_offsets(t, s)
        assert offsets == [-x for x in offsets[::-1]] and offsets == sorted(offsets)
    with pytest.raises(ValueError):
        frame_offsets(1, 8)
    assert orbit_offsets(4) == [(0, 4), (3, 3), (4, 0), (3, -3), (0, -4), (-3, -3), (-4, 0), (-3, 3)]


def test_make_clips_shapes_content_and_determinism(images):
    keys = torch.arange(10, 16)
    clips, direction = make_clips(images, keys)
    assert clips.shape == (6, 4, 28, 28) and clips.dtype == torch.uint8 and direction.dtype == torch.int64
    again, direction2 = make_clips(images.clone(), keys.clone())
    assert torch.equal(clips, again) and torch.equal(direction, direction2)
    order = torch.tensor([4, 0, 5, 2])  # subset, shuffled: each clip depends on its own key only
    part, part_direction = make_clips(images[order], keys[order])
    assert torch.equal(part, clips[order]) and torch.equal(part_direction, direction[order])
    offsets = frame_offsets(4, 8)
    for n in range(6):
        sign = 1 if direction[n] == 0 else -1
        for t in range(4):
            assert np.array_equal(clips[n, t].numpy(), translate(images[n].numpy(), 0, sign * offsets[t]))
    many = torch.arange(2000)
    _, d0 = make_clips(torch.zeros(2000, 28, 28, dtype=torch.uint8), many, seed=0)
    _, d1 = make_clips(torch.zeros(2000, 28, 28, dtype=torch.uint8), many, seed=1)
    assert 0.45 < d0.float().mean() < 0.55 and (d0 != d1).float().mean() > 0.4


def test_directions_are_time_reversals(images):
    (ltr,), (rtl,) = keys_with_direction(0), keys_with_direction(1)
    pair = images[:1].expand(2, 28, 28).contiguous()
    clips, direction = make_clips(pair, [ltr, rtl], num_frames=5, shift=8)
    assert direction.tolist() == [0, 1]
    assert torch.equal(clips[0], clips[1].flip(0))  # frame t of one is frame T - 1 - t of the other
    positions = [{frame.numpy().tobytes() for frame in clip} for clip in clips]
    assert positions[0] == positions[1] and len(positions[0]) == 5  # the same single frames
    assert not torch.equal(clips[0, :2], clips[1, :2])  # but two frames in order tell them apart


def test_orbit_frames_are_uniform_over_the_ring_at_every_index():
    dot = torch.zeros(800, 28, 28, dtype=torch.uint8)
    dot[:, 14, 14] = 255
    keys = torch.arange(800)
    clips, direction = make_clips(dot, keys, num_frames=4, shift=8, motion="orbit")
    flat = clips.view(800, 4, -1).argmax(-1)
    dy, dx = flat // 28 - 14, flat % 28 - 14  # (N, T) position of the dot
    ring = orbit_offsets(4)
    phase = torch.from_numpy(((clip_hash(keys.numpy()) >> np.uint64(40)) % np.uint64(8)).astype(np.int64))
    for n in range(800):
        sign = 1 if direction[n] == 0 else -1
        assert [(dy[n, t].item(), dx[n, t].item()) for t in range(4)] == [
            ring[(phase[n] + sign * t) % 8] for t in range(4)
        ]
    for t in range(4):  # every ring position occurs at every frame index in both directions
        for d in (0, 1):
            chosen = direction == d
            seen = set(zip(dy[chosen, t].tolist(), dx[chosen, t].tolist(), strict=True))
            assert seen == set(ring)


def test_vertical_jitter_is_one_offset_per_clip():
    dot = torch.zeros(400, 28, 28, dtype=torch.uint8)
    dot[:, 14, 14] = 255
    clips, direction = make_clips(dot, torch.arange(400), num_frames=3, shift=8, jitter=2)
    rows = clips.view(400, 3, -1).argmax(-1) // 28 - 14
    assert (rows == rows[:, :1]).all() and set(rows[:, 0].tolist()) == {-2, -1, 0, 1, 2}
    cols = clips.view(400, 3, -1).argmax(-1) % 28 - 14
    assert torch.equal(cols[:, 0], torch.where(direction == 0, -4, 4))


def test_make_clips_rejects_bad_input(images):
    with pytest.raises(ValueError, match="uint8"):
        make_clips(images.float(), torch.arange(6))
    with pytest.raises(ValueError, match="keys"):
        make_clips(images, torch.arange(5))
    with pytest.raises(ValueError, match="out of"):
        make_clips(images, torch.arange(6), shift=60)
    with pytest.raises(ValueError, match="motion"):
        make_clips(images, torch.arange(6), motion="zoom")


def test_load_fmnist_clips_labels_and_splits(tmp_path):
    root = write_fashion_mnist(tmp_path / "fmnist", train=5_010, test=30)
    clips, labels = load_fmnist_clips("train", root)  # 10 images; val holds the other 5,000
    images, classes = load_fashion_mnist("train", root)
    assert clips.shape == (10, 4, 28, 28) and labels.dtype == torch.int64
    assert torch.equal(labels // 2, classes) and int(labels.max()) < len(CLIP_CLASSES) == 20
    train, _ = train_val_indices(5_010)
    expected, direction = make_clips(images, train)  # keys: the index in the IDX file
    assert torch.equal(clips, expected) and torch.equal(labels % 2, direction)
    full, full_labels = load_fmnist_clips("train_full", root)
    index = torch.from_numpy(train)
    assert torch.equal(full[index], clips) and torch.equal(full_labels[index], labels)
    val, val_labels = load_fmnist_clips("val", root)
    assert len(val) == 5_000 and torch.equal(val_labels // 2, load_fashion_mnist("val", root)[1])
    test, test_labels = load_fmnist_clips("test", root, num_frames=3, shift=6)
    expected, direction = make_clips(
        load_fashion_mnist("test", root)[0], np.arange(30) + TEST_KEY_OFFSET, 3, 6
    )
    assert (
        test.shape == (30, 3, 28, 28)
        and torch.equal(test, expected)
        and torch.equal(test_labels % 2, direction)
    )
    orbit, orbit_labels = load_fmnist_clips("train", root, motion="orbit")
    assert torch.equal(orbit_labels // 2, classes) and len(ORBIT_CLIP_CLASSES) == 20
    assert CLIP_CLASSES[:2] == ("T-shirt/top, left to right", "T-shirt/top, right to left")
    with pytest.raises(ValueError):
        load_fmnist_clips("dev", root)


def test_iterate_clip_batches(images):
    clips, direction = make_clips(images, torch.arange(6))
    labels = torch.arange(6)
    batches = list(iterate_clip_batches(clips, labels, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 1, 4, 28, 28), (2, 1, 4, 28, 28)]
    expected = (clips.float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert torch.allclose(batches[0][0][:, 0], expected[:4]) and torch.equal(batches[1][1], labels[4:])
    assert torch.equal(clips_to_model_input(clips)[:, 0], expected)
    first = list(iterate_clip_batches(clips, labels, 3, shuffle=True, augment=True, seed=5))
    second = list(iterate_clip_batches(clips, labels, 3, shuffle=True, augment=True, seed=5))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert sorted(torch.cat([b[1] for b in first]).tolist()) == list(range(6))
    moved = 0
    for inputs, index in first:  # one crop window per clip: every frame moved by the same (dy, dx)
        raw = (inputs[:, 0] * FASHION_MNIST_STD + FASHION_MNIST_MEAN).mul(255).round().to(torch.uint8)
        for clip, n in zip(raw, index.tolist(), strict=True):
            shifts = [
                (dy, dx)
                for dy in range(-2, 3)
                for dx in range(-2, 3)
                if all(
                    np.array_equal(clip[t].numpy(), translate(clips[n, t].numpy(), dy, dx)) for t in range(4)
                )
            ]
            assert shifts, "frames were cropped differently (or flipped)"
            moved += shifts != [(0, 0)]
    assert moved > 0
    assert len(list(iterate_clip_batches(clips, labels, 4, drop_last=True))) == 1
