"""Compare two training runs of the same recipe epoch by epoch: does a re-run reproduce a shipped model?

Each run is either an exported ``<model>.json`` (written by ``mambatr train`` beside the safetensors)
or a ``last.pth`` checkpoint of an unfinished run; only its recipe and per-epoch history are read.

    python benchmarks/compare_training.py src/mambatr/weights/vim_fmnist.json \\
        .train/vim_cpu_repro/vim_fmnist.json --names "H100 (shipped)" "CPU re-run"

Prints the recipe fields that differ, a per-epoch table of validation top-1 and training loss, and
the largest and final validation gaps. Test-split accuracy is ``mambatr eval``'s job, not this one's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mambatr.table import markdown_table


def load_run(path: Path) -> dict:
    """The recipe and history of a run, from its exported JSON or its training checkpoint."""
    if path.suffix == ".json":
        info = json.loads(path.read_text())
    elif path.suffix in (".pth", ".pt"):
        info = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path}: expected an exported <model>.json or a last.pth checkpoint")
    missing = {"recipe", "history"} - set(info)
    if missing:
        raise ValueError(f"{path}: not a mambatr training record (missing {sorted(missing)})")
    return {"recipe": info["recipe"], "history": info["history"]}


def compare(a: dict, b: dict, names: tuple[str, str]) -> str:
    """Markdown report of the recipe differences and the per-epoch gaps (b minus a)."""
    ra, rb = a["recipe"], b["recipe"]
    diffs = [
        f"{k} {ra.get(k)!r} -> {rb.get(k)!r}" for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)
    ]
    lines = ["Recipe fields that differ: " + (", ".join(diffs) or "none")]
    by_epoch_b = {h["epoch"]: h for h in b["history"]}
    rows, gaps = [], []
    for ha in a["history"]:
        hb = by_epoch_b.get(ha["epoch"])
        if hb is None:
            continue
        gap = hb["val_top1"] - ha["val_top1"]
        gaps.append((ha["epoch"], gap))
        loss_change = 100 * (hb["train_loss"] / ha["train_loss"] - 1)
        val = f"{ha['val_top1']:.2f}", f"{hb['val_top1']:.2f}"
        loss = f"{ha['train_loss']:.4f}", f"{hb['train_loss']:.4f}"
        rows.append([ha["epoch"], *val, f"{gap:+.2f}", *loss, f"{loss_change:+.1f} %"])
    if not rows:
        raise ValueError("the two runs share no epoch")
    headers = ["epoch", *(f"val top-1, {n}" for n in names), "gap (points)"]
    headers += [*(f"train loss, {n}" for n in names), "loss change"]
    lines += ["", markdown_table(headers, rows), ""]
    worst = max(gaps, key=lambda eg: abs(eg[1]))
    last = gaps[-1]
    lines.append(
        f"Epochs compared: {len(gaps)}; largest |val gap| {abs(worst[1]):.2f} points (epoch {worst[0]}); "
        f"last common epoch {last[0]}: gap {last[1]:+.2f} points."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path, help="reference run (.json or last.pth)")
    parser.add_argument("run_b", type=Path, help="re-run to compare (.json or last.pth)")
    parser.add_argument("--names", nargs=2, default=("run A", "run B"), help="column labels for the two runs")
    args = parser.parse_args()
    print(compare(load_run(args.run_a), load_run(args.run_b), tuple(args.names)))


if __name__ == "__main__":
    main()
