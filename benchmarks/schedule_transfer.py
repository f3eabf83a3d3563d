"""Transfer of calibrated schedules between methods: each schedule's blocks and token counts applied
with every method (the method still chooses which tokens), test top-1 as a matrix. The diagonal is
each method with its own schedule; the first row is each method's default schedule at the same target.

    python benchmarks/schedule_transfer.py docs/results/calibration/vim_fmnist_*_30.json \
        [--model vim_fmnist] [--limit N] [--threads T] [--json]

A schedule keeps its own method's options only on the diagonal; elsewhere the method's defaults apply.
The achieved FLOPs reduction differs a little between methods for the same counts (each method's own
overhead); the JSON output records it per cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from tqdm import tqdm

import mambatr
from mambatr.data import load_fashion_mnist
from mambatr.evaluate import evaluate_tensors
from mambatr.reduction.schedule import Schedule
from mambatr.table import markdown_table


def transferred(schedule: Schedule, method: str) -> Schedule:
    """The same blocks and counts for ``method`` (its default options unless it is the schedule's own)."""
    if method == schedule.method:
        return schedule
    return dataclasses.replace(schedule, method=method, options={})


def cell(model: torch.nn.Module, images, labels, method: str, how: Schedule | float) -> dict:
    """Top-1 with ``method`` reducing as ``how`` says (a schedule, or a FLOPs target for the default
    schedule); ``top1`` None with the reason when the method cannot remove those counts (e.g. MTR's
    keep and source groups cap a layer at under half of its tokens)."""
    try:
        if isinstance(how, Schedule):
            report = mambatr.apply(model, method, schedule=how)
        else:
            report = mambatr.apply(model, method, how)
    except ValueError as error:
        return {"top1": None, "error": str(error)}
    try:
        top1 = evaluate_tensors(model, images, labels, batch_size=256, progress=False)["top1"]
    finally:
        mambatr.remove(model)
    return {"top1": top1, "flops_reduction": report.flops_reduction_achieved, "removals": report.removals}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("schedules", nargs="+", help="schedule JSON files (mambatr calibrate --out)")
    parser.add_argument("--model", default="vim_fmnist")
    parser.add_argument("--limit", type=int, help="first N test images (default: all 10,000)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schedules = [Schedule.load(path) for path in args.schedules]
    targets = {s.flops_reduction_target for s in schedules}
    if len(targets) != 1:
        parser.error(f"the schedules must share one FLOPs target, got {sorted(targets)}")
    target = targets.pop()
    model = mambatr.create_model(args.model, pretrained=True).eval()
    for schedule in schedules:
        schedule.check_fits(model.config, args.model)
    images, labels = load_fashion_mnist("test")
    images, labels = images[: args.limit], labels[: args.limit]
    methods = [s.method for s in schedules]
    sources: list[tuple[str, Schedule | None]] = [("default", None)] + [(s.method, s) for s in schedules]
    jobs = [(source, schedule, method) for source, schedule in sources for method in methods]
    results = {}
    for source, schedule, method in tqdm(jobs, desc="transfer", unit="eval"):
        how = target if schedule is None else transferred(schedule, method)
        results[source, method] = cell(model, images, labels, method, how)
    dense = evaluate_tensors(model, images, labels, batch_size=256, progress=False)["top1"]
    if args.json:
        cells = [{"schedule": s, "method": m, **r} for (s, m), r in results.items()]
        print(json.dumps({"model": args.model, "images": len(images), "dense_top1": dense, "cells": cells}))
        return
    print(
        f"{args.model}, {len(images):,} test images, dense top-1 {dense:.2f} %, target {target:.0%}: "
        "rows = whose schedule (blocks and counts), columns = the method applying it\n"
    )
    rows = [[source] + [_shown(results[source, m]) for m in methods] for source, _ in sources]
    print(markdown_table(["schedule \\ method"] + methods, rows))
    errors = sorted({r["error"] for r in results.values() if r["top1"] is None})
    if errors:
        print("\nn/a: the method cannot apply those counts (" + "; ".join(errors) + ")")


def _shown(result: dict) -> str:
    return "n/a" if result["top1"] is None else f"{result['top1']:.2f}"


if __name__ == "__main__":
    main()
