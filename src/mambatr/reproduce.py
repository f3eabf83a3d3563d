"""``mambatr reproduce``: a paper's main table re-run with this library, each cell beside the paper's figure.

The papers' figures live in ``papers/paper_tables.json`` with their source (paper, table, row). Each
paper model maps to the registered model that runs its rows: on an ImageNet val folder the official
model (``vim_small`` for ViM-S, weights by ``pretrained=True``), on ``fmnist`` the Fashion-MNIST testbed
of its family (``vim_fmnist_p2`` for every ViM row: the 196-token grid of ImageNet Vim). The cells are
evaluated by the sweep machinery (:func:`mambatr.sweep.run_sweep`), one resumable run folder per model
(``OUT/<paper>/<model>``, :class:`mambatr.runs.RunFolder`): a killed run continues where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from mambatr.cli_args import DataArgs
from mambatr.cli_inputs import eval_batches, evaluable
from mambatr.distributed import SINGLE
from mambatr.evaluate import evaluate
from mambatr.models import create_model, has_pretrained, model_entry
from mambatr.models.hub import weights_elsewhere
from mambatr.outputs import write_text_atomic
from mambatr.runs import RunFolder
from mambatr.sweep import run_sweep

PAPER_TABLES = Path(__file__).resolve().parent / "papers" / "paper_tables.json"
FMNIST = "fmnist"  # --data fmnist: the testbeds and their shipped weights, on the Fashion-MNIST test split
LoadModel = Callable[[str], torch.nn.Module]


@cache
def paper_tables() -> dict:
    return json.loads(PAPER_TABLES.read_text())


def papers() -> list[str]:
    return sorted(paper_tables()["papers"])


@dataclass(frozen=True)
class Figure:
    """One row of a paper's table: what ran (model, method, FLOPs reduction) and what it reported."""

    paper: str
    table: str
    model: str  # the paper's label, e.g. "ViM-S"
    method: str  # a mambatr method, or "baseline"
    flops_reduction: float
    top1: float | None
    drop: float | None
    gflops: float | None
    layers: tuple[int, ...] | None  # the paper's pruning blocks (0-indexed), for its own model only
    derived: bool  # computed from a sentence of the paper, not read from a table cell
    row: str  # the source row, quoted


def figures(paper: str) -> list[Figure]:
    """Every figure of ``paper``'s tables, in the paper's order."""
    if paper not in paper_tables()["papers"]:
        raise ValueError(f"--paper {paper!r}: choose from {', '.join(papers())}")
    found = []
    for table in paper_tables()["papers"][paper]["tables"]:
        for row in table["rows"]:
            layers = row.get("layers")
            found.append(
                Figure(
                    paper=paper,
                    table=table["table"],
                    model=row["model"],
                    method=row["method"],
                    flops_reduction=row["flops_reduction"],
                    top1=row.get("top1"),
                    drop=row.get("drop"),
                    gflops=row.get("gflops"),
                    layers=tuple(layers) if layers is not None else None,
                    derived=row.get("derived", False),
                    row=row["row"],
                )
            )
    return found


def figure_for(paper: str, model: str, method: str, flops_reduction: float) -> Figure:
    """The paper's figure for one cell, e.g. ``figure_for("mtr", "ViM-S", "mtr", 0.3)``."""
    for figure in figures(paper):
        if (figure.model, figure.method) == (model, method) and abs(
            figure.flops_reduction - flops_reduction
        ) < 1e-9:
            return figure
    raise KeyError(f"{paper}: no figure for {model} {method} at {flops_reduction:.1%}")


def data_kind(data: str) -> str:
    """``fmnist`` or ``imagenet`` (a val folder), for the paper models' mapping."""
    if data == FMNIST:
        return FMNIST
    if not Path(data).is_dir():
        raise ValueError(f"--data {data}: not a folder; give an ImageNet val folder or 'fmnist'")
    return "imagenet"


def plan(
    paper: str, data: str, models: Sequence[str] | None = None
) -> tuple[dict[str, list[Figure]], list[str]]:
    """Our model -> the figures it runs, and a note for each paper model left out. ``models`` names
    official models (``vim_small``; on ``fmnist`` too, where it selects the ViM-S rows): by default
    every paper model that has weights to run with. Every name is checked before any work."""
    kind, mapping = data_kind(data), paper_tables()["models"]
    rows = figures(paper)
    official = {label: mapping[label]["imagenet"] for label in dict.fromkeys(f.model for f in rows)}
    if models is not None:
        unknown = sorted(set(models) - set(official.values()))
        if unknown or not models:
            raise ValueError(
                f"--models: {', '.join(unknown) or 'none given'} not in {paper}'s tables; "
                f"choose from {', '.join(official.values())}"
            )
    chosen: dict[str, list[Figure]] = {}
    notes = []
    for label, name in official.items():
        if models is not None and name not in models:
            continue
        ours = mapping[label][kind]
        if ours is None:
            notes.append(f"{label}: no {kind} testbed of its kind")
            continue
        if kind == "imagenet" and not has_pretrained(ours):
            where = weights_elsewhere(ours) or f"{ours} has no official weights"
            if models is not None:
                raise ValueError(f"--models {ours}: {where}; reproduce runs official weights only")
            notes.append(f"{label}: {where}")
            continue
        chosen.setdefault(ours, []).extend(f for f in rows if f.model == label)
    if not chosen:
        raise ValueError(f"{paper} on {data}: no row can run here ({'; '.join(notes)})")
    return chosen, notes


