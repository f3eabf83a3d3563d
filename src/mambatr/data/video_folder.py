"""Kinetics-style video evaluation from extracted frames, following OpenGVLab/VideoMamba's K400 test.

Source: OpenGVLab/VideoMamba ``videomamba/video_sm`` (commit f3427e42), the ``Kinetics_sparse`` path that
every ``exp/k400/*/run_f*x224.sh`` script uses (``--split ',' --input_size 224 --short_side_size 224
--num_frames 8|16|32|64 --test_num_segment 4 --test_num_crop 3``; 384 for the ``to384`` runs):

* ``datasets/build.py`` reads ``<data_path>/test.csv`` (``val.csv`` for the in-training validation);
  ``datasets/kinetics_sparse.py`` parses it with ``pandas.read_csv(header=None, delimiter=split)``:
  column 0 the video path (joined to ``--prefix``), column 1 the integer label.
* Frames (``_get_seq_frames``, test/validation branch): with ``n`` decoded frames and ``T = num_frames``,
  ``seg = (n - 1) / T`` and ``duration = seg / (num_clips + 1)``; frame ``i`` of temporal clip ``c`` is
  ``min(round(seg * i) + int(duration * (c + 1)), n - 1)`` (numpy round: half to even).
* Space (test mode): frames are resized so the short side is ``short_side_size`` (``functional.resize_clip``:
  long side ``int(size * long / short)``, ``cv2.resize(..., INTER_LINEAR)`` on uint8, skipped when the
  short side already matches), then a ``short_side_size`` square is cut along the long side at
  ``int(k * (long - short) / (num_crops - 1))`` for crop ``k`` (left/top, center, right/bottom for 3), or
  at ``int((long - short) / 2)`` for one crop.
* ``ClipToTensor`` (/255, layout ``(C, T, H, W)``) then ``Normalize`` with the ImageNet mean / std.
* ``engines/engine_for_finetuning.py`` ``merge``: softmax of each view's logits, mean over a video's
  ``num_clips * num_crops`` views, argmax (``average_views`` here). The K400 top-1 numbers in MODEL_ZOO.md
  ("8x3x4" etc.) are 4 clips x 3 crops.

Reproduced here: the annotation layout, the frame-index formula (any ``num_clips``), the short-side
resize sizes, the crop positions (any ``num_crops``), /255 + ImageNet normalisation, the view order
(clip-major, crop-minor) and the softmax-mean merge. Not reproduced:

* decoding. The official code decodes ``.mp4`` with decord; here each annotation path names a folder of
  frame images (``video.mp4`` may stand for the folder ``video/``). Frame ``i`` is the ``i``-th image in
  name order, so it is decord's frame ``i`` only when every frame was extracted (no fps change), and
  JPEG re-encoding changes pixel values slightly.
* bilinear resize is torch's (half-pixel centres, no antialias, rounded back to uint8), the same formula
  as OpenCV's ``INTER_LINEAR``, whose fixed-point arithmetic can differ by one grey level.
* the official loader replaces an unreadable video by a random other one with a warning; this one raises.
* the validation mode (``val.csv``, one view) crops with ``CenterCrop`` (``int(round(...))`` offsets);
  the test-mode offset used here (``int(...)``) can sit one pixel lower/left when ``long - short`` is odd.
* ``short_side_size > img_size`` (never used for K400) is generalised: an ``img_size`` square is cut
  along the long side as above and centred on the short side (the official test mode would return a
  ``short_side_size`` square).

Each item is one view ``(clip (3, T, img_size, img_size) float32, label)``; a DataLoader batch is
``(B, 3, T, H, W)``, the layout VideoMamba's video model takes (its ``PatchEmbed`` is a ``Conv3d``
over ``(B, C, T, H, W)``; ``models/videomamba.py`` ``forward_features``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mambatr.data.errors import DatasetError, DatasetNotFoundError, UnreadableImageError
from mambatr.data.imagefolder import IMG_EXTENSIONS, load_rgb
from mambatr.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv")


def sample_frame_indices(
    num_video_frames: int, num_frames: int, clip_index: int = 0, num_clips: int = 1
) -> list[int]:
    """Frame indices of temporal clip ``clip_index`` of ``num_clips`` (VideoMamba's test sampling).

    ``kinetics_sparse.py`` ``_get_seq_frames`` with ``clip_idx >= 0``: the video is cut into
    ``num_frames`` equal segments of ``seg = (n - 1) / num_frames`` frames; clip ``c`` takes the frame
    ``int(seg / (num_clips + 1) * (c + 1))`` past each segment's (rounded) start, capped at ``n - 1``.
    One clip takes each segment's middle frame.
    """
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if num_frames < 1 or num_clips < 1 or not 0 <= clip_index < num_clips:
        raise ValueError(
            "need num_frames, num_clips >= 1 and 0 <= clip_index < num_clips, got "
            f"{num_frames}, {num_clips}, {clip_index}"
        )
    seg_size = max(0.0, float(num_video_frames - 1) / num_frames)
    duration = seg_size / (num_clips + 1)
    offset = int(duration * (clip_index + 1))
    # round() on a float rounds half to even, like the official np.round
    return [min(round(seg_size * i) + offset, num_video_frames - 1) for i in range(num_frames)]


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after the official short-side resize (``functional.get_resize_sizes``)."""
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def crop_box(height: int, width: int, size: int, crop_index: int = 0, num_crops: int = 1) -> tuple[int, int]:
    """(top, left) of crop ``crop_index`` of ``num_crops`` (``size`` square) in a resized frame.

    The official test-mode positions along the long side (rows when ``height >= width``):
    ``int((long - size) / 2)`` for one crop, ``int(k * (long - size) / (num_crops - 1))`` otherwise;
    centred (``int((short - size) / 2)``) on the short side, a no-op when the short side is ``size``.
    """
    if min(height, width) < size:
        raise ValueError(f"cannot cut a {size}x{size} crop from a {height}x{width} frame")
    if num_crops < 1 or not 0 <= crop_index < num_crops:
        raise ValueError(f"need 0 <= crop_index < num_crops, got {crop_index}, {num_crops}")
    long, short = max(height, width), min(height, width)
    if num_crops == 1:
        along = int((long - size) / 2)
    else:
        along = int(crop_index * ((long - size) / (num_crops - 1)))
    across = int((short - size) / 2)
    return (along, across) if height >= width else (across, along)


def average_views(logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """Video-level class probabilities (N, C) from per-view logits (N * num_views, C), video-major.

    VideoMamba's ``merge``: softmax per view, then the mean over each video's views. Rows must come in
    ``VideoFrameFolder`` order (the views of video 0, then of video 1, ...).
    """
    if logits.dim() != 2 or num_views < 1 or logits.shape[0] % num_views:
        raise ValueError(f"expected logits (N * {num_views}, C), got {tuple(logits.shape)}")
    probs = logits.float().softmax(-1)
    return probs.view(-1, num_views, probs.shape[-1]).mean(1)


def parse_annotation(path: str | Path, delimiter: str | None = None) -> list[tuple[str, int, int]]:
    """``(relative path, label, line number)`` rows of an annotation file ``<path><delimiter><label>``.

    ``delimiter=None`` picks ``,`` when the first non-blank line holds one (the official K400 files) and
    whitespace otherwise (the official default ``--split ' '``). Blank lines are skipped, like pandas.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"annotation file {path} is a folder: pass the CSV or text file")
    if not path.is_file():
        raise DatasetNotFoundError(f"annotation file {path} does not exist")
    rows: list[tuple[str, int, int]] = []
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    if delimiter is None:
        first = next((line for line in lines if line.strip()), "")
        delimiter = "," if "," in first else " "
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in (line.split() if delimiter == " " else line.split(delimiter))]
        shown = "whitespace" if delimiter == " " else repr(delimiter)
        if len(fields) != 2 or not fields[0]:
            raise DatasetError(
                f"{path}:{number}: expected '<path>{delimiter}<label>' ({shown} separated), got {line!r}"
            )
        if not re.fullmatch(r"\+?\d+", fields[1]):
            raise DatasetError(
                f"{path}:{number}: label {fields[1]!r} is not a non-negative integer: {line!r}"
            )
        rows.append((fields[0], int(fields[1]), number))
    if not rows:
        raise DatasetError(f"annotation file {path} lists no videos")
    return rows


class VideoFrameFolder(torch.utils.data.Dataset):
    """VideoMamba's Kinetics test views from folders of extracted frames (see the module docstring).

    ``annotation_file`` lists ``<path> <label>`` (or ``<path>,<label>``) per line, paths relative to
    ``root``; each path is a folder of frame images (``IMG_EXTENSIONS``, ordered by name with digit runs
    compared as numbers, so ``img_00010.jpg`` and ``10.jpg`` both sort after ``9``). A path ending in a
    video extension (``abseiling/x.mp4``) falls back to the folder without it (``abseiling/x/``), so the
    official ``test.csv`` works unchanged.

    The dataset has ``len(videos) * num_clips * num_crops`` items, video-major: item ``i`` is view
    ``i % num_views`` of video ``i // num_views``, and view ``v`` is temporal clip ``v // num_crops``,
    crop ``v % num_crops`` (the official order within a video). An item is ``(clip, label)``: float32
    ``(3, num_frames, img_size, img_size)``, ImageNet-normalised. Defaults give one centre view per
    video; the official K400 test is ``num_clips=4, num_crops=3`` with ``average_views`` over the logits.

    Missing folders raise ``DatasetNotFoundError`` when the dataset is built (``skip_missing=True`` drops
    them instead and lists them in ``missing``); an empty or unreadable folder raises ``DatasetError``
    when it is loaded. Errors name the annotation line.
    """

    def __init__(
        self,
        root: str | Path,
        annotation_file: str | Path,
        num_frames: int = 8,
        img_size: int = 224,
        short_side_size: int | None = None,
        num_clips: int = 1,
        num_crops: int = 1,
        delimiter: str | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        skip_missing: bool = False,
    ) -> None:
        self.short_side_size = img_size if short_side_size is None else short_side_size
        if min(num_frames, img_size, num_clips, num_crops) < 1:
            raise ValueError(
                f"num_frames, img_size, num_clips and num_crops must be >= 1, got "
                f"{num_frames}, {img_size}, {num_clips}, {num_crops}"
            )
        if self.short_side_size < img_size:
            raise ValueError(f"short_side_size {self.short_side_size} is smaller than img_size {img_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        self.root = Path(root)
        if self.root.is_file():
            raise DatasetError(f"video frame root {self.root} is a file: pass the folder of frame folders")
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"video frame root {self.root} does not exist")
        self.annotation_file = Path(annotation_file)
        self.num_frames, self.img_size = num_frames, img_size
        self.num_clips, self.num_crops = num_clips, num_crops
        self.extensions = tuple(ext.lower() for ext in extensions)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
        self.samples: list[tuple[Path, int]] = []
        self.lines: list[int] = []
        unknown: list[str] = []
        for relative, label, number in parse_annotation(self.annotation_file, delimiter):
            if num_classes is not None and label >= num_classes:
                raise DatasetError(
                    f"{self.annotation_file}:{number}: label {label} is not a class index "
                    f"0..{num_classes - 1}"
                )
            folder = self._folder(relative)
            if folder is None:
                unknown.append(f"{relative} (line {number})")
                continue
            self.samples.append((folder, label))
            self.lines.append(number)
        if unknown and not skip_missing:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise DatasetNotFoundError(
                f"{self.annotation_file}: {len(unknown)} frame folder(s) not found under {self.root}: {shown}"
            )
        self.missing = unknown  # "path (line N)" of the folders skip_missing dropped
        if not self.samples:
            raise DatasetError(f"{self.annotation_file}: none of its frame folders exist under {self.root}")
        self.targets = [label for _, label in self.samples]

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.samples) * self.num_views

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} views")
        video, view = divmod(index % len(self), self.num_views)
        clip, crop = divmod(view, self.num_crops)
        return self._crop(self._load_clip(video, clip), crop), self.samples[video][1]

    def video_views(self, video: int) -> tuple[torch.Tensor, int]:
        """All views of one video, ``(num_views, 3, T, H, W)``, each clip's frames read once."""
        views = []
        for clip in range(self.num_clips):
            frames = self._load_clip(video, clip)
            views.extend(self._crop(frames, crop) for crop in range(self.num_crops))
        return torch.stack(views), self.samples[video][1]

    def frame_files(self, video: int) -> list[str]:
        """The frame images of a video, in frame order; ``DatasetError`` if there are none."""
        folder = self.samples[video][0]
        files = sorted(
            (entry.name for entry in os.scandir(folder) if entry.name.lower().endswith(self.extensions)),
            key=_natural_key,
        )
        if not files:
            raise DatasetError(
                f"{self.annotation_file}:{self.lines[video]}: frame folder {folder} holds no images "
                f"({', '.join(self.extensions)})"
            )
        return [os.path.join(folder, name) for name in files]

    def frame_indices(self, video: int, clip: int = 0) -> list[int]:
        """Indices (into ``frame_files(video)``) of the frames temporal clip ``clip`` uses."""
        count = len(self.frame_files(video))
        return sample_frame_indices(count, self.num_frames, clip, self.num_clips)

    def _folder(self, relative: str) -> Path | None:
        folder = self.root / relative
        if folder.is_dir():
            return folder
        if folder.suffix.lower() in VIDEO_EXTENSIONS and folder.with_suffix("").is_dir():
            return folder.with_suffix("")
        return None

    def _load_clip(self, video: int, clip: int) -> torch.Tensor:
        """uint8 (T, 3, h, w): the clip's frames, short side resized to ``short_side_size``."""
        files = self.frame_files(video)
        indices = sample_frame_indices(len(files), self.num_frames, clip, self.num_clips)
        frames, size = [], None
        for index in indices:
            try:
                image = load_rgb(files[index])
            except UnreadableImageError as error:  # it names the frame; this names the video too
                raise UnreadableImageError(f"{self.annotation_file}:{self.lines[video]}: {error}") from error
            if size is not None and image.size != size:
                raise DatasetError(
                    f"{self.annotation_file}:{self.lines[video]}: {files[index]} is {image.size[0]}x"
                    f"{image.size[1]} but earlier frames are {size[0]}x{size[1]}"
                )
            size = image.size
            frames.append(resize_frame(image, self.short_side_size))
        return torch.stack(frames)

    def _crop(self, frames: torch.Tensor, crop: int) -> torch.Tensor:
        """uint8 (T, 3, h, w) -> normalised float32 (3, T, img_size, img_size)."""
        top, left = crop_box(frames.shape[2], frames.shape[3], self.img_size, crop, self.num_crops)
        window = frames[:, :, top : top + self.img_size, left : left + self.img_size]
        clip = window.permute(1, 0, 2, 3).float().div(255)
        return clip.sub(self.mean).div(self.std)


def resize_frame(image: Image.Image, short_side: int) -> torch.Tensor:
    """RGB PIL frame -> uint8 (3, h, w) with short side ``short_side``, like the official
    ``cv2.resize(INTER_LINEAR)``: bilinear, half-pixel centres, no antialias, rounded to uint8.
    """
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    frame = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
    height, width = frame.shape[1:]
    if min(height, width) == short_side:  # the official resize_clip returns the clip untouched
        return frame
    size = resized_size(height, width, short_side)
    scaled = F.interpolate(
        frame[None].float(), size=size, mode="bilinear", align_corners=False, antialias=False
    )
    return scaled[0].round().clamp(0, 255).to(torch.uint8)


def _natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: frame_2 < frame_10; zero-padded names sort as usual."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]
