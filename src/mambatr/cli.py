"""The ``mambatr`` command line: one subcommand per job, each with a readable table and ``--json``."""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from mambatr import data, deploy, distributed, heap
from mambatr.benchmark import throughput
from mambatr.cli_args import (
    DataArgs,
    ModelArgs,
    Parser,
    RuntimeArgs,
    add_data_args,
    add_method_option_args,
    add_model_args,
    add_reduction_args,
    add_runtime_args,
    flag,
    flag_names,
    non_negative_int,
    positive_int,
    reduction_from,
    refuse_duplicates,
    typed,
)
from mambatr.cli_exit import one_line_errors
from mambatr.cli_inputs import calibration_images, check_viz_out, eval_batches, evaluable, viz_image
from mambatr.cli_reproduce import add_reproduce_command
from mambatr.data.tasks import TESTBEDS
from mambatr.distributed import all_gather_list
from mambatr.evaluate import evaluate, evaluate_tensors
from mambatr.finite import check_finite_weights
from mambatr.flops import CONVENTIONS, count_flops
from mambatr.models import create_model, model_entry
from mambatr.ops import ort_build
from mambatr.ops.dispatch import impls_used
from mambatr.outputs import check_writable_dir, check_writable_file, write_text_atomic
from mambatr.probe import parse_ints, probe_table, run_probe
from mambatr.provenance import command_line, provenance, sha256_of
from mambatr.reduction import METHODS, ReductionReport, calibrate
from mambatr.reduction.calibration import Budget
from mambatr.reduction.recipe import Recipe as TunedRecipe
from mambatr.reduction.schedule import MAX_FLOPS_REDUCTION, SHIPPED_SCHEDULES
from mambatr.reduction.tune import tune as tune_search
from mambatr.reduction.tune import variants as tune_variants
from mambatr.runs import RunFolder
from mambatr.sweep import (
    TABLE_HEADERS,
    ScheduleFor,
    calibrating,
    method_label,
    reduced_row,
    run_sweep,
    schedules_in,
    sweep_document,
    table_rows,
    write_outputs,
)
from mambatr.table import markdown_table
from mambatr.train import Recipe, train
from mambatr.visualize import visualize

DEMO_MODEL = "vim_fmnist_p2"  # the testbed the demo runs: the representative one (docs/testbed.md)
DEMO_LIMIT = 3_000  # five evaluations of the 196-token model fit in 3 minutes on 2 idle cores (2.5 min)
DEMO_TARGETS = (0.2, 0.3, 0.4)
DEMO_CALIBRATED = 0.3  # plus MTR with its shipped calibrated schedule (mambatr/schedules/)
DISTRIBUTED_COMMANDS = ("eval", "sweep")
OVERWRITE_HELP = "start again in an --out that holds another run (its kept cells are removed)"
# Recipe fields set by a flag of their name: the training schedule, then the official Vim / DeiT options
# (off by default) with their metavar and help (hustvl/Vim main.py values in brackets)
SCHEDULE_FIELDS = {"epochs": positive_int, "lr": float, "warmup_epochs": float, "weight_decay": float}
RECIPE_OPTIONS = {
    "random_resized_crop": (
        "MIN_SCALE",
        "crop of MIN_SCALE..1 of the area, aspect 3/4..4/3, resized back (bilinear), after the shift / "
        "flip; e.g. 0.35 at 28x28 [ImageNet: 0.08; DeiT uses a padded crop below 32 px]",
    ),
    "random_erasing": (
        "P",
        "probability of erasing one rectangle (2 %% to 1/3 of the area, aspect 0.3..3.3) with normal "
        "noise, timm's 'pixel' mode [0.25]",
    ),
    "mixup": ("ALPHA", "mixup alpha [0.8]"),
    "cutmix": ("ALPHA", "cutmix alpha [1.0]"),
    "mixup_prob": (None, "probability of mixing a batch [1.0]"),
    "mixup_switch_prob": (None, "probability of cutmix instead of mixup when both are on [0.5]"),
    "drop_path": (
        "RATE",
        "stochastic depth, rising linearly over the blocks to RATE (Vim / VideoMamba) [0.1]",
    ),
}


def _load_model(which: ModelArgs) -> torch.nn.Module:
    """The named model with --checkpoint, else its shipped weights; a model without either is refused."""
    entry = model_entry(which.model)
    if which.checkpoint is None and entry.weights is None:
        raise ValueError(f"model {which.model!r} has no shipped weights: pass --checkpoint PATH")
    model = create_model(which.model, checkpoint=which.checkpoint, pretrained=which.checkpoint is None)
    check_finite_weights(model, which.checkpoint or f"the shipped weights of {which.model}")
    return model.eval()


def _reduction_summary(method: str, report: ReductionReport) -> dict:
    """What a result file records of the reduction that ran (the ``mambatr.apply`` report)."""
    return dict(
        method=method,
        options=report.options,
        layers=report.layers,
        removals=report.removals,
        flops_reduction_target=report.flops_reduction_target,
        flops_reduction_achieved=report.flops_reduction_achieved,
        tokens_per_layer=report.tokens_per_layer,
    )