def cells(figures_here: Sequence[Figure]) -> dict[float, list[str]]:
    """The reduced cells to evaluate, grouped by FLOPs target: target -> methods (each once)."""
    grouped: dict[float, list[str]] = {}
    for figure in figures_here:
        if figure.method != "baseline" and figure.method not in grouped.get(figure.flops_reduction, []):
            grouped.setdefault(figure.flops_reduction, []).append(figure.method)
    return grouped


def method_options(figures_here: Sequence[Figure], own_model: bool) -> dict[str, dict]:
    """The paper's stated pruning blocks per method, on its own model only (a testbed has another depth)."""
    if not own_model:
        return {}
    return {f.method: {"layers": list(f.layers)} for f in figures_here if f.layers is not None}


def run(
    paper: str,
    data: str,
    out: str | Path,
    *,
    models: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    load_model: LoadModel | None = None,
) -> dict:
    """Evaluate every runnable cell of ``paper``'s tables on ``data`` (resuming from ``out``) and return
    ``{"paper", "data", "limit", "notes", "rows"}``, one row per paper figure with ours beside it.
    ``overwrite`` drops the cells an earlier run kept; ``load_model`` (default: ``pretrained=True``)
    builds each model by name."""
    chosen, notes = plan(paper, data, models)
    kind = data_kind(data)
    load_model = load_model or (lambda name: create_model(name, pretrained=True))
    inputs = DataArgs(
        data=None if kind == FMNIST else data,
        split="test",
        limit=limit,
        batch_size=batch_size,
        workers=workers,
    )
    ours: dict[tuple[str, str, float], dict] = {}
    for name, figures_here in chosen.items():
        model = load_model(name).eval().to(device)

        def evaluate_model(m: torch.nn.Module, name: str = name) -> dict:
            batches, total = eval_batches(name, inputs, m, SINGLE)
            return evaluate(evaluable(name, m), batches, total, progress=progress, desc=f"{name} images")

        args = {"--paper": paper, "--data": data, "--model": name, "--limit": limit}
        options = method_options(figures_here, own_model=kind == "imagenet")
        with RunFolder(Path(out) / paper / name, "reproduce", args, overwrite=overwrite) as folder:
            for target, methods in cells(figures_here).items():
                rows = run_sweep(
                    model, evaluate_model, methods, [target], options, progress=progress, run=folder
                )
                for row in rows:
                    ours[name, row["method"], row["target"]] = row
            if not cells(figures_here):  # baselines only
                ours[name, "baseline", 0.0] = run_sweep(model, evaluate_model, [], [], run=folder)[0]
    rows = [
        side_by_side(
            figure, name, ours[name, figure.method, figure.flops_reduction], model_entry(name).dataset
        )
        for name, figures_here in chosen.items()
        for figure in figures_here
    ]
    return {"paper": paper, "data": data, "limit": limit, "notes": notes, "rows": rows}


def side_by_side(figure: Figure, name: str, row: dict, dataset: str) -> dict:
    """A paper figure and our row for the same cell, with the differences (ours - paper)."""
    delta = lambda ours, theirs: None if theirs is None else ours - theirs  # noqa: E731
    return {
        "table": figure.table,
        "paper_model": figure.model,
        "model": name,
        "dataset": dataset,
        "method": figure.method,
        "flops_reduction_paper": figure.flops_reduction,
        "gflops_paper": figure.gflops,
        "flops_reduction": row["flops_reduction"],
        "gflops": row["gflops"],
        "top1_paper": figure.top1,
        "top1": row["top1"],
        "top1_delta": delta(row["top1"], figure.top1),
        "drop_paper": figure.drop,
        "drop": row["drop"],
        "drop_delta": delta(row["drop"], figure.drop),
        "derived": figure.derived,
        "source": f"{figure.paper} {figure.table}: {figure.row}",
    }


TABLE_HEADERS = [
    "table", "paper model", "ours", "method", "FLOPs red. paper", "FLOPs red. ours", "GFLOPs paper",
    "GFLOPs ours", "top-1 paper", "top-1 ours", "Δ top-1", "drop paper", "drop ours", "Δ drop",
]  # fmt: skip


def table_rows(result: dict) -> list[list[object]]:
    """The side-by-side rows as the CLI prints them ('-' where the paper states no figure; '*' marks a
    figure derived from the paper's text)."""
    shown = lambda value: "-" if value is None else value  # noqa: E731
    return [
        [
            r["table"],
            r["paper_model"] + ("*" if r["derived"] else ""),
            r["model"],
            r["method"],
            f"{r['flops_reduction_paper']:.1%}",
            f"{r['flops_reduction']:.1%}",
            shown(r["gflops_paper"]),
            r["gflops"],
            shown(r["top1_paper"]),
            r["top1"],
            shown(r["top1_delta"]),
            shown(r["drop_paper"]),
            r["drop"],
            shown(r["drop_delta"]),
        ]
        for r in result["rows"]
    ]


def write_result(result: dict, out: str | Path) -> Path:
    """OUT/<paper>/table.json, written whole or not at all."""
    path = Path(out) / result["paper"] / "table.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    return path
