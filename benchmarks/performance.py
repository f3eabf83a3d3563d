"""Measured speed-ups next to their ideal 1 / (1 - achieved FLOPs reduction), for every method and
target, dense and reduced timed in the same run. Prints a Markdown table (``--json``: rows).

    python benchmarks/performance.py --model vim_fmnist --batch-sizes 1,64 --reductions 0.2,0.3,0.4
    python benchmarks/performance.py --model vim_small --methods mtr --reductions 0.3 --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm import tqdm

import mambatr
from mambatr.benchmark import throughput
from mambatr.models import model_entry
from mambatr.ops import last_impl
from mambatr.table import markdown_table

ALL_METHODS = "mtr,hsa,stm,utr,evit,pumer,tome"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vim_fmnist")
    parser.add_argument("--methods", default=ALL_METHODS)
    parser.add_argument("--reductions", default="0.2,0.3,0.4")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = mambatr.create_model(args.model, pretrained=model_entry(args.model).weights is not None)
    model = model.to(device).eval()
    config = model.config
    jobs = [
        (b, m, float(f))
        for b in args.batch_sizes.split(",")
        for m in args.methods.split(",")
        for f in args.reductions.split(",")
    ]
    rows = []
    for batch, method, target in tqdm(jobs, desc="bench"):
        images = torch.randn(int(batch), config.in_chans, config.img_size, config.img_size, device=device)
        mambatr.remove(model)  # dense measured right before each reduced run: both see the same machine state
        dense = throughput(model, images, args.warmup, args.runs)["images_per_s"]
        report = mambatr.apply(model, method, target)
        reduced = throughput(model, images, args.warmup, args.runs)
        mambatr.remove(model)
        ideal = 1 / (1 - report.flops_reduction_achieved)
        speedup = reduced["images_per_s"] / dense
        rows.append(
            {
                "batch_size": int(batch),
                "method": method,
                "target": target,
                "flops_reduction": report.flops_reduction_achieved,
                "dense_images_per_s": dense,
                "images_per_s": reduced["images_per_s"],
                "speedup": speedup,
                "ideal": ideal,
                "of_ideal": speedup / ideal,
                "reduction_share": reduced["reduction_share"],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{args.model} on {device}, {args.threads} threads, {args.runs} timed runs (median), "
        f"kernels: {last_impl()}\n"
    )
    print(
        markdown_table(
            [
                "batch",
                "method",
                "target",
                "FLOPs red. %",
                "dense img/s",
                "reduced img/s",
                "speed-up",
                "ideal",
                "of ideal",
                "in reduction %",
            ],
            [
                [
                    r["batch_size"],
                    r["method"],
                    f"{r['target']:.0%}",
                    100 * r["flops_reduction"],
                    r["dense_images_per_s"],
                    r["images_per_s"],
                    r["speedup"],
                    r["ideal"],
                    r["of_ideal"],
                    100 * r["reduction_share"],
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
