"""The ``mambatr`` command line: one subcommand per job, each with a readable table and ``--json``."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch

from mambatr.flops import CONVENTIONS, count_flops
from mambatr.models import create_model, list_models, model_entry
from mambatr.outputs import check_writable_dir, check_writable_file
from mambatr.table import markdown_table

if TYPE_CHECKING:
    from mambatr.reduction.api import ReductionReport

DEMO_LIMIT = 5_000  # first half of the test split: four evaluations fit in 3 minutes on 2 cores
DEMO_TARGETS = (0.2, 0.3, 0.4)
# Recipe fields a CLI flag sets, named in Recipe's errors: reported as the flags (--random-erasing)
RECIPE_FLAGS = (
    "random_resized_crop",
    "random_erasing",
    "mixup",
    "cutmix",
    "mixup_prob",
    "mixup_switch_prob",
    "drop_path",
)
REDUCTION_FLAGS = ("flops_reduction", "ratio", "layers", "indicator", "strategy", "option", "schedule")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors on stderr and exit status 2, like the commands' own errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, limits, thread numbers)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up runs, worker processes)."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


@contextmanager
def _flag_names(names: Iterable[str]) -> Iterator[None]:
    """Re-raise a ValueError of the Python API with its argument names as this CLI's flags
    (``flops_reduction`` -> ``--flops-reduction``): the user typed flags, not keyword arguments."""
    try:
        yield
    except ValueError as error:
        pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?!\w)")
        raise ValueError(pattern.sub(lambda m: "--" + m[1].replace("_", "-"), str(error))) from error


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vim_fmnist", help=f"one of: {', '.join(list_models())}")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def cmd_flops(args: argparse.Namespace) -> None:
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = create_model(args.model)
    report = count_flops(model.config, convention=args.convention)
    params = sum(p.numel() for p in model.parameters())
    if args.json:
        print(json.dumps({"model": args.model, "params": params, **report.to_dict()}, indent=2))
        return
    print(
        f"{args.model}: {report.gflops:.3f} GFLOPs (GMACs, convention {args.convention}), {params:,} params"
    )
    rows = [["embed", "", sum(report.embed.values()) / 1e6]]
    rows += [[f"layer {layer.index}", layer.tokens, layer.total / 1e6] for layer in report.layers]
    rows += [["final", "", sum(report.final.values()) / 1e6], ["total", "", report.total / 1e6]]
    print(markdown_table(["part", "tokens", "MFLOPs"], rows))


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The named model with --checkpoint, else its shipped weights; a model without either is refused."""
    entry = model_entry(args.model)
    if args.checkpoint is None and entry.weights is None:
        raise ValueError(f"model {args.model!r} has no shipped weights: pass --checkpoint PATH")
    model = create_model(args.model, checkpoint=args.checkpoint, pretrained=args.checkpoint is None)
    return model.eval()


def _eval_batches(args: argparse.Namespace, model: torch.nn.Module, skipped: list[str] | None = None):
    """(batches, count) of this process for the model's dataset: Fashion-MNIST or an ImageNet folder.

    Under torchrun each rank gets every N-th batch of the single-process run (mambatr.distributed).
    A file that cannot be read is an error naming it; given a ``skipped`` list, unreadable images are
    left out and listed there instead.
    """
    from mambatr import data
    from mambatr.data.tasks import TESTBEDS
    from mambatr.distributed import ShardBatchSampler
    from mambatr.evaluate import tensor_batches

    context = args.context
    dataset = model_entry(args.model).dataset
    if dataset in TESTBEDS:
        images, labels = TESTBEDS[dataset].load(args.split, args.data)
        if args.limit is not None:
            images, labels = images[: args.limit], labels[: args.limit]
        shard = ShardBatchSampler(len(images), args.batch_size, context)
        batches = tensor_batches(images, labels, args.batch_size, context, TESTBEDS[dataset].to_input)
        return batches, shard.images()
    if dataset == "kinetics":
        return _video_batches(args, model, skipped)
    if args.data is None:
        raise ValueError(f"model {args.model!r} evaluates on ImageNet: pass --data /path/to/imagenet/val")
    config = model.config
    dataset = data.ImageFolder(args.data, transform=data.build_eval_transform(input_size=config.img_size))
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    shard = ShardBatchSampler(len(dataset), args.batch_size, context)
    return _guarded_loader(dataset, shard, args.workers, skipped), shard.images()


