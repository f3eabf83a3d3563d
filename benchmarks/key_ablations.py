"""Each paper's key ablation on the testbed: HSA with vs without hidden-state alignment, STM with vs
without hidden-state protection, at solved FLOPs targets, on the Fashion-MNIST test split.

    python benchmarks/key_ablations.py [--model vim_fmnist] [--reductions 0.2,0.3,0.4] [--limit N]
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

import mambatr
from mambatr.data import load_fashion_mnist
from mambatr.evaluate import evaluate_tensors
from mambatr.table import markdown_table

VARIANTS = [
    ("hsa", {"align": True}),
    ("hsa", {"align": False}),
    ("stm", {"protect": True}),
    ("stm", {"protect": False}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vim_fmnist")
    parser.add_argument("--reductions", default="0.2,0.3,0.4")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    model = mambatr.create_model(args.model, pretrained=True).eval()
    images, labels = load_fashion_mnist("test")
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    dense = evaluate_tensors(model, images, labels, progress=False)["top1"]
    rows = []
    jobs = [(m, o, float(t)) for m, o in VARIANTS for t in args.reductions.split(",")]
    for method, options, target in tqdm(jobs, desc="ablations"):
        report = mambatr.apply(model, method, target, **options)
        top1 = evaluate_tensors(model, images, labels, progress=False)["top1"]
        mambatr.remove(model)
        rows.append(
            [
                method,
                ", ".join(f"{k}={v}" for k, v in options.items()),
                f"{target:.0%}",
                100 * report.flops_reduction_achieved,
                top1,
                dense - top1,
            ]
        )
    print(f"{args.model}, {len(images):,} Fashion-MNIST test images, dense top-1 {dense:.2f} %\n")
    print(markdown_table(["method", "option", "target", "FLOPs red. %", "top-1 %", "drop"], rows))


if __name__ == "__main__":
    main()