def _provenance(args: argparse.Namespace, which: ModelArgs, inputs: DataArgs) -> dict:
    """What a command's result file records of its run (mambatr.provenance): model, weights and their
    sha256, data, split, limit and the command line."""
    return provenance(
        which.model,
        which.checkpoint,
        data=inputs.data,
        split=inputs.split,
        limit=inputs.limit,
        command=command_line(getattr(args, "argv", sys.argv[1:])),
    )


def _run_args(record: dict, inputs: DataArgs, run: RuntimeArgs) -> dict:
    """What a resumable run's results depend on besides its own flags, keyed as the user knows it: a
    rerun into the same --out with other values is refused, naming the first that differs."""
    return {
        "--model": record["model"],
        "--checkpoint": record["weights"] if record["checkpoint"] is not None else None,
        "the weights' sha256": record["weights_sha256"],
        "--data": record["data"],
        "--split": inputs.split,
        "--limit": inputs.limit,
        "--batch-size": inputs.batch_size,
        "--views": inputs.views,
        "--annotation": inputs.annotation,
        "--device": run.device,
    }


@contextmanager
def _kept_on_interrupt(folder: RunFolder) -> Iterator[None]:
    """On Ctrl-C, say how much of the run is kept and how to continue it (then exit as interrupted)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted: {folder.saved()} finished cell(s) kept in {folder.path}; "
            "run the same command again to continue"
        ) from None


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


def cmd_eval(args: argparse.Namespace) -> None:
    which, inputs, run = typed(args)
    reduction = reduction_from(args)
    run.start()
    model = _load_model(which).to(run.context.device(run.device))
    summary = {
        **_provenance(args, which, inputs),
        "processes": run.context.world_size,
        "gflops_dense": count_flops(model.config).gflops,
    }
    if reduction.method is not None:
        report = reduction.apply(model)
        summary.update(_reduction_summary(reduction.method, report), gflops=report.gflops)
        summary["schedule"] = reduction.schedule
    else:
        summary["gflops"] = summary["gflops_dense"]
    skipped: list[str] | None = [] if args.skip_bad_images else None
    batches, total = eval_batches(which.model, inputs, model, run.context, skipped)
    desc = f"eval {which.model}"
    try:
        summary.update(
            evaluate(evaluable(which.model, model), batches, total, desc=desc, context=run.context)
        )
    except data.UnreadableImageError as error:
        raise data.UnreadableImageError(f"{error}; --skip-bad-images evaluates without such files") from None
    if skipped is not None:
        skipped = all_gather_list(skipped, run.context)
        summary.update(skipped=len(skipped), skipped_images=skipped)
    if not run.context.is_main:
        return
    if run.json:
        print(json.dumps(summary, indent=2))
        return
    achieved = summary.get("flops_reduction_achieved")
    row = [which.model, reduction.method or "-", 100 * achieved if achieved is not None else 0.0]
    row += [summary[key] for key in ("images", "top1", "loss", "gflops", "images_per_s")]
    headers = ["model", "method", "FLOPs reduction %", "images", "top-1 %", "loss", "GFLOPs", "images/s"]
    print(markdown_table(headers, [row]))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):\n" + "\n".join(f"  {line}" for line in skipped))


def cmd_train(args: argparse.Namespace) -> None:
    check_writable_dir(args.out, "--out")
    with flag_names(RECIPE_OPTIONS):
        recipe = Recipe(
            model=args.model,
            batch_size=args.batch_size,
            seed=args.seed,
            threads=args.threads,
            augment=not args.no_augment,
            device=args.device,
            init_from=args.init_from,
            **{name: getattr(args, name) for name in (*SCHEDULE_FIELDS, *RECIPE_OPTIONS)},
        )
    fields = (
        "init_from",
        "batch_size",
        "seed",
        "threads",
        "device",
        "limit",
        *SCHEDULE_FIELDS,
        *RECIPE_OPTIONS,
    )
    with flag_names(fields):
        result = train(
            recipe,
            Path(args.out),
            data_root=args.data,
            resume=args.resume,
            limit=args.limit,
            max_steps=args.max_steps,
            overwrite=args.overwrite,
        )
    if not result["finished"]:
        why = result.get("interrupted") or "--max-steps"
        print(
            f"stopped after step {result['step']} ({why}): checkpoint {Path(args.out) / 'last.pth'}; "
            "continue with the same command and --resume",
            file=sys.stderr,
        )
        if result.get("interrupted"):
            sys.exit(128 + signal.Signals[result["interrupted"]].value)  # 130 for SIGINT, 143 for SIGTERM
        return
    last = result["history"][-1]
    print(
        f"wrote {result['weights']}: val top-1 {last['val_top1']:.2f} % after {last['epoch']} epochs "
        f"({last['elapsed_s'] / 60:.1f} min)"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job: the shipped model on the Fashion-MNIST test split, as a results table."""
    _, inputs, run = typed(args)
    run.start()
    model = create_model(DEMO_MODEL, pretrained=True).eval()
    images, labels = data.load_fashion_mnist("test", root=inputs.data)
    images, labels = images[: inputs.limit], labels[: inputs.limit]
    print(
        f"mambatr demo: {DEMO_MODEL} (shipped weights) on the first {len(images):,} of the 10,000 "
        "Fashion-MNIST test images (all of them: --limit 10000, or mambatr eval / sweep)",
        file=sys.stderr,
    )
    evaluate_model = lambda m: evaluate_tensors(  # noqa: E731
        m, images, labels, batch_size=inputs.batch_size, desc="images"
    )
    # progress on stderr: one bar for the runs, one per evaluation
    sweep = run_sweep(model, evaluate_model, ["mtr"], DEMO_TARGETS)
    shipped = schedules_in(SHIPPED_SCHEDULES, model, ["mtr"], [DEMO_CALIBRATED], model_name=DEMO_MODEL)
    calibrated = shipped("mtr", DEMO_CALIBRATED)
    sweep.append(reduced_row(model, evaluate_model, "mtr", DEMO_CALIBRATED, sweep[0], calibrated))
    methods = [method_label(r) for r in sweep]
    if run.json:
        rows = [
            {
                "method": method,
                "schedule": r["schedule"],
                "flops_reduction_target": r["target"],
                "flops_reduction_achieved": r["flops_reduction"],
                "mflops_per_image": 1e3 * r["gflops"],
                "top1": r["top1"],
                "drop": r["drop"],
                "images_per_s": r["images_per_s"],
            }
            for method, r in zip(methods, sweep, strict=True)
        ]
        print(json.dumps({"model": DEMO_MODEL, "images": len(images), "rows": rows}, indent=2))
        return
    rows = [
        [
            method,
            f"{r['target']:.0%}" if r["target"] else "-",
            100 * r["flops_reduction"],
            r["gflops"] * 1e3,
            r["top1"],
            r["drop"],
            r["images_per_s"],
        ]
        for method, r in zip(methods, sweep, strict=True)
    ]
    headers = ["method", "target", "FLOPs reduction %", "MFLOPs/img", "top-1 %", "drop", "images/s"]
    print(markdown_table(headers, rows))


