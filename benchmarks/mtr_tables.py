"""MTR on the testbed: 20/30/40 % FLOPs reduction, the indicator ablation (MTR paper Table 3) and the
strategy ablation (Table 4), on the Fashion-MNIST test split. Prints Markdown tables.

    python benchmarks/mtr_tables.py [--model vim_fmnist] [--checkpoint F] [--limit N] \
        [--ablation-target 0.3] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm import tqdm

import mambatr
from mambatr.data import load_fashion_mnist
from mambatr.evaluate import evaluate_tensors
from mambatr.reduction.mtr import INDICATOR_HELP, STRATEGY_HELP
from mambatr.table import markdown_table


def run(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target: float | None,
    **options: object,
) -> dict:
    report = mambatr.apply(model, "mtr", target, **options) if target else None
    result = evaluate_tensors(model, images, labels, batch_size=256, progress=False)
    mambatr.remove(model)
    achieved = report.flops_reduction_achieved if report else 0.0
    return {
        "target": target or 0.0,
        "achieved": achieved,
        "top1": result["top1"],
        "options": options,
        "removals": report.removals if report else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vim_fmnist")
    parser.add_argument("--checkpoint", help="weights file (default: the model's shipped weights)")
    parser.add_argument("--limit", type=int, help="first N test images (default: all 10,000)")
    parser.add_argument("--ablation-target", type=float, default=0.3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = mambatr.create_model(
        args.model, checkpoint=args.checkpoint, pretrained=args.checkpoint is None
    ).eval()
    images, labels = load_fashion_mnist("test")
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    jobs = [("main", None, {})] + [("main", t, {}) for t in (0.2, 0.3, 0.4)]
    jobs += [("main", t, {"weights": "size"}) for t in (0.2, 0.3, 0.4)]
    jobs += [("indicator", args.ablation_target, {"indicator": i}) for i in INDICATOR_HELP]
    jobs += [("strategy", args.ablation_target, {"strategy": s}) for s in STRATEGY_HELP]
    results = [
        (table, run(model, images, labels, target, **options))
        for table, target, options in tqdm(jobs, desc="mtr tables")
    ]
    dense = results[0][1]["top1"]
    if args.json:
        print(json.dumps([{"table": t, **r, "drop": dense - r["top1"]} for t, r in results], indent=2))
        return
    print(f"{args.model}, {len(images):,} Fashion-MNIST test images, dense top-1 {dense:.2f} %\n")
    main_rows = [
        [
            r["options"].get("weights", "mean"),
            f"{r['target']:.0%}",
            100 * r["achieved"],
            r["top1"],
            dense - r["top1"],
            str(r["removals"]),
        ]
        for t, r in results
        if t == "main" and r["target"]
    ]
    print(
        markdown_table(
            ["merge", "target", "achieved FLOPs red. %", "top-1 %", "drop", "tokens removed after block"],
            main_rows,
        )
    )
    for table, column in (("indicator", "indicator"), ("strategy", "strategy")):
        rows = [
            [r["options"][column], 100 * r["achieved"], r["top1"], dense - r["top1"]]
            for t, r in results
            if t == table
        ]
        print(f"\n{column} ablation at {args.ablation_target:.0%} FLOPs reduction\n")
        print(markdown_table([column, "achieved FLOPs red. %", "top-1 %", "drop"], rows))


if __name__ == "__main__":
    main()
