"""Evaluate every (method, FLOPs target) pair on one model: rows, CSV / JSON files and a PNG plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mambatr.reduction import apply, remove

Evaluate = Callable[[torch.nn.Module], dict]
COLUMNS = ["method", "target", "flops_reduction", "token_reduction", "gflops", "top1", "drop", "images_per_s"]


def run_sweep(
    model: torch.nn.Module,
    evaluate: Evaluate,
    methods: Sequence[str],
    reductions: Sequence[float],
    options: dict[str, dict] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Baseline row, then one row per (method, target); ``evaluate(model)`` returns top1 and images/s."""
    from mambatr.flops import count_flops

    dense = evaluate(model)
    rows = [
        {
            "method": "baseline",
            "target": 0.0,
            "flops_reduction": 0.0,
            "token_reduction": 0.0,
            "gflops": count_flops(model.config).gflops,
            "top1": dense["top1"],
            "drop": 0.0,
            "images_per_s": dense["images_per_s"],
            "removals": {},
        }
    ]
    pairs = [(method, target) for method in methods for target in reductions]
    for method, target in tqdm(pairs, desc="sweep", disable=not progress):
        report = apply(model, method, target, **(options or {}).get(method, {}))
        result = evaluate(model)
        remove(model)
        rows.append(
            {
                "method": method,
                "target": target,
                "flops_reduction": report.flops_reduction_achieved,
                "token_reduction": report.token_reduction,
                "gflops": report.gflops,
                "top1": result["top1"],
                "drop": dense["top1"] - result["top1"],
                "images_per_s": result["images_per_s"],
                "removals": report.removals,
            }
        )
    return rows


def table_rows(rows: Iterable[dict]) -> list[list[object]]:
    return [
        [
            r["method"],
            f"{r['target']:.0%}",
            100 * r["flops_reduction"],
            100 * r["token_reduction"],
            r["gflops"],
            r["top1"],
            r["drop"],
            r["images_per_s"],
        ]
        for r in rows
    ]


TABLE_HEADERS = ["method", "target", "FLOPs red. %", "token red. %", "GFLOPs", "top-1 %", "drop", "images/s"]


def write_outputs(rows: list[dict], out_dir: Path, title: str) -> list[Path]:
    """sweep.csv, sweep.json and sweep.png (top-1 vs achieved FLOPs reduction) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "sweep.csv", out_dir / "sweep.json", out_dir / "sweep.png"]
    with paths[0].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    paths[1].write_text(json.dumps(rows, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    baseline = rows[0]["top1"]
    axis.axhline(baseline, color="gray", linestyle="--", label=f"dense ({baseline:.2f} %)")
    for method in dict.fromkeys(r["method"] for r in rows[1:]):
        points = sorted((100 * r["flops_reduction"], r["top1"]) for r in rows if r["method"] == method)
        axis.plot(*zip(*points, strict=True), marker="o", label=method)
    axis.set_xlabel("achieved FLOPs reduction (%)")
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    return paths
