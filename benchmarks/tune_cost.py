"""What a whole ``tune`` costs next to one ``calibrate``, measured in one run on the same images.

    python benchmarks/tune_cost.py [--model vim_fmnist_p2] [--method mtr] [--flops-reduction 0.3]
        [--images 500] [--threads 1] [--json]

The issue's yardstick: a whole search at one target within about 3x one calibration (``--method``'s,
with the prefix cache, as ``mambatr calibrate`` runs it). Both run in this process on the same val
images, the calibration first. Prints each one's wall-clock and CPU seconds and its block work
(image x token x block, counted by a hook on every block: proportional to the blocks' FLOPs and
independent of what else the machine runs), and the ratios tune / calibration. CPU seconds and block
work are the figures to read on a shared machine; wall-clock only on an idle one.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from search_workload import BlockWork, shipped_model_and_val_images

import mambatr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--method", default="mtr", help="the calibration to compare with")
    parser.add_argument("--flops-reduction", type=float, default=0.3)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, images = shipped_model_and_val_images(args.model, args.images)
    work = BlockWork(model)
    searches = {
        "calibrate": lambda: mambatr.calibrate(
            model, args.method, args.flops_reduction, images, progress=True
        ),
        "tune": lambda: mambatr.tune(model, images, flops_reduction=args.flops_reduction, progress=True),
    }
    runs = {}
    for name, search in searches.items():
        start, cpu = time.perf_counter(), time.process_time()
        work.reset()
        found = search()
        runs[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "token_blocks": work.count,
        }
        if name == "tune":
            runs[name]["pick"] = found.schedule.method
            runs[name]["candidates_scored"] = len(found.candidates)
    ratio = {
        key: round(runs["tune"][key] / runs["calibrate"][key], 2)
        for key in runs["tune"]
        if key in runs["calibrate"]
    }
    result = {
        "model": args.model,
        "method": args.method,
        "flops_reduction": args.flops_reduction,
        "images": args.images,
        "threads": args.threads,
        "runs": runs,
        "tune_over_calibrate": ratio,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, run in runs.items():
        print(
            f"{name:>9}: {run['seconds']:8.1f} s ({run['cpu_seconds']} s CPU), "
            f"{run['token_blocks']:,} image-token-blocks"
        )
    print(
        f"tune / calibrate: {ratio['seconds']}x wall, {ratio['cpu_seconds']}x CPU, "
        f"{ratio['token_blocks']}x block work (goal: about 3x)"
    )


if __name__ == "__main__":
    main()