def _sweep_schedules(
    schedule: str,
    calibration_images_count: int,
    which: ModelArgs,
    inputs: DataArgs,
    run: RuntimeArgs,
    model: torch.nn.Module,
    grid: tuple[list[str], list[float]],
    out: Path,
    folder: RunFolder | None = None,
) -> ScheduleFor | None:
    """sweep --schedule: None for the default schedules, else where each pair's schedule comes from
    (calibrated ones kept in ``folder``, so a resumed sweep reuses those its interrupted run found)."""
    if schedule == "default":
        return None
    if schedule != "calibrated":
        return schedules_in(schedule, model, *grid, model_name=which.model)
    if model_entry(which.model).dataset not in TESTBEDS:
        raise ValueError(
            f"--schedule calibrated calibrates on a testbed's val split; for {which.model}, run `mambatr "
            "calibrate --data FOLDER` per method and target, then `sweep --schedule DIR`"
        )
    if inputs.split != "test":
        raise ValueError("--schedule calibrated calibrates on val images: evaluate on --split test")
    images, source = calibration_images(
        which.model, replace(inputs, split="val"), calibration_images_count, model
    )
    return calibrating(
        model,
        images,
        model_name=which.model,
        source=source,
        out_dir=out / "schedules" if run.context.is_main else None,
        progress=run.context.is_main,
        run=folder,
    )