def _guarded_loader(
    dataset: torch.utils.data.Dataset, shard, workers: int, skipped: list[str] | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a folder dataset through DataLoader workers, whose errors arrive as they were raised
    (one line naming the file), not wrapped in the worker's traceback (mambatr.data.guarded)."""
    from mambatr.data.guarded import Guarded, checked_batches, collate

    loader = torch.utils.data.DataLoader(
        Guarded(dataset), batch_sampler=shard, num_workers=workers, collate_fn=collate
    )
    return checked_batches(loader, skipped)


def _video_batches(args: argparse.Namespace, model: torch.nn.Module, skipped: list[str] | None):
    """Kinetics-style frame folders: one item per video with all its views (--views CLIPSxCROPS)."""
    from mambatr.data import VideoFrameFolder
    from mambatr.distributed import ShardBatchSampler
    from mambatr.video_eval import VideoViews, parse_views

    if args.data is None:
        raise ValueError(
            f"model {args.model!r} evaluates on Kinetics: pass --data DIR (frame folders and test.csv)"
        )
    clips, crops = parse_views(args.views)
    annotation = args.annotation or Path(args.data) / "test.csv"
    config = model.config
    folder = VideoFrameFolder(
        args.data, annotation, num_frames=config.num_frames, img_size=config.img_size, num_clips=clips,
        num_crops=crops,
    )  # fmt: skip
    videos = VideoViews(folder)
    if args.limit is not None:
        videos = torch.utils.data.Subset(videos, range(min(args.limit, len(videos))))
    shard = ShardBatchSampler(len(videos), args.batch_size, args.context)
    return _guarded_loader(videos, shard, args.workers, skipped), shard.images()


def _evaluable(args: argparse.Namespace, model: torch.nn.Module) -> torch.nn.Module:
    """What evaluate() runs: the model, or for video datasets the model averaged over each video's views."""
    from mambatr.video_eval import ViewAveraging

    return ViewAveraging(model) if model_entry(args.model).dataset == "kinetics" else model


def _check_reduction_args(args: argparse.Namespace) -> None:
    """Token-reduction flags without --method would be ignored: refuse them before any work."""
    given = ["--" + name.replace("_", "-") for name in REDUCTION_FLAGS if getattr(args, name) is not None]
    if args.method is None and given:
        raise ValueError(f"{' / '.join(given)} need{'s' if len(given) == 1 else ''} --method")


def _reduction_options(args: argparse.Namespace) -> dict:
    """mambatr.apply keyword arguments from the token-reduction flags (--option values typed per method)."""
    from mambatr.reduction import METHODS

    options = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = METHODS[args.method].parse_option(key, value)
    for key in ("indicator", "strategy"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.layers is not None:
        try:
            options["layers"] = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--layers expects comma-separated block indices, got {args.layers!r}") from None
    if args.schedule is not None:
        options["schedule"] = args.schedule
    return {"flops_reduction": args.flops_reduction, "ratio": args.ratio, **options}


def _apply(model: torch.nn.Module, args: argparse.Namespace) -> ReductionReport:
    """mambatr.apply with the reduction flags; its errors name the flags."""
    from mambatr.reduction import apply

    with _flag_names(("flops_reduction", "ratio")):
        return apply(model, args.method, **_reduction_options(args))


def cmd_eval(args: argparse.Namespace) -> None:
    from mambatr.data import UnreadableImageError
    from mambatr.distributed import all_gather_list
    from mambatr.evaluate import evaluate

    _check_reduction_args(args)
    torch.set_num_threads(args.threads)
    model = _load_model(args).to(args.context.device(args.device))
    summary = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "split": args.split,
        "processes": args.context.world_size,
        "gflops_dense": count_flops(model.config).gflops,
    }
    if args.method is not None:
        report = _apply(model, args)
        summary.update(
            method=args.method,
            options=report.options,
            layers=report.layers,
            removals=report.removals,
            flops_reduction_target=report.flops_reduction_target,
            flops_reduction_achieved=report.flops_reduction_achieved,
            tokens_per_layer=report.tokens_per_layer,
        )
        summary["gflops"] = report.gflops
    else:
        summary["gflops"] = summary["gflops_dense"]
    skipped: list[str] | None = [] if args.skip_bad_images else None
    batches, total = _eval_batches(args, model, skipped)
    evaluable = _evaluable(args, model)
    try:
        summary.update(
            evaluate(evaluable, batches, total=total, desc=f"eval {args.model}", context=args.context)
        )
    except UnreadableImageError as error:
        raise UnreadableImageError(f"{error}; --skip-bad-images evaluates without such files") from None
    if skipped is not None:
        skipped = all_gather_list(skipped, args.context)
        summary.update(skipped=len(skipped), skipped_images=skipped)
    if not args.context.is_main:
        return
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    achieved = summary.get("flops_reduction_achieved")
    print(
        markdown_table(
            ["model", "method", "FLOPs reduction %", "images", "top-1 %", "loss", "GFLOPs", "images/s"],
            [
                [
                    args.model,
                    args.method or "-",
                    100 * achieved if achieved is not None else 0.0,
                    summary["images"],
                    summary["top1"],
                    summary["loss"],
                    summary["gflops"],
                    summary["images_per_s"],
                ]
            ],
        )
    )
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):\n" + "\n".join(f"  {line}" for line in skipped))


