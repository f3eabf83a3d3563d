"""Two `mambatr sweep` results side by side, as a Markdown table: default against calibrated
schedules on one model (top-1), or one sweep on two models (points lost to each model's dense top-1).

    python benchmarks/compare_sweeps.py docs/results/sweep_vim_fmnist_deit/sweep.json \
        docs/results/sweep_vim_fmnist_deit_calibrated/sweep.json
    python benchmarks/compare_sweeps.py docs/results/sweep_vim_fmnist/sweep.json \
        docs/results/sweep_vim_fmnist_deit/sweep.json --metric drop --labels vim_fmnist,vim_fmnist_deit

One row per (method, target) found in both files, in the second file's order: each file's figure,
the second minus the first in points (for drops: points the second keeps that the first loses), and
the second file's achieved FLOPs reduction. `--metric top1` needs both sweeps to have run on the same
model and images (equal baseline rows), or the comparison is refused; `--metric drop` compares
models with different dense accuracies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambatr.table import markdown_table


def load_rows(path: Path) -> list[dict]:
    """A sweep.json's rows: the document ``mambatr sweep`` writes (provenance and rows) or, as in older
    runs, the bare list of rows."""
    rows = json.loads(path.read_text())
    rows = rows.get("rows") if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows):
        raise ValueError(f"{path}: not a `mambatr sweep` JSON (a list of rows with a method)")
    return rows


def baseline_top1(rows: list[dict], path: Path) -> float:
    dense = [r["top1"] for r in rows if r["method"] == "baseline"]
    if not dense:
        raise ValueError(f"{path}: no baseline row")
    return dense[0]


def compare(first: list[dict], second: list[dict], metric: str = "top1") -> list[list]:
    """[method, target, first, second, change, second's achieved FLOPs red. %] per shared pair.

    ``metric`` "top1" reports top-1 (change = second − first), "drop" the points lost to the dense
    model (change = first − second: how many points the second keeps that the first loses)."""
    by_pair = {(r["method"], r["target"]): r for r in first if r["method"] != "baseline"}
    sign = 1 if metric == "top1" else -1
    table = []
    for row in second:
        reference = by_pair.get((row["method"], row["target"]))
        if row["method"] == "baseline" or reference is None:
            continue
        table.append(
            [
                row["method"],
                f"{round(row['target'] * 100)}%",
                f"{reference[metric]:.2f}",
                f"**{row[metric]:.2f}**",
                f"{sign * (row[metric] - reference[metric]):+.2f}",
                f"{row['flops_reduction'] * 100:.2f}",
            ]
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("first", type=Path, help="sweep.json, e.g. with the default schedules")
    parser.add_argument("second", type=Path, help="sweep.json, e.g. with the calibrated schedules")
    parser.add_argument("--metric", choices=("top1", "drop"), default="top1")
    parser.add_argument("--labels", default="default,calibrated", help="the two column names")
    args = parser.parse_args(argv)
    labels = args.labels.split(",")
    if len(labels) != 2:
        parser.error(f"--labels: expected two comma-separated names, got {args.labels!r}")
    first, second = load_rows(args.first), load_rows(args.second)
    dense = baseline_top1(first, args.first), baseline_top1(second, args.second)
    if args.metric == "top1" and dense[0] != dense[1]:
        parser.error(
            f"the baselines differ ({dense[0]} vs {dense[1]} %): the sweeps ran on different models or "
            "images; compare them with --metric drop"
        )
    rows = compare(first, second, args.metric)
    if not rows:
        parser.error("no (method, target) pair is in both files")
    unit = "top-1 %" if args.metric == "top1" else "drop (points)"
    change = "gain" if args.metric == "top1" else "points kept"
    headers = [
        "method",
        "target",
        f"{labels[0]} {unit}",
        f"{labels[1]} {unit}",
        change,
        "achieved FLOPs red. %",
    ]
    print(
        f"dense top-1: {labels[0]} {dense[0]} %, {labels[1]} {dense[1]} %\n\n{markdown_table(headers, rows)}"
    )


if __name__ == "__main__":
    main()