def _sweep_grid(methods: str, reductions: str) -> tuple[list[str], list[float]]:
    """--methods and --reductions as lists, every entry checked: a bad one fails before any work."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    refuse_duplicates(names, "--methods")
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"--methods: unknown method(s) {', '.join(map(repr, unknown)) or 'none given'}; "
            f"available: {', '.join(sorted(METHODS))}"
        )
    targets = []
    for text in (x.strip() for x in reductions.split(",")):
        try:
            value = float(text) if text else None
        except ValueError:
            raise ValueError(f"--reductions: {text!r} is not a number") from None
        if value is not None and not 0.0 < value < MAX_FLOPS_REDUCTION:
            raise ValueError(
                f"--reductions: {text} is not a FLOPs-reduction target in (0, {MAX_FLOPS_REDUCTION})"
            )
        targets += [] if value is None else [value]
    if not targets:
        raise ValueError("--reductions: no target given")
    refuse_duplicates(targets, "--reductions")
    return names, targets


def cmd_sweep(args: argparse.Namespace) -> None:
    which, inputs, run = typed(args)
    methods, reductions = _sweep_grid(args.methods, args.reductions)
    check_writable_dir(args.out, "--out")
    out = Path(args.out)
    run.start()
    model = _load_model(which).to(run.context.device(run.device))
    record = _provenance(args, which, inputs)
    flags = {"--methods": methods, "--reductions": reductions, "--schedule": args.schedule}
    if args.schedule == "calibrated":
        flags["--calibration-images"] = args.calibration_images
    elif args.schedule != "default" and Path(args.schedule).is_dir():
        flags["--schedule (files' sha256)"] = {
            p.name: sha256_of(p) for p in sorted(Path(args.schedule).glob("*.json"))
        }
    identity = {**_run_args(record, inputs, run), **flags}

    def evaluate_model(m: torch.nn.Module) -> dict:
        batches, total = eval_batches(which.model, inputs, m, run.context)
        return evaluate(evaluable(which.model, m), batches, total=total, desc="images", context=run.context)

    main_rank = run.context.is_main
    with RunFolder(
        out, "sweep", identity, overwrite=args.overwrite, provenance=record, writer=main_rank
    ) as folder:
        schedules = _sweep_schedules(
            args.schedule,
            args.calibration_images,
            which,
            inputs,
            run,
            model,
            (methods, reductions),
            out,
            folder,
        )
        with _kept_on_interrupt(folder):
            rows = run_sweep(
                model,
                evaluate_model,
                methods,
                reductions,
                progress=main_rank,
                schedule_for=schedules,
                run=folder,
            )
    if not main_rank:
        return
    paths = write_outputs(rows, out, f"{which.model}: training-free token reduction", record)
    if run.json:
        print(json.dumps(sweep_document(rows, record), indent=2))
    else:
        print(markdown_table(TABLE_HEADERS, table_rows(rows)))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> None:
    which, inputs, run = typed(args)
    reduction = reduction_from(args)
    run.start()
    device = torch.device(run.device)
    # speed does not depend on the weights: --checkpoint, else shipped ones when there are, else random
    pretrained = which.checkpoint is None and model_entry(which.model).weights is not None
    model = create_model(which.model, checkpoint=which.checkpoint, pretrained=pretrained).to(device).eval()
    check_finite_weights(model, which.checkpoint or f"the weights of {which.model}")
    images = torch.randn(model.config.input_shape(inputs.batch_size), device=device)
    impls_used(reset=True)
    result = {
        "model": which.model,
        "device": str(device),
        "batch_size": inputs.batch_size,
        "threads": run.threads,
        "scan_impl": model.scan_impl,
        "dense": throughput(model, images, args.warmup, args.runs, progress=True, desc="dense"),
    }
    if reduction.method is not None:
        report = reduction.apply(model)
        reduced = throughput(model, images, args.warmup, args.runs, progress=True, desc=reduction.method)
        ideal = 1.0 / (1.0 - report.flops_reduction_achieved)
        speedup = reduced["images_per_s"] / result["dense"]["images_per_s"]
        result.update(
            method=reduction.method,
            flops_reduction_achieved=report.flops_reduction_achieved,
            reduced=reduced,
            speedup=speedup,
            ideal_speedup=ideal,
            speedup_vs_ideal=speedup / ideal,
        )
    result["kernels"] = impls_used()  # what "auto" ran (HSA aligned: mamba_ssm dense, triton for gaps)
    if run.json:
        print(json.dumps(result, indent=2))
        return

    def speed(r: dict) -> list[object]:
        return [r["images_per_s"], f"{r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}"]

    rows = [["dense", "-", *speed(result["dense"]), "-", "-", "-", "-"]]
    if reduction.method is not None:
        red, achieved = result["reduced"], 100 * result["flops_reduction_achieved"]
        gains = [result[key] for key in ("speedup", "ideal_speedup", "speedup_vs_ideal")]
        rows.append([reduction.method, achieved, *speed(red), *gains, 100 * red["reduction_share"]])
    ran = ", ".join(f"{op} {'+'.join(impls)}" for op, impls in result["kernels"].items())
    print(
        f"{which.model} on {device}, batch {inputs.batch_size}, {run.threads} threads, scan {model.scan_impl}"
        f" (ran: {ran})"
    )
    print(
        markdown_table(
            ["model", "FLOPs red. %", "images/s", "range", "speed-up", "ideal", "of ideal", "in reduction %"],
            rows,
        )
    )


def cmd_export(args: argparse.Namespace) -> None:
    which, inputs, run = typed(args)
    reduction = reduction_from(args)
    check_writable_file(args.out, "--out")
    if args.onnx_ops != "standard" and args.format != "onnx":
        raise ValueError(f"--onnx-ops {args.onnx_ops} needs --format onnx")
    if args.format == "onnx":
        try:
            deploy.require_onnx()
            deploy.OnnxRunner.require()
        except ImportError as error:
            raise ValueError(str(error)) from None
    if args.onnx_ops == "custom":
        try:
            ort_build.build()  # before any work: a missing compiler fails here, in one line
        except RuntimeError as error:
            raise ValueError(str(error)) from None
    if model_entry(which.model).dataset == "kinetics":
        raise ValueError(f"export compares on single clips; {which.model} evaluates Kinetics videos by views")
    run.start()
    model = _load_model(which)
    summary: dict = {"model": which.model, "checkpoint": which.checkpoint, "format": args.format}
    if args.format == "onnx":
        summary["onnx_ops"] = args.onnx_ops
    if reduction.method is not None:
        summary.update(_reduction_summary(reduction.method, reduction.apply(model)))
    batches, total = eval_batches(which.model, inputs, model, run.context)
    first = next(batches)  # the export's example batch: the first --batch-size images, compared too
    example, batches = first[0], itertools.chain([first], batches)
    start = time.perf_counter()
    deploy.save(model, example, args.format, args.out, onnx_ops=args.onnx_ops)
    summary.update(out=str(args.out), export_s=time.perf_counter() - start)
    exported = deploy.load(args.format, args.out, run.threads)
    summary.update(deploy.agreement(model, exported, batches, total, desc=f"compare {args.format}"))
    summary.update(
        batch_size=len(example),
        images_per_s_eager=deploy.images_per_s(model, example),
        images_per_s_exported=deploy.images_per_s(exported, example),
    )
    if run.json:
        print(json.dumps(summary, indent=2))
        return
    headers = ["model", "method", "format", "images", "top-1 agreement %", "max |Δlogit|"]
    headers += ["images > 1e-4 rel."]
    headers += ["top-1 %", "eager img/s", "exported img/s"]
    row = [which.model, reduction.method or "-", args.format, summary["images"], summary["top1_agreement"]]
    row += [summary["max_abs_logit_diff"], summary["images_beyond_tolerance"], summary["top1_exported"]]
    row += [summary["images_per_s_eager"], summary["images_per_s_exported"]]
    print(markdown_table(headers, [row]))
    note = f"wrote {args.out} ({summary['export_s']:.0f} s); images/s at batch {len(example)}"
    print(note, file=sys.stderr)


def cmd_viz(args: argparse.Namespace) -> None:
    which, reduction = typed(args)[0], reduction_from(args)
    if reduction.method is None:
        raise ValueError("viz needs --method (and --flops-reduction or --ratio), or --recipe")
    check_viz_out(args.out)
    model = _load_model(which)
    if len(model.config.input_shape(1)) != 4:
        raise ValueError(f"viz draws image models; {which.model} takes videos")
    report = reduction.apply(model)
    image, mean, std = viz_image(which.model, args.image, args.data, model)
    achieved = f"{report.flops_reduction_achieved:.1%} FLOPs reduction"
    amount = (
        f"target {report.flops_reduction_target:.0%}, achieved {achieved}"
        if reduction.ratio is None
        else f"ratio {reduction.ratio:g}, {achieved}"
    )
    title = f"{which.model}, {reduction.method} ({amount})"
    groups, importance, traces = visualize(model, image, Path(args.out), mean, std, title=title)
    print(
        f"wrote {groups} (kept / merged groups / pruned per layer after blocks {report.layers}) "
        f"and {importance} (importance); FLOPs reduction {report.flops_reduction_achieved:.1%}"
    )


def cmd_probe(args: argparse.Namespace) -> None:
    """Fragility probe: top-1 after dropping N patch tokens after block k, random vs background-first."""
    which, inputs, run = typed(args)
    dataset = model_entry(which.model).dataset
    if dataset not in TESTBEDS:
        raise ValueError(f"probe runs on the Fashion-MNIST testbeds; {which.model} evaluates on {dataset}")
    after, remove = parse_ints(args.after, "--after"), parse_ints(args.remove, "--remove")
    refuse_duplicates(after, "--after")
    refuse_duplicates(remove, "--remove")
    check_writable_dir(args.out, "--out")
    run.start()
    model = _load_model(which).to(run.device)
    images, labels = TESTBEDS[dataset].load(inputs.split, inputs.data)
    images, labels = images[: inputs.limit], labels[: inputs.limit]
    record = _provenance(args, which, inputs)
    flags = {"--after": after, "--remove": remove, "--seeds": args.seeds}
    identity = {**_run_args(record, inputs, run), **flags}
    with RunFolder(args.out, "probe", identity, overwrite=args.overwrite, provenance=record) as folder:
        with _kept_on_interrupt(folder):
            result = run_probe(
                model,
                images,
                labels,
                TESTBEDS[dataset].to_input,
                after,
                remove,
                args.seeds,
                inputs.batch_size,
                run=folder,
            )
    result = {**record, "seeds": args.seeds, **result}
    path = Path(args.out) / "probe.json"
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    if run.json:
        print(json.dumps(result, indent=2))
    else:
        print(probe_table(which.model, result))
    print(f"wrote {path}", file=sys.stderr)


def _search_folder(
    args: argparse.Namespace, which: ModelArgs, inputs: DataArgs, command: str, goal: dict
) -> tuple[RunFolder, dict]:
    """A long search's run folder beside --out (OUT.<command>/: its finished steps, so a killed run
    continues) and the provenance its result records."""
    record = provenance(
        which.model,
        which.checkpoint,
        data=inputs.data,
        split=inputs.split,
        limit=args.images,
        command=command_line(args.argv),
    )
    manifest = {
        "--model": which.model,
        "--checkpoint": record["weights_sha256"],
        "--data": record["data"],
        "--split": inputs.split,
        "--images": args.images,
        "--batch-size": inputs.batch_size,
        "--step": args.step,
        **goal,
    }
    folder = Path(args.out).with_suffix(f".{command}")
    run = RunFolder(
        folder, command, manifest, overwrite=args.overwrite, provenance=record, what="--out's folder"
    )
    return run, record


def cmd_calibrate(args: argparse.Namespace) -> None:
    """Find a schedule (layers and counts) for a method and FLOPs target on unlabeled images."""
    which, inputs, run = typed(args)
    reduction = reduction_from(args)
    check_writable_file(args.out, "--out")
    goal = {"--method": reduction.method, "--flops-reduction": reduction.flops_reduction}
    folder, record = _search_folder(args, which, inputs, "calibrate", {**goal, "options": reduction.options})
    with folder:
        run.start()
        model = _load_model(which)
        images, source = calibration_images(which.model, inputs, args.images, model)
        with flag_names(("flops_reduction", "step")):
            schedule = calibrate(
                model,
                reduction.method,
                reduction.flops_reduction,
                images,
                step=args.step,
                batch_size=inputs.batch_size,
                store=folder,
                model_name=which.model,
                source=source,
                command=record["command"],
                **reduction.options,
            )
    schedule.calibration["provenance"] = record
    schedule.save(args.out)
    if run.json:
        print(json.dumps(schedule.to_dict(), indent=2))
        return
    rows = [[layer, count] for layer, count in sorted(schedule.removals.items())]
    print(markdown_table(["after block", "tokens removed"], rows))
    print(
        f"\n{reduction.method} on {which.model}: FLOPs reduction {schedule.flops_reduction_achieved:.2%} "
        f"(target {reduction.flops_reduction:.0%}), mean KL to the dense model {schedule.objective:.4g} "
        f"on {source}, "
        f"{schedule.calibration['evaluations']} evaluations in {schedule.calibration['seconds']} s; "
        f"written to {args.out}"
    )


def cmd_tune(args: argparse.Namespace) -> None:
    """The best method, options and schedule for a FLOPs target or an accuracy budget (mambatr.tune)."""
    which, inputs, run = typed(args)
    methods = args.methods.split(",") if args.methods else sorted(METHODS)
    refuse_duplicates(methods, "--methods")
    tune_variants(methods)  # an unknown method fails here, before any work
    goals = {
        "--flops-reduction": args.flops_reduction,
        "--max-kl": args.max_kl,
        "--min-agreement": args.min_agreement,
    }
    given = [name for name, value in goals.items() if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --flops-reduction, --max-kl or --min-agreement")
    with flag_names(("flops_reduction", "max_kl", "min_agreement")):
        budget = None if args.flops_reduction is not None else Budget(args.max_kl, args.min_agreement)
        if args.flops_reduction is not None and not 0.0 < args.flops_reduction < MAX_FLOPS_REDUCTION:
            raise ValueError(
                f"flops_reduction must be in (0, {MAX_FLOPS_REDUCTION}), got {args.flops_reduction}"
            )
    check_writable_file(args.out, "--out")
    folder, record = _search_folder(
        args, which, inputs, "tune", {"--methods": methods, **{name: goals[name] for name in given}}
    )
    command = record["command"]
    with folder:
        run.start()
        model = _load_model(which)
        images, source = calibration_images(which.model, inputs, args.images, model)
        result = tune_search(
            model,
            images,
            flops_reduction=args.flops_reduction,
            budget=budget,
            methods=methods,
            batch_size=inputs.batch_size,
            step=args.step,
            store=folder,
            model_name=which.model,
            source=source,
            command=command,
            progress=True,
        )
    recipe = TunedRecipe(
        schedule=result.schedule,
        goal={"flops_reduction": args.flops_reduction} if budget is None else budget.to_dict(),
        candidates=[candidate.to_dict() for candidate in result.candidates],
        search={
            **record,
            "images": len(images),
            "source": source,
            "methods": methods,
            "seconds": result.seconds,  # this run's; a resumed run reused the rest
            "steps_computed": result.computed,
        },
        command=command,
    )
    recipe.save(args.out)
    if run.json:
        print(json.dumps(recipe.to_dict(), indent=2))
        return
    best = {}
    for candidate in result.candidates:  # each variant's best candidate on the most images it saw
        key = candidate.variant
        if key not in best or (candidate.images, -candidate.kl) > (best[key].images, -best[key].kl):
            best[key] = candidate
    rows = [
        [
            c.variant,
            c.schedule_from,
            c.images,
            f"{c.flops_reduction:.1%}",
            f"{c.kl:.4g}",
            f"{c.agreement:.1%}",
        ]
        for c in sorted(best.values(), key=lambda c: (-c.images, c.kl))
    ]
    print(markdown_table(["variant", "schedule", "images", "FLOPs red.", "KL", "agreement"], rows))
    pick = result.pick
    print(
        f"\npick: {pick.variant} with its schedule {pick.schedule_from}: FLOPs reduction "
        f"{pick.flops_reduction:.2%}, mean KL {pick.kl:.4g}, top-1 agreement {pick.agreement:.2%} with the "
        f"dense model on {source}; {len(result.candidates)} candidates in {result.seconds} s; written to "
        f"{args.out} (use it with eval / bench / viz / export --recipe {args.out})"
    )


def _add_search_args(parser: argparse.ArgumentParser, command: str, out: str) -> None:
    """What calibrate and tune share: the model, the calibration images, --step, and --out beside its
    run folder (OUT.<command>/, where the search's finished steps are kept)."""
    add_model_args(parser)
    add_data_args(
        parser, "Fashion-MNIST directory, or a folder of calibration images", splits=("val", "train")
    )
    add_runtime_args(parser, device=None)
    parser.add_argument("--images", type=positive_int, default=500, help="calibration images (labels unread)")
    parser.add_argument(
        "--step", type=positive_int, help="tokens added per search move (default: about 4 %% of the tokens)"
    )
    parser.add_argument("--out", default=out, help=f"{out} to write (the search's steps: OUT.{command}/)")
    parser.add_argument("--overwrite", action="store_true", help=f"start the search again in OUT.{command}/")


def _add_tune_args(tuning: argparse.ArgumentParser) -> None:
    _add_search_args(tuning, "tune", "recipe.json")
    tuning.add_argument("--methods", help="comma-separated methods to search (default: all)")
    goal = tuning.add_argument_group("goal (exactly one)")
    goal.add_argument("--flops-reduction", type=float, help="FLOPs-reduction target: the least KL there")
    goal.add_argument(
        "--max-kl", type=float, help="accuracy budget: the most FLOPs with mean KL at most this"
    )
    goal.add_argument(
        "--min-agreement",
        type=float,
        help="accuracy budget: the most FLOPs with top-1 agreement at least this",
    )


def _add_train_args(training: argparse.ArgumentParser) -> None:
    add_model_args(training, checkpoint=None)
    add_data_args(
        training, limit="train on the first N images only (smoke tests)", batch_size=Recipe.batch_size
    )
    add_runtime_args(training, device="cpu (default) or cuda", json=False)
    training.add_argument("--out", default="runs/vim_fmnist", help="checkpoints and exported weights go here")
    for name, kind in SCHEDULE_FIELDS.items():
        training.add_argument(flag(name), type=kind, default=getattr(Recipe, name))
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--no-augment", action="store_true", help="no random shift / flip")
    training.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.pth (the same recipe and --limit)"
    )
    training.add_argument(
        "--overwrite", action="store_true", help="start again in an --out that holds a training run"
    )
    training.add_argument(
        "--max-steps", type=positive_int, help="stop (and save) after N steps in this run; resume later"
    )
    recipe = training.add_argument_group(
        "official Vim / DeiT recipe options (default: off; hustvl/Vim main.py values in brackets)"
    )
    for name, (metavar, help_text) in RECIPE_OPTIONS.items():
        recipe.add_argument(
            flag(name), type=float, default=getattr(Recipe, name), metavar=metavar, help=help_text
        )
    recipe.add_argument(
        "--init-from",
        metavar="MODEL_OR_FILE",
        help="start from a model's shipped weights or a checkpoint: position embedding resampled (bicubic), "
        "patch embedding PI-resized (FlexiViT), e.g. --model vim_fmnist_p2 --init-from vim_fmnist",
    )