def cmd_train(args: argparse.Namespace) -> None:
    from mambatr.train import Recipe, train

    check_writable_dir(args.out, "--out")
    with _flag_names(RECIPE_FLAGS):
        recipe = Recipe(
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_epochs=args.warmup_epochs,
            weight_decay=args.weight_decay,
            seed=args.seed,
            threads=args.threads,
            augment=not args.no_augment,
            device=args.device,
            random_resized_crop=args.random_resized_crop,
            random_erasing=args.random_erasing,
            mixup=args.mixup,
            cutmix=args.cutmix,
            mixup_prob=args.mixup_prob,
            mixup_switch_prob=args.mixup_switch_prob,
            drop_path=args.drop_path,
            init_from=args.init_from,
        )
    with _flag_names(("init_from",)):
        result = train(
            recipe,
            Path(args.out),
            data_root=args.data,
            resume=args.resume,
            limit=args.limit,
            max_steps=args.max_steps,
        )
    if not result["finished"]:
        print(f"stopped after step {result['step']} (--max-steps); continue with --resume", file=sys.stderr)
        return
    last = result["history"][-1]
    print(
        f"wrote {result['weights']}: val top-1 {last['val_top1']:.2f} % after {last['epoch']} epochs "
        f"({last['elapsed_s'] / 60:.1f} min)"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job: the shipped model on the Fashion-MNIST test split, as a results table."""
    from mambatr import data
    from mambatr.evaluate import evaluate_tensors
    from mambatr.sweep import run_sweep

    torch.set_num_threads(args.threads)
    model = create_model("vim_fmnist", pretrained=True).eval()
    images, labels = data.load_fashion_mnist("test", root=args.data)
    images, labels = images[: args.limit], labels[: args.limit]
    print(
        f"mambatr demo: vim_fmnist (shipped weights) on the first {len(images):,} of the 10,000 "
        "Fashion-MNIST test images (all of them: --limit 10000, or mambatr eval / sweep)",
        file=sys.stderr,
    )
    sweep = run_sweep(  # progress on stderr: one bar for the runs, one per evaluation
        model,
        lambda m: evaluate_tensors(m, images, labels, batch_size=args.batch_size, desc="images"),
        ["mtr"],
        DEMO_TARGETS,
    )
    rows = [
        [
            r["method"],
            f"{r['target']:.0%}" if r["target"] else "-",
            100 * r["flops_reduction"],
            r["gflops"] * 1e3,
            r["top1"],
            r["drop"],
            r["images_per_s"],
        ]
        for r in sweep
    ]
    headers = ["method", "target", "FLOPs reduction %", "MFLOPs/img", "top-1 %", "drop", "images/s"]
    if args.json:
        print(json.dumps([dict(zip(headers, row, strict=True)) for row in rows], indent=2))
        return
    print(markdown_table(headers, rows))


def _add_reduction_args(parser: argparse.ArgumentParser) -> None:
    from mambatr.reduction import METHODS
    from mambatr.reduction.mtr import INDICATORS

    group = parser.add_argument_group("token reduction")
    group.add_argument("--method", choices=sorted(METHODS), help="token-reduction method (default: none)")
    group.add_argument("--flops-reduction", type=float, help="FLOPs-reduction target in (0, 0.9), e.g. 0.3")
    group.add_argument("--ratio", type=float, help="the method's own amount instead of a FLOPs target")
    group.add_argument(
        "--layers", help="comma-separated 0-indexed blocks to reduce after (default: per depth)"
    )
    group.add_argument("--indicator", help=f"MTR importance indicator: {', '.join(INDICATORS)}")
    group.add_argument("--strategy", help="MTR strategy: merge, prune, hybrid")
    group.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other method option")
    group.add_argument(
        "--schedule",
        metavar="FILE",
        help="a schedule from `mambatr calibrate` (fixes the layers, counts and options; with --method)",
    )


def _sweep_grid(args: argparse.Namespace) -> tuple[list[str], list[float]]:
    """--methods and --reductions as lists, every entry checked: a bad one fails before any work."""
    from mambatr.reduction import METHODS
    from mambatr.reduction.schedule import MAX_FLOPS_REDUCTION

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(
            f"--methods: unknown method(s) {', '.join(map(repr, unknown)) or 'none given'}; "
            f"available: {', '.join(sorted(METHODS))}"
        )
    reductions = []
    for text in (x.strip() for x in args.reductions.split(",")):
        try:
            value = float(text) if text else None
        except ValueError:
            raise ValueError(f"--reductions: {text!r} is not a number") from None
        if value is not None and not 0.0 < value < MAX_FLOPS_REDUCTION:
            raise ValueError(
                f"--reductions: {text} is not a FLOPs-reduction target in (0, {MAX_FLOPS_REDUCTION})"
            )
        reductions += [] if value is None else [value]
    if not reductions:
        raise ValueError("--reductions: no target given")
    return methods, reductions


def cmd_sweep(args: argparse.Namespace) -> None:
    from mambatr.evaluate import evaluate
    from mambatr.sweep import TABLE_HEADERS, run_sweep, table_rows, write_outputs

    methods, reductions = _sweep_grid(args)
    check_writable_dir(args.out, "--out")
    torch.set_num_threads(args.threads)
    model = _load_model(args).to(args.context.device(args.device))

    def evaluate_model(m: torch.nn.Module) -> dict:
        batches, total = _eval_batches(args, m)
        return evaluate(_evaluable(args, m), batches, total=total, desc="images", context=args.context)

    rows = run_sweep(model, evaluate_model, methods, reductions, progress=args.context.is_main)
    if not args.context.is_main:
        return
    paths = write_outputs(rows, Path(args.out), f"{args.model}: training-free token reduction")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(markdown_table(TABLE_HEADERS, table_rows(rows)))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> None:
    from mambatr.benchmark import throughput

    _check_reduction_args(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    entry = model_entry(args.model)
    # speed does not depend on the weights: --checkpoint, else shipped ones when there are, else random
    pretrained = args.checkpoint is None and entry.weights is not None
    model = create_model(args.model, checkpoint=args.checkpoint, pretrained=pretrained).to(device).eval()
    config = model.config
    images = torch.randn(config.input_shape(args.batch_size), device=device)
    result = {
        "model": args.model,
        "device": str(device),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "scan_impl": model.scan_impl,
        "dense": throughput(model, images, args.warmup, args.runs, progress=True, desc="dense"),
    }
    if args.method is not None:
        report = _apply(model, args)
        reduced = throughput(model, images, args.warmup, args.runs, progress=True, desc=args.method)
        ideal = 1.0 / (1.0 - report.flops_reduction_achieved)
        speedup = reduced["images_per_s"] / result["dense"]["images_per_s"]
        result.update(
            method=args.method,
            flops_reduction_achieved=report.flops_reduction_achieved,
            reduced=reduced,
            speedup=speedup,
            ideal_speedup=ideal,
            speedup_vs_ideal=speedup / ideal,
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    dense = result["dense"]
    rows = [
        [
            "dense",
            "-",
            dense["images_per_s"],
            f"{dense['images_per_s_min']:.1f}-{dense['images_per_s_max']:.1f}",
            "-",
            "-",
            "-",
            "-",
        ]
    ]
    if args.method is not None:
        red = result["reduced"]
        rows.append(
            [
                args.method,
                100 * result["flops_reduction_achieved"],
                red["images_per_s"],
                f"{red['images_per_s_min']:.1f}-{red['images_per_s_max']:.1f}",
                result["speedup"],
                result["ideal_speedup"],
                result["speedup_vs_ideal"],
                100 * red["reduction_share"],
            ]
        )
    print(
        f"{args.model} on {device}, batch {args.batch_size}, {args.threads} threads, scan {model.scan_impl}"
    )
    print(
        markdown_table(
            ["model", "FLOPs red. %", "images/s", "range", "speed-up", "ideal", "of ideal", "in reduction %"],
            rows,
        )
    )


def _viz_image(args: argparse.Namespace, model: torch.nn.Module) -> tuple[torch.Tensor, tuple, tuple]:
    """(image (C, H, W), mean, std): a Fashion-MNIST test index, or an image file for ImageNet models."""
    from mambatr import data

    if model_entry(args.model).dataset == "fashion_mnist":
        if not args.image.isdigit():
            raise ValueError(
                f"--image for {args.model} is an index into the Fashion-MNIST test split, got {args.image!r}"
            )
        images, _ = data.load_fashion_mnist("test", root=args.data)
        index = int(args.image)
        if index >= len(images):
            raise ValueError(f"--image {index}: the test split has {len(images)} images")
        return (
            data.to_model_input(images[index : index + 1])[0],
            (data.FASHION_MNIST_MEAN,),
            (data.FASHION_MNIST_STD,),
        )
    transform = data.build_eval_transform(input_size=model.config.img_size)
    if not Path(args.image).is_file():
        what = "a folder" if Path(args.image).is_dir() else "not found"
        raise ValueError(f"--image {args.image}: {what}; give an image file")
    try:
        image = transform(data.load_rgb(args.image))
    except OSError as error:
        raise ValueError(f"--image {args.image}: cannot read the image ({error})") from None
    return image, data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD


def cmd_viz(args: argparse.Namespace) -> None:
    from mambatr.visualize import visualize

    if args.method is None:
        raise ValueError("viz needs --method (and --flops-reduction or --ratio)")
    check_writable_file(args.out, "--out")
    model = _load_model(args)
    if len(model.config.input_shape(1)) != 4:
        raise ValueError(f"viz draws image models; {args.model} takes videos")
    report = _apply(model, args)
    image, mean, std = _viz_image(args, model)
    achieved = f"{report.flops_reduction_achieved:.1%} FLOPs reduction"
    amount = (
        f"target {args.flops_reduction:.0%}, achieved {achieved}"
        if args.ratio is None
        else f"ratio {args.ratio:g}, {achieved}"
    )
    title = f"{args.model}, {args.method} ({amount})"
    groups, importance, traces = visualize(model, image, Path(args.out), mean, std, title=title)
    print(
        f"wrote {groups} (kept / merged groups / pruned per layer after blocks {report.layers}) "
        f"and {importance} (importance); FLOPs reduction {report.flops_reduction_achieved:.1%}"
    )


def cmd_probe(args: argparse.Namespace) -> None:
    """Fragility probe: top-1 after dropping N patch tokens after block k, random vs background-first."""
    from mambatr.data.tasks import TESTBEDS
    from mambatr.probe import parse_ints, probe_table, run_probe

    dataset = model_entry(args.model).dataset
    if dataset not in TESTBEDS:
        raise ValueError(f"probe runs on the Fashion-MNIST testbeds; {args.model} evaluates on {dataset}")
    after, remove = parse_ints(args.after, "--after"), parse_ints(args.remove, "--remove")
    torch.set_num_threads(args.threads)
    model = _load_model(args).to(args.device)
    images, labels = TESTBEDS[dataset].load("test", args.data)
    images, labels = images[: args.limit], labels[: args.limit]
    result = run_probe(
        model, images, labels, TESTBEDS[dataset].to_input, after, remove, args.seeds, args.batch_size
    )
    if args.json:
        print(json.dumps({"model": args.model, **result}, indent=2))
    else:
        print(probe_table(args.model, result))


def _calibration_images(args: argparse.Namespace, model: torch.nn.Module) -> tuple[torch.Tensor, str]:
    """The first --images images of the testbed's val or train split, or a seeded random sample of an
    image folder; labels are never read. Never the test split."""
    from mambatr import data
    from mambatr.data.tasks import TESTBEDS

    dataset = model_entry(args.model).dataset
    if dataset in TESTBEDS:
        images, _ = TESTBEDS[dataset].load(args.split, args.data)
        return TESTBEDS[dataset].to_input(images[: args.images]), f"{dataset} {args.split}[:{args.images}]"
    if dataset == "kinetics":
        raise ValueError("calibrate supports image models; video models are not supported yet")
    if args.data is None:
        raise ValueError(f"model {args.model!r} needs calibration images: pass --data /path/to/image/folder")
    folder = data.ImageFolder(
        args.data, transform=data.build_eval_transform(input_size=model.config.img_size)
    )
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[: args.images]
    images = torch.stack([folder[int(i)][0] for i in order])
    return images, f"{args.data} ({len(images)} images, seeded sample)"


def cmd_calibrate(args: argparse.Namespace) -> None:
    """Find a schedule (layers and counts) for a method and FLOPs target on unlabeled images."""
    from mambatr.reduction import calibrate

    check_writable_file(args.out, "--out")
    torch.set_num_threads(args.threads)
    model = _load_model(args)
    images, source = _calibration_images(args, model)
    options = _reduction_options(args)
    for flag in ("flops_reduction", "ratio", "layers", "schedule"):
        options.pop(flag, None)
    with _flag_names(("flops_reduction", "step")):
        schedule = calibrate(
            model,
            args.method,
            args.flops_reduction,
            images,
            step=args.step,
            batch_size=args.batch_size,
            model_name=args.model,
            source=source,
            command="mambatr " + " ".join(sys.argv[1:]),
            **options,
        )
    schedule.save(args.out)
    if args.json:
        print(json.dumps(schedule.to_dict(), indent=2))
        return
    rows = [[layer, count] for layer, count in sorted(schedule.removals.items())]
    print(markdown_table(["after block", "tokens removed"], rows))
    print(
        f"\n{args.method} on {args.model}: FLOPs reduction {schedule.flops_reduction_achieved:.2%} "
        f"(target {args.flops_reduction:.0%}), mean KL to the dense model {schedule.objective:.4g} "
        f"on {source}, "
        f"{schedule.calibration['evaluations']} evaluations in {schedule.calibration['seconds']} s; "
        f"written to {args.out}"
    )


def _add_video_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video models (Kinetics-style frame folders)")
    group.add_argument(
        "--views", default="1x1", help="clips x crops per video, averaged (official Kinetics test: 4x3)"
    )
    group.add_argument("--annotation", help="annotation file (default: DATA/test.csv, the official layout)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mambatr", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"mambatr {importlib.metadata.version('mambatr')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    flops = commands.add_parser("flops", help="analytic FLOPs and params of a model, per layer")
    _add_model_args(flops)
    flops.add_argument(
        "--convention",
        default="full",
        choices=CONVENTIONS,
        help="full: every op, both scans (ours); paper: reproduces published Vim figures",
    )
    flops.set_defaults(run=cmd_flops)

    evaluation = commands.add_parser(
        "eval", help="top-1, loss, images/s and GFLOPs of a model on its dataset"
    )
    _add_model_args(evaluation)
    evaluation.add_argument(
        "--checkpoint",
        help="weights file (official .pth or .safetensors); default: the model's shipped weights",
    )
    evaluation.add_argument("--data", help="Fashion-MNIST directory, or an ImageNet-style val folder")
    evaluation.add_argument("--split", default="test", choices=["test", "val"], help="Fashion-MNIST split")
    evaluation.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    evaluation.add_argument("--batch-size", type=positive_int, default=256)
    evaluation.add_argument(
        "--workers", type=non_negative_int, default=2, help="image-decoding workers (folders only)"
    )
    evaluation.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    evaluation.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank's GPU)")
    evaluation.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out image files that cannot be read (listed, and counted in the output) instead of "
        "stopping at the first",
    )
    _add_video_args(evaluation)
    _add_reduction_args(evaluation)
    evaluation.set_defaults(run=cmd_eval)

    from mambatr.train import Recipe

    training = commands.add_parser("train", help="train a Vim model on Fashion-MNIST (CPU, resumable)")
    training.add_argument("--model", default="vim_fmnist")
    training.add_argument("--out", default="runs/vim_fmnist", help="checkpoints and exported weights go here")
    training.add_argument("--data", help="Fashion-MNIST directory")
    training.add_argument("--epochs", type=positive_int, default=Recipe.epochs)
    training.add_argument("--batch-size", type=positive_int, default=Recipe.batch_size)
    training.add_argument("--lr", type=float, default=Recipe.lr)
    training.add_argument("--warmup-epochs", type=float, default=Recipe.warmup_epochs)
    training.add_argument("--weight-decay", type=float, default=Recipe.weight_decay)
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    training.add_argument("--no-augment", action="store_true", help="no random shift / flip")
    recipe = training.add_argument_group(
        "official Vim / DeiT recipe options (default: off; hustvl/Vim main.py values in brackets)"
    )
    recipe.add_argument(
        "--random-resized-crop",
        type=float,
        default=Recipe.random_resized_crop,
        metavar="MIN_SCALE",
        help="crop of MIN_SCALE..1 of the area, aspect 3/4..4/3, resized back (bilinear), after the shift / "
        "flip; e.g. 0.35 at 28x28 [ImageNet: 0.08; DeiT uses a padded crop below 32 px]",
    )
    recipe.add_argument(
        "--random-erasing",
        type=float,
        default=Recipe.random_erasing,
        metavar="P",
        help="probability of erasing one rectangle (2 %% to 1/3 of the area, aspect 0.3..3.3) with normal "
        "noise, timm's 'pixel' mode [0.25]",
    )
    recipe.add_argument(
        "--mixup", type=float, default=Recipe.mixup, metavar="ALPHA", help="mixup alpha [0.8]"
    )
    recipe.add_argument(
        "--cutmix", type=float, default=Recipe.cutmix, metavar="ALPHA", help="cutmix alpha [1.0]"
    )
    recipe.add_argument(
        "--mixup-prob", type=float, default=Recipe.mixup_prob, help="probability of mixing a batch [1.0]"
    )
    recipe.add_argument(
        "--mixup-switch-prob",
        type=float,
        default=Recipe.mixup_switch_prob,
        help="probability of cutmix instead of mixup when both are on [0.5]",
    )
    recipe.add_argument(
        "--drop-path",
        type=float,
        default=Recipe.drop_path,
        metavar="RATE",
        help="stochastic depth, rising linearly over the blocks to RATE (Vim / VideoMamba) [0.1]",
    )
    recipe.add_argument(
        "--init-from",
        metavar="MODEL_OR_FILE",
        help="start from a model's shipped weights or a checkpoint: position embedding resampled (bicubic), "
        "patch embedding PI-resized (FlexiViT), e.g. --model vim_fmnist_p2 --init-from vim_fmnist",
    )
    training.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    training.add_argument("--limit", type=positive_int, help="train on the first N images only (smoke tests)")
    training.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    training.add_argument(
        "--max-steps", type=positive_int, help="stop (and save) after N steps in this run; resume later"
    )
    training.set_defaults(run=cmd_train)

    sweep = commands.add_parser("sweep", help="every method at every FLOPs target: table, CSV, JSON, PNG")
    _add_model_args(sweep)
    sweep.add_argument("--checkpoint", help="weights file; default: the model's shipped weights")
    sweep.add_argument("--methods", default="mtr,hsa,stm", help="comma-separated methods")
    sweep.add_argument("--reductions", default="0.2,0.3,0.4", help="comma-separated FLOPs targets")
    sweep.add_argument("--out", default="runs/sweep", help="directory for sweep.csv / .json / .png")
    sweep.add_argument("--data", help="Fashion-MNIST directory, or an ImageNet-style val folder")
    sweep.add_argument("--split", default="test", choices=["test", "val"])
    sweep.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    sweep.add_argument("--batch-size", type=positive_int, default=256)
    sweep.add_argument("--workers", type=non_negative_int, default=2)
    sweep.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    sweep.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank's GPU)")
    _add_video_args(sweep)
    sweep.set_defaults(run=cmd_sweep)

    bench = commands.add_parser("bench", help="dense vs reduced throughput, measured in the same run")
    _add_model_args(bench)
    bench.add_argument("--checkpoint", help="weights file (default: shipped weights, or random ones)")
    bench.add_argument("--batch-size", type=positive_int, default=64)
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--warmup", type=non_negative_int, default=3)
    bench.add_argument("--runs", type=positive_int, default=10)
    bench.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    _add_reduction_args(bench)
    bench.set_defaults(run=cmd_bench)

    viz = commands.add_parser("viz", help="draw which patches each reducing layer kept, merged or pruned")
    viz.add_argument("--model", default="vim_fmnist", help=f"one of: {', '.join(list_models())}")
    viz.add_argument("--checkpoint", help="weights file; default: the model's shipped weights")
    viz.add_argument(
        "--image", default="0", help="Fashion-MNIST test index, or an image file (ImageNet models)"
    )
    viz.add_argument("--data", help="Fashion-MNIST directory")
    viz.add_argument("--out", default="runs/viz.png")
    _add_reduction_args(viz)
    viz.set_defaults(run=cmd_viz)

    probe = commands.add_parser(
        "probe", help="top-1 after dropping N patch tokens after block k: random vs background-first"
    )
    _add_model_args(probe)
    probe.add_argument("--checkpoint", help="weights file; default: the model's shipped weights")
    probe.add_argument("--data", help="Fashion-MNIST directory")
    probe.add_argument(
        "--after",
        help="comma-separated 0-indexed blocks to drop tokens after (default: after 1/6, 1/2 and 5/6 of the "
        "depth, never the last block: 2,6,10 for depth 12, 1,4,6 for depth 8)",
    )
    probe.add_argument(
        "--remove",
        help="comma-separated numbers of patch tokens to drop (default: about 10 %% and 20 %% of the patch "
        "tokens: 5,10 of 49, 20,39 of 196)",
    )
    probe.add_argument("--seeds", type=positive_int, default=3, help="random orders averaged per row")
    probe.add_argument("--limit", type=positive_int, help="use only the first N test images")
    probe.add_argument("--batch-size", type=positive_int, default=256)
    probe.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    probe.add_argument("--device", default="cpu", help="cpu or cuda")
    probe.set_defaults(run=cmd_probe)

    from mambatr.reduction import METHODS

    calibration = commands.add_parser(
        "calibrate", help="find where and how many tokens to reduce for a method, on unlabeled images"
    )
    _add_model_args(calibration)
    calibration.add_argument("--checkpoint", help="weights file; default: the model's shipped weights")
    calibration.add_argument("--data", help="Fashion-MNIST directory, or a folder of calibration images")
    calibration.add_argument("--method", required=True, choices=sorted(METHODS), help="reduction method")
    calibration.add_argument(
        "--flops-reduction", type=float, required=True, help="FLOPs-reduction target in (0, 0.9)"
    )
    calibration.add_argument("--images", type=positive_int, default=500, help="calibration images")
    calibration.add_argument(
        "--split", default="val", choices=["val", "train"], help="Fashion-MNIST split (never test)"
    )
    calibration.add_argument(
        "--step", type=positive_int, help="tokens added per search move (default: about 4 %% of the tokens)"
    )
    calibration.add_argument("--batch-size", type=positive_int, default=256)
    calibration.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    calibration.add_argument("--indicator", help="MTR importance indicator")
    calibration.add_argument("--strategy", help="MTR strategy")
    calibration.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other method option")
    calibration.add_argument("--out", default="schedule.json", help="schedule JSON to write")
    calibration.set_defaults(run=cmd_calibrate, ratio=None, layers=None, schedule=None)

    demo = commands.add_parser("demo", help="the shipped vim_fmnist model on Fashion-MNIST: a results table")
    demo.add_argument("--data", help="Fashion-MNIST directory")
    demo.add_argument("--limit", type=positive_int, default=DEMO_LIMIT, help="test images to use")
    demo.add_argument("--batch-size", type=positive_int, default=256)
    demo.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(run=cmd_demo)
    return parser


DISTRIBUTED_COMMANDS = ("eval", "sweep")


def main(argv: list[str] | None = None) -> None:
    from mambatr import distributed

    args = build_parser().parse_args(argv)
    args.context = distributed.SINGLE
    try:
        if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(f"only {' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun")
        args.context = distributed.init(getattr(args, "device", "cpu"))
        try:
            args.run(args)
        finally:
            distributed.shutdown()
    except (ValueError, FileNotFoundError) as error:  # bad input; anything else is a bug: traceback
        rank = f" (rank {args.context.rank})" if args.context.distributed else ""
        print(f"mambatr {args.command}{rank}: error: {error}", file=sys.stderr)
        sys.exit(2)
