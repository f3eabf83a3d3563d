"""Calibration with and without the prefix cache, in one run: the same schedule, and how much faster.

    python benchmarks/calibration_speed.py [--model vim_fmnist_p2] [--method mtr] [--flops-reduction 0.3]
        [--images 500] [--threads 1] [--json]

Both searches run on the same val images in this process (the cached one first, so a warm-up favours
the reference). Prints each one's seconds, blocks run, the ratio, and whether the schedules and their
objectives are identical.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mambatr
from mambatr.data.tasks import TESTBEDS
from mambatr.models import model_entry
from mambatr.reduction.prefix_cache import DEFAULT_CACHE_BYTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--method", default="mtr")
    parser.add_argument("--flops-reduction", type=float, default=0.3)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mambatr.create_model(args.model, pretrained=True).eval()
    testbed = TESTBEDS[model_entry(args.model).dataset]
    images = testbed.to_input(testbed.load("val")[0][: args.images])
    runs = {}
    for name, cache_bytes in (("cached", DEFAULT_CACHE_BYTES), ("full", None)):
        start = time.perf_counter()
        schedule = mambatr.calibrate(
            model, args.method, args.flops_reduction, images, cache_bytes=cache_bytes, progress=True
        )
        runs[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "removals": schedule.removals,
            "objective": schedule.objective,
            "evaluations": schedule.calibration["evaluations"],
        }
    result = {
        "model": args.model,
        "method": args.method,
        "flops_reduction": args.flops_reduction,
        "images": args.images,
        "threads": args.threads,
        "runs": runs,
        "speedup": round(runs["full"]["seconds"] / runs["cached"]["seconds"], 2),
        "identical": runs["full"]["removals"] == runs["cached"]["removals"]
        and runs["full"]["objective"] == runs["cached"]["objective"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, run in runs.items():
        print(f"{name:>6}: {run['seconds']:8.1f} s, {run['evaluations']} trials, removals {run['removals']}")
    print(f"speed-up {result['speedup']}x; identical schedule and objective: {result['identical']}")


if __name__ == "__main__":
    main()
