"""Bar chart of calibrated schedules: tokens removed after each block, one bar group per schedule;
also prints each schedule's removals, achieved FLOPs reduction, KL and cost as a Markdown table.

python benchmarks/schedule_chart.py docs/results/calibration/*.json --out schedules.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mambatr.reduction.schedule import Schedule  # noqa: E402
from mambatr.table import markdown_table  # noqa: E402


def draw(schedules: list[Schedule], out: Path) -> None:
    depth = max(s.architecture["depth"] for s in schedules)
    width = 0.8 / len(schedules)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, schedule in enumerate(schedules):
        counts = [schedule.removals.get(block, 0) for block in range(depth - 1)]
        label = (
            f"{schedule.method} {schedule.flops_reduction_target:.0%} "
            f"(achieved {schedule.flops_reduction_achieved:.1%}, KL {schedule.objective:.3f})"
        )
        ax.bar(
            [b + (i - (len(schedules) - 1) / 2) * width for b in range(depth - 1)], counts, width, label=label
        )
    ax.set_xticks(range(depth - 1))
    ax.set_xlabel("after block")
    ax.set_ylabel("tokens removed")
    ax.set_title(
        f"calibrated schedules, {schedules[0].model} ({schedules[0].architecture['seq_len']} tokens)"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def summary(schedules: list[Schedule]) -> str:
    """One row per schedule: method, target, removals (block: tokens), achieved FLOPs, KL, cost."""
    headers = ["method", "target", "tokens removed after block", "achieved FLOPs red. %", "KL on calibration"]
    headers += ["evaluations", "seconds"]
    rows = [
        [
            s.method,
            f"{s.flops_reduction_target:.0%}",
            ", ".join(f"{block}: {count}" for block, count in sorted(s.removals.items())),
            f"{s.flops_reduction_achieved * 100:.2f}",
            f"{s.objective:.3f}",
            s.calibration.get("evaluations", ""),
            s.calibration.get("seconds", ""),
        ]
        for s in schedules
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("schedules", nargs="+", help="schedule JSON files from mambatr calibrate")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    schedules = [Schedule.load(path) for path in args.schedules]
    draw(schedules, Path(args.out))
    print(summary(schedules))


if __name__ == "__main__":
    main()
