"""Calibration with and without the prefix cache, in one run: the same schedule, and how much faster.

    python benchmarks/calibration_speed.py [--model vim_fmnist_p2] [--method mtr] [--flops-reduction 0.3]
        [--images 500] [--threads 1] [--json]

Both searches run on the same val images in this process (the cached one first, so a warm-up favours
the reference). Prints, for each, the wall-clock and CPU seconds and the work its blocks did (image x
token x block, counted by a hook on every block: proportional to the blocks' FLOPs, and independent
of what else the machine runs), their ratios, and whether the schedules and objectives are identical.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from search_workload import BlockWork, shipped_model_and_val_images

import mambatr
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
    model, images = shipped_model_and_val_images(args.model, args.images)
    work = BlockWork(model)
    runs = {}
    for name, cache_bytes in (("cached", DEFAULT_CACHE_BYTES), ("full", None)):
        start, cpu = time.perf_counter(), time.process_time()
        work.reset()
        schedule = mambatr.calibrate(
            model, args.method, args.flops_reduction, images, cache_bytes=cache_bytes, progress=True
        )
        runs[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "token_blocks": work.count,
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
        "cpu_speedup": round(runs["full"]["cpu_seconds"] / runs["cached"]["cpu_seconds"], 2),
        "work_ratio": round(runs["full"]["token_blocks"] / runs["cached"]["token_blocks"], 2),
        "identical": runs["full"]["removals"] == runs["cached"]["removals"]
        and runs["full"]["objective"] == runs["cached"]["objective"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, run in runs.items():
        print(
            f"{name:>6}: {run['seconds']:8.1f} s ({run['cpu_seconds']} s CPU), {run['token_blocks']:,} "
            f"image-token-blocks, {run['evaluations']} trials, removals {run['removals']}"
        )
    print(
        f"speed-up {result['speedup']}x wall, {result['cpu_speedup']}x CPU, {result['work_ratio']}x less "
        f"block work; identical schedule and objective: {result['identical']}"
    )


if __name__ == "__main__":
    main()
