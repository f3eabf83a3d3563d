"""The label-free objective of ``calibrate`` and ``tune`` for chosen candidates, on the same val images.

    python benchmarks/objective.py --model plainmamba_fmnist --flops-reduction 0.3 --methods utr,mtr \
        [--recipe r.json ...] [--images 500] [--threads 1] [--json]

Scores each method with its default schedule at ``--flops-reduction`` and each ``--recipe`` (or schedule
file) as the search does: mean KL(dense || reduced) and top-1 agreement with the dense model on the first
``--images`` val images. For checking a search's pick against a candidate it dropped early, on all of
its images (docs/results.md, the ``mambatr tune`` section).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from search_workload import shipped_model_and_val_images

import mambatr
from mambatr.reduction.calibration import agreement, batched_logits, mean_kl
from mambatr.table import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--flops-reduction", type=float, default=0.3)
    parser.add_argument("--methods", default="", help="comma-separated methods, default schedules")
    parser.add_argument("--recipe", action="append", default=[], help="a recipe or schedule file")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, images = shipped_model_and_val_images(args.model, args.images)
    candidates = [
        (m, {"method": m, "flops_reduction": args.flops_reduction}) for m in args.methods.split(",") if m
    ]
    candidates += [(path, {"recipe": path}) for path in args.recipe]
    rows = []
    with torch.inference_mode():
        dense = F.log_softmax(batched_logits(model, images, 250), dim=-1)
        for name, how in candidates:
            mambatr.apply(model, **how)
            logits = batched_logits(model, images, 250)
            mambatr.remove(model)
            rows.append([name, round(mean_kl(dense, logits), 4), round(100 * agreement(dense, logits), 1)])
    if args.json:
        keys = ("candidate", "kl", "agreement_percent")
        rows = [dict(zip(keys, row, strict=True)) for row in rows]
        print(json.dumps({"model": args.model, "images": args.images, "rows": rows}, indent=2))
    else:
        print(markdown_table(["candidate", "mean KL", "top-1 agreement %"], rows))


if __name__ == "__main__":
    main()
