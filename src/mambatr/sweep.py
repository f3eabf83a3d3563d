"""Evaluate every (method, FLOPs target) pair on one model: rows, CSV / JSON files and a PNG plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from mambatr.flops import count_flops
from mambatr.outputs import atomic_path, write_text_atomic
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
    """Baseline row, then one row per (method, target); ``evaluate(model)`` returns top1 and images/s.

    Every pair is solved before the first evaluation, so an unknown method or an unreachable target
    fails at once rather than after the work before it; the progress bar counts the baseline too.
    The model is dense again afterwards, also when an evaluation fails.
    """
    pairs = [(method, target) for method in methods for target in reductions]
    for method, target in pairs:
        apply(model, method, target, **(options or {}).get(method, {}))
        remove(model)
    bar = tqdm(total=1 + len(pairs), desc="sweep", unit="run", disable=not progress)
    with _dense_afterwards(model), bar:
        bar.set_postfix_str("baseline")
        dense = evaluate(model)
        bar.update()
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
        for method, target in pairs:
            bar.set_postfix_str(f"{method} {target:.0%}")
            report = apply(model, method, target, **(options or {}).get(method, {}))
            result = evaluate(model)
            remove(model)
            bar.update()
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


@contextmanager
def _dense_afterwards(model: torch.nn.Module) -> Iterator[None]:
    """Remove any reduction on exit, so an error mid-sweep never leaves the model patched."""
    try:
        yield
    finally:
        remove(model)


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
    with atomic_path(paths[0]) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(paths[1], json.dumps(rows, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    baseline = rows[0]["top1"]
    axis.axhline(baseline, color="gray", linestyle="--", label=f"dense ({baseline:.2f} %)")
    for method in dict.fromkeys(r["method"] for r in rows[1:]):
        points = sorted((100 * r["flops_reduction"], r["top1"]) for r in rows if r["method"] == method)
        axis.plot(*zip(*points, strict=True), marker="o", label=method)
    axis.set_xlim(*x_range([100 * r["flops_reduction"] for r in rows[1:]]))
    axis.set_xlabel("achieved FLOPs reduction (%)")
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(paths[2]) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
    return paths


def x_range(reductions: Sequence[float], min_span: float = 10.0) -> tuple[float, float]:
    """Plot limits (in %) around the achieved reductions, at least ``min_span`` points wide and never
    below 0: a single target would otherwise get matplotlib's hair-thin range around one value."""
    low, high = min(reductions, default=0.0), max(reductions, default=0.0)
    pad = max(min_span - (high - low), 0.0) / 2 + 0.05 * (high - low)
    low = max(low - pad, 0.0)
    return low, max(high + pad, low + min_span)
