"""What the commands read: each model's evaluation batches (a testbed, an image folder, Kinetics-style
frame folders), calibration images and the image ``viz`` draws, chosen by the typed command-line options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from mambatr import data
from mambatr.cli_args import DataArgs
from mambatr.data.guarded import Guarded, checked_batches, collate
from mambatr.data.tasks import TESTBEDS
from mambatr.distributed import Context, ShardBatchSampler
from mambatr.evaluate import tensor_batches
from mambatr.models import model_entry
from mambatr.outputs import check_writable_file
from mambatr.video_eval import VideoViews, ViewAveraging, parse_views
from mambatr.visualize import figure_formats, importance_path_of

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (inputs, labels)


def eval_batches(
    name: str, inputs: DataArgs, model: torch.nn.Module, context: Context, skipped: list[str] | None = None
) -> tuple[Batches, int]:
    """(batches, count) of this process for the model's dataset: a testbed, Kinetics or an ImageNet folder.

    Under torchrun each rank gets every N-th batch of the single-process run (mambatr.distributed).
    A file that cannot be read is an error naming it; given a ``skipped`` list, unreadable images are
    left out and listed there instead.
    """
    dataset = model_entry(name).dataset
    if dataset in TESTBEDS:
        images, labels = TESTBEDS[dataset].load(inputs.split, inputs.data)
        if inputs.limit is not None:
            images, labels = images[: inputs.limit], labels[: inputs.limit]
        where = f"the {dataset} {inputs.split} split"
        check_head_fits(int(labels.max()) + 1, model.config.num_classes, where, exact=False)
        shard = ShardBatchSampler(len(images), inputs.batch_size, context)
        batches = tensor_batches(images, labels, inputs.batch_size, context, TESTBEDS[dataset].to_input)
        return batches, shard.images()
    if dataset == "kinetics":
        return video_batches(name, inputs, model, context, skipped)
    if inputs.data is None:
        raise ValueError(f"model {name!r} evaluates on ImageNet: pass --data /path/to/imagenet/val")
    transform = data.build_eval_transform(input_size=model.config.img_size)
    folder = data.ImageFolder(inputs.data, transform=transform)
    check_head_fits(len(folder.classes), model.config.num_classes, f"--data {inputs.data}", exact=True)
    return folder_batches(folder, inputs, context, skipped)


def video_batches(
    name: str, inputs: DataArgs, model: torch.nn.Module, context: Context, skipped: list[str] | None
) -> tuple[Batches, int]:
    """Kinetics-style frame folders: one item per video with all its views (--views CLIPSxCROPS)."""
    if inputs.data is None:
        raise ValueError(
            f"model {name!r} evaluates on Kinetics: pass --data DIR (frame folders and test.csv)"
        )
    clips, crops = parse_views(inputs.views)
    annotation = inputs.annotation or Path(inputs.data) / "test.csv"
    config = model.config
    folder = data.VideoFrameFolder(
        inputs.data, annotation, num_frames=config.num_frames, img_size=config.img_size, num_clips=clips,
        num_crops=crops, num_classes=config.num_classes,
    )  # fmt: skip
    return folder_batches(VideoViews(folder), inputs, context, skipped)


def folder_batches(
    dataset: torch.utils.data.Dataset, inputs: DataArgs, context: Context, skipped: list[str] | None
) -> tuple[Batches, int]:
    """(batches, count) of a folder dataset (the first --limit items) through DataLoader workers, whose
    errors arrive as they were raised (one line naming the file), not wrapped in the worker's
    traceback (mambatr.data.guarded)."""
    if inputs.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(inputs.limit, len(dataset))))
    shard = ShardBatchSampler(len(dataset), inputs.batch_size, context)
    loader = torch.utils.data.DataLoader(
        Guarded(dataset), batch_sampler=shard, num_workers=inputs.workers, collate_fn=collate
    )
    return checked_batches(loader, skipped), shard.images()


def evaluable(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """What evaluate() runs: the model, or for video datasets the model averaged over each video's views."""
    return ViewAveraging(model) if model_entry(name).dataset == "kinetics" else model


def calibration_images(
    name: str, inputs: DataArgs, count: int, model: torch.nn.Module
) -> tuple[torch.Tensor, str]:
    """The first ``count`` images of the testbed's val or train split, or a seeded random sample of an
    image folder; labels are never read. Never the test split."""
    dataset = model_entry(name).dataset
    if dataset in TESTBEDS:
        images, _ = TESTBEDS[dataset].load(inputs.split, inputs.data)
        return TESTBEDS[dataset].to_input(images[:count]), f"{dataset} {inputs.split}[:{count}]"
    if dataset == "kinetics":
        raise ValueError("calibrate supports image models; video models are not supported yet")
    if inputs.data is None:
        raise ValueError(f"model {name!r} needs calibration images: pass --data /path/to/image/folder")
    folder = data.ImageFolder(
        inputs.data, transform=data.build_eval_transform(input_size=model.config.img_size)
    )
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:count]
    images = torch.stack([folder[int(i)][0] for i in order])
    return images, f"{inputs.data} ({len(images)} images, seeded sample)"


def viz_image(
    name: str, image: str, root: str | None, model: torch.nn.Module
) -> tuple[torch.Tensor, tuple, tuple]:
    """(image (C, H, W), mean, std): a Fashion-MNIST test index, or an image file for ImageNet models."""
    if model_entry(name).dataset == "fashion_mnist":
        if not image.isdigit():
            raise ValueError(
                f"--image for {name} is an index into the Fashion-MNIST test split, got {image!r}"
            )
        images, _ = data.load_fashion_mnist("test", root=root)
        index = int(image)
        if index >= len(images):
            raise ValueError(f"--image {index}: the test split has {len(images)} images")
        return (
            data.to_model_input(images[index : index + 1])[0],
            (data.FASHION_MNIST_MEAN,),
            (data.FASHION_MNIST_STD,),
        )
    transform = data.build_eval_transform(input_size=model.config.img_size)
    if not Path(image).is_file():
        what = "a folder" if Path(image).is_dir() else "not found"
        raise ValueError(f"--image {image}: {what}; give an image file")
    try:
        picture = transform(data.load_rgb(image))
    except data.UnreadableImageError as error:  # it names the file: say which flag gave it
        raise ValueError(f"--image {error}") from None
    return picture, data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD


def check_viz_out(out: str) -> None:
    """viz --out, before any work: a figure format matplotlib writes, and both files viz writes (OUT and
    OUT_importance.png) writable regular files or new ones."""
    path = Path(out)
    check_writable_file(path, "--out")
    formats = figure_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(
            f"--out {out}: name a figure file ending in one of .{', .'.join(formats)} (e.g. viz.png)"
        )
    check_writable_file(importance_path_of(path), "--out's importance figure")


def check_head_fits(labels: int, classes: int, where: str, exact: bool) -> None:
    """The model's head (``classes`` outputs) against the data's ``labels`` classes, before any work:
    a label the head has no output for would fail mid-run in the loss; a folder with another number of
    classes than the head (``exact``) would give every class after a missing one the wrong index."""
    if labels > classes or (exact and labels != classes):
        raise ValueError(
            f"{where} has {labels} classes but the model's head has {classes} outputs: the labels would "
            "not match the model's classes"
        )