def _add_probe_args(probe: argparse.ArgumentParser) -> None:
    add_model_args(probe)
    add_data_args(probe, splits=("test", "val"), limit="use only the first N images of the split")
    add_runtime_args(probe)
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
    probe.add_argument(
        "--out",
        default="runs/probe",
        help="directory for probe.json; each finished evaluation is kept there as it completes, and the "
        "same command run again continues an interrupted probe",
    )
    probe.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _add_calibrate_args(calibration: argparse.ArgumentParser) -> None:
    _add_search_args(calibration, "calibrate", "schedule.json")
    group = calibration.add_argument_group("token reduction")
    group.add_argument("--method", required=True, choices=sorted(METHODS), help="reduction method")
    group.add_argument(
        "--flops-reduction",
        type=float,
        required=True,
        help=f"FLOPs-reduction target in (0, {MAX_FLOPS_REDUCTION})",
    )
    add_method_option_args(group)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mambatr", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"mambatr {importlib.metadata.version('mambatr')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    folder_data = "Fashion-MNIST directory, or an ImageNet-style val folder"

    flops = commands.add_parser("flops", help="analytic FLOPs and params of a model, per layer")
    add_model_args(flops, checkpoint=None)
    add_runtime_args(flops, threads=False, device=None)
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
    add_model_args(
        evaluation, "weights file (official .pth or .safetensors); default: the model's shipped weights"
    )
    add_data_args(
        evaluation, folder_data, ("test", "val"), "evaluate only the first N images", workers=True, video=True
    )
    add_runtime_args(evaluation, device="cpu or cuda (under torchrun: each rank's GPU)")
    evaluation.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out image files that cannot be read (listed, and counted in the output) instead of "
        "stopping at the first",
    )
    add_reduction_args(evaluation)
    evaluation.set_defaults(run=cmd_eval)

    training = commands.add_parser("train", help="train a Vim model on Fashion-MNIST (CPU, resumable)")
    _add_train_args(training)
    training.set_defaults(run=cmd_train)

    sweep = commands.add_parser("sweep", help="every method at every FLOPs target: table, CSV, JSON, PNG")
    add_model_args(sweep)
    add_data_args(
        sweep, folder_data, ("test", "val"), "evaluate only the first N images", workers=True, video=True
    )
    add_runtime_args(sweep, device="cpu or cuda (under torchrun: each rank's GPU)")
    sweep.add_argument("--methods", default="mtr,hsa,stm", help="comma-separated methods")
    sweep.add_argument("--reductions", default="0.2,0.3,0.4", help="comma-separated FLOPs targets")
    sweep.add_argument(
        "--out",
        default="runs/sweep",
        help="directory for sweep.csv / .json / .png; each finished row is kept there as it completes, "
        "and the same command run again continues an interrupted sweep",
    )
    sweep.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    sweep.add_argument(
        "--schedule",
        default="default",
        metavar="default|calibrated|DIR",
        help="default: each method's blocks, counts from the FLOPs solver; calibrated: a schedule found "
        "per method and target by `mambatr calibrate` on the first --calibration-images val images "
        "(written to OUT/schedules/); DIR: the schedules in a folder, one per method and target",
    )
    sweep.add_argument(
        "--calibration-images", type=positive_int, default=500, help="val images per calibration (500)"
    )
    sweep.set_defaults(run=cmd_sweep)

    bench = commands.add_parser("bench", help="dense vs reduced throughput, measured in the same run")
    add_model_args(bench, "weights file (default: shipped weights, or random ones)")
    add_data_args(bench, data=None, batch_size=64)
    add_runtime_args(bench)
    bench.add_argument("--warmup", type=non_negative_int, default=3)
    bench.add_argument("--runs", type=positive_int, default=10)
    add_reduction_args(bench)
    bench.set_defaults(run=cmd_bench)

    export = commands.add_parser(
        "export", help="a (reduced) model as a torch.export program (.pt2) or an ONNX file, checked on images"
    )
    add_model_args(export)
    add_data_args(
        export, folder_data, ("test", "val"), "compare on the first N images (default: all)", batch_size=64
    )
    add_runtime_args(export, device=None)
    export.add_argument("--format", choices=deploy.FORMATS, default="onnx", help="pt2 or onnx (default)")
    export.add_argument(
        "--onnx-ops",
        choices=deploy.ONNX_OPS,
        default="standard",
        help="standard (default: runs anywhere) or custom (the scan and conv as mambatr's onnxruntime "
        "custom ops: faster, needs their library, see docs/deploy.md)",
    )
    export.add_argument("--out", required=True, help="file to write (e.g. model.onnx)")
    add_reduction_args(export)
    export.set_defaults(run=cmd_export)

    viz = commands.add_parser("viz", help="draw which patches each reducing layer kept, merged or pruned")
    add_model_args(viz)
    add_data_args(viz, batch_size=None)
    viz.add_argument(
        "--image", default="0", help="Fashion-MNIST test index, or an image file (ImageNet models)"
    )
    viz.add_argument("--out", default="runs/viz.png")
    add_reduction_args(viz)
    viz.set_defaults(run=cmd_viz)

    probe = commands.add_parser(
        "probe", help="top-1 after dropping N patch tokens after block k: random vs background-first"
    )
    _add_probe_args(probe)
    probe.set_defaults(run=cmd_probe)

    calibration = commands.add_parser(
        "calibrate", help="find where and how many tokens to reduce for a method, on unlabeled images"
    )
    _add_calibrate_args(calibration)
    calibration.set_defaults(run=cmd_calibrate)
    tuning = commands.add_parser(
        "tune", help="the best method, options and schedule for a FLOPs target or an accuracy budget"
    )
    _add_tune_args(tuning)
    tuning.set_defaults(run=cmd_tune)

    demo = commands.add_parser("demo", help=f"the shipped {DEMO_MODEL} on Fashion-MNIST: a results table")
    add_data_args(demo, limit=f"test images to use (default {DEMO_LIMIT:,})")
    add_runtime_args(demo, device=None)
    demo.set_defaults(run=cmd_demo, limit=DEMO_LIMIT)

    add_reproduce_command(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    heap.keep_freed_memory()  # large activations reuse freed memory instead of page-faulting (mambatr.heap)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line result files record
    args.context = distributed.SINGLE
    with one_line_errors(args):  # bad input, Ctrl-C, a closed pipe, a full disk: one line (cli_exit)
        if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(f"only {' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun")
        args.context = distributed.init(getattr(args, "device", "cpu"))
        try:
            args.run(args)
        finally:
            distributed.shutdown()
