"""Default against calibrated schedules: two `mambatr sweep` results side by side, as a Markdown table.

    python benchmarks/compare_sweeps.py docs/results/sweep_vim_fmnist_deit/sweep.json \
        docs/results/sweep_vim_fmnist_deit_calibrated/sweep.json

One row per (method, target) found in both files, in the second file's order: each file's top-1,
the gain in points, and the second file's achieved FLOPs reduction. Both sweeps must have run on the
same images (their baseline rows must agree), or the comparison is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambatr.table import markdown_table


def load_rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows):
        raise ValueError(f"{path}: not a `mambatr sweep` JSON (a list of rows with a method)")
    return rows


def baseline_top1(rows: list[dict], path: Path) -> float:
    dense = [r["top1"] for r in rows if r["method"] == "baseline"]
    if not dense:
        raise ValueError(f"{path}: no baseline row")
    return dense[0]


def compare(default: list[dict], calibrated: list[dict]) -> list[list]:
    """[method, target, default top-1, calibrated top-1, gain, achieved FLOPs red. %] per shared pair."""
    by_pair = {(r["method"], r["target"]): r for r in default if r["method"] != "baseline"}
    table = []
    for row in calibrated:
        reference = by_pair.get((row["method"], row["target"]))
        if row["method"] == "baseline" or reference is None:
            continue
        table.append(
            [
                row["method"],
                f"{round(row['target'] * 100)}%",
                f"{reference['top1']:.2f}",
                f"**{row['top1']:.2f}**",
                f"{row['top1'] - reference['top1']:+.2f}",
                f"{row['flops_reduction'] * 100:.2f}",
            ]
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("default", type=Path, help="sweep.json with the default schedules")
    parser.add_argument("calibrated", type=Path, help="sweep.json with the calibrated schedules")
    args = parser.parse_args(argv)
    default, calibrated = load_rows(args.default), load_rows(args.calibrated)
    dense = baseline_top1(default, args.default), baseline_top1(calibrated, args.calibrated)
    if dense[0] != dense[1]:
        parser.error(f"the baselines differ ({dense[0]} vs {dense[1]} %): the sweeps ran on different images")
    rows = compare(default, calibrated)
    if not rows:
        parser.error("no (method, target) pair is in both files")
    headers = ["method", "target", "default top-1 %", "calibrated top-1 %", "gain", "achieved FLOPs red. %"]
    print(f"dense top-1 {dense[0]} %\n\n{markdown_table(headers, rows)}")


if __name__ == "__main__":
    main()
