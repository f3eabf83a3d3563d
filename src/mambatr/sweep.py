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
from mambatr.provenance import sha256_of
from mambatr.reduction import Schedule, apply, calibrate, remove
from mambatr.runs import RunFolder

Evaluate = Callable[[torch.nn.Module], dict]
ScheduleFor = Callable[[str, float], Schedule]  # (method, FLOPs target) -> the schedule to apply
COLUMNS = [
    "method",
    "target",
    "schedule",
    "flops_reduction",
    "token_reduction",
    "gflops",
    "top1",
    "drop",
    "images_per_s",
]
# the run's provenance (mambatr.provenance), repeated on every CSV row so each row says where it is from
PROVENANCE_COLUMNS = ["model", "weights", "weights_sha256", "dataset", "data", "split", "limit", "command"]
SWEEP_FORMAT = "mambatr-sweep/1"


def run_sweep(
    model: torch.nn.Module,
    evaluate: Evaluate,
    methods: Sequence[str],
    reductions: Sequence[float],
    options: dict[str, dict] | None = None,
    progress: bool = True,
    schedule_for: ScheduleFor | None = None,
    run: RunFolder | None = None,
) -> list[dict]:
    """Baseline row, then one row per (method, target); ``evaluate(model)`` returns top1 and images/s.

    Each method reduces after its default blocks with counts from the FLOPs solver, or, with
    ``schedule_for``, with the schedule it returns (e.g. :func:`calibrating` or :func:`schedules_in`).
    Every pair is solved before the first evaluation, so an unknown method or an unreachable target
    fails at once rather than after the work before it; the progress bar counts the baseline too.
    With ``run``, each row is kept in the run folder as it is finished and rows found there (an
    interrupted run's) are not computed again. Rows are as JSON reads them back (``removals`` keyed by
    strings). The model is dense again afterwards, also when an evaluation fails.
    """
    pairs = [(method, target) for method in methods for target in reductions]
    for method, target in pairs:
        apply(model, method, target, **(options or {}).get(method, {}))
        remove(model)
    done = run.done if run is not None else lambda key: None
    keep = run.save if run is not None else lambda key, row: json.loads(json.dumps(row))
    bar = tqdm(total=1 + len(pairs), desc="sweep", unit="run", disable=not progress)
    with bar:  # each reduced row leaves the model dense, also on error (reduced_row)
        bar.set_postfix_str("baseline")
        baseline = done(BASELINE)
        if baseline is None:
            dense = evaluate(model)
            baseline = keep(
                BASELINE,
                {
                    "method": "baseline",
                    "target": 0.0,
                    "schedule": "",
                    "flops_reduction": 0.0,
                    "token_reduction": 0.0,
                    "gflops": count_flops(model.config).gflops,
                    "top1": dense["top1"],
                    "drop": 0.0,
                    "images_per_s": dense["images_per_s"],
                    "removals": {},
                    "options": {},
                },
            )
        bar.update()
        rows = [baseline]
        for method, target in pairs:
            bar.set_postfix_str(f"{method} {target:.0%}")
            row = done(cell_key(method, target))
            if row is None:
                schedule = schedule_for(method, target) if schedule_for is not None else None
                options_here = (options or {}).get(method, {}) if schedule is None else {}
                row = reduced_row(model, evaluate, method, target, baseline, schedule, **options_here)
                row = keep(cell_key(method, target), row)
            rows.append(row)
            bar.update()
    return rows


BASELINE = "baseline"  # the dense row's cell key


def cell_key(method: str, target: float) -> str:
    """A (method, target) row's cell key in a run folder, e.g. ``mtr_0.3`` (the target exactly)."""
    return f"{method}_{target!r}"


def reduced_row(
    model: torch.nn.Module,
    evaluate: Evaluate,
    method: str,
    target: float,
    dense: dict,
    schedule: Schedule | None = None,
    **options: object,
) -> dict:
    """One sweep row: ``method`` at ``target`` (default blocks and solved counts, or ``schedule``)
    evaluated against the ``dense`` result; the model is dense again afterwards."""
    with _dense_afterwards(model):
        if schedule is None:
            report = apply(model, method, target, **options)
        else:
            report = apply(model, method, schedule=schedule)
        result = evaluate(model)
    return {
        "method": method,
        "target": target,
        "schedule": "default" if schedule is None else schedule_label(schedule),
        "flops_reduction": report.flops_reduction_achieved,
        "token_reduction": report.token_reduction,
        "gflops": report.gflops,
        "top1": result["top1"],
        "drop": dense["top1"] - result["top1"],
        "images_per_s": result["images_per_s"],
        "removals": report.removals,
        "options": report.options,
    }


def schedule_label(schedule: Schedule) -> str:
    """How a schedule was found, for tables: e.g. ``calibrated on fashion_mnist val[:500]``."""
    source = schedule.calibration.get("source")
    return f"calibrated on {source}" if source else "calibrated"


def calibrating(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    model_name: str,
    source: str,
    out_dir: Path | None = None,
    progress: bool = True,
    run: RunFolder | None = None,
) -> ScheduleFor:
    """Schedules found by :func:`mambatr.calibrate` on ``images`` (never the evaluation images) when the
    sweep reaches each pair, each saved as ``out_dir/<model>_<method>_<target %>.json``.

    With ``run`` (and ``out_dir``), each saved schedule's file and sha256 are kept as a cell: a resumed
    sweep applies the schedules its interrupted run found, rather than calibrating them again; a file
    that changed since is calibrated again."""

    def schedule_for(method: str, target: float) -> Schedule:
        key = f"schedule_{cell_key(method, target)}"
        path = out_dir / schedule_file_name(model_name, method, target) if out_dir is not None else None
        found = run.done(key) if run is not None else None
        if found is not None and path is not None and path.is_file() and sha256_of(path) == found:
            return Schedule.load(path)
        schedule = calibrate(
            model, method, target, images, model_name=model_name, source=source, progress=progress
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            schedule.save(path)
            if run is not None:
                run.save(key, sha256_of(path))
        return schedule

    return schedule_for


def schedule_file_name(model_name: str, method: str, target: float) -> str:
    return f"{model_name}_{method}_{round(100 * target)}.json"


def schedules_in(
    folder: str | Path,
    model: torch.nn.Module,
    methods: Sequence[str],
    reductions: Sequence[float],
    model_name: str | None = None,
) -> ScheduleFor:
    """The schedules of a folder (e.g. an earlier ``sweep --schedule calibrated``), one per (method,
    target), only those made for ``model_name`` when it is given: all checked before any work, so a
    missing, doubled or misfitting one fails at once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"schedule folder {folder} not found")
    found: dict[tuple[str, float], list[Path]] = {}
    schedules: dict[Path, Schedule] = {}
    for path in sorted(folder.glob("*.json")):
        schedule = Schedule.load(path)
        if model_name is not None and schedule.model != model_name:
            continue
        schedules[path] = schedule
        found.setdefault((schedule.method, round(schedule.flops_reduction_target, 4)), []).append(path)
    chosen: dict[tuple[str, float], Schedule] = {}
    for method in methods:
        for target in reductions:
            paths = found.get((method, round(target, 4)), [])
            if len(paths) != 1:
                what = (
                    "no schedule" if not paths else f"{len(paths)} schedules ({', '.join(map(str, paths))})"
                )
                for_model = f" made for {model_name}" if model_name is not None else ""
                raise ValueError(
                    f"{folder}: {what}{for_model} for {method} at {target:.0%}; expected exactly one"
                )
            schedules[paths[0]].check_fits(model.config)
            chosen[method, target] = schedules[paths[0]]
    return lambda method, target: chosen[method, target]


@contextmanager
def _dense_afterwards(model: torch.nn.Module) -> Iterator[None]:
    """Remove any reduction on exit, so an error mid-sweep never leaves the model patched."""
    try:
        yield
    finally:
        remove(model)


def method_label(row: dict) -> str:
    """A row's method as tables show it: ``mtr``, or ``mtr (calibrated)`` with a calibrated schedule."""
    calibrated = row.get("schedule", "").startswith("calibrated")
    return f"{row['method']} (calibrated)" if calibrated else row["method"]


def table_rows(rows: Iterable[dict]) -> list[list[object]]:
    return [
        [
            method_label(r),
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


def write_outputs(rows: list[dict], out_dir: Path, title: str, provenance: dict | None = None) -> list[Path]:
    """sweep.csv, sweep.json and sweep.png (top-1 vs achieved FLOPs reduction) in ``out_dir``.

    sweep.json is :func:`sweep_document` (``provenance`` and the rows); sweep.csv has the rows'
    columns and then the provenance's on every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    provenance = provenance or {}
    paths = [out_dir / "sweep.csv", out_dir / "sweep.json", out_dir / "sweep.png"]
    with atomic_path(paths[0]) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS + PROVENANCE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        extra = {key: provenance.get(key) for key in PROVENANCE_COLUMNS}
        writer.writerows({**extra, **row} for row in rows)
    write_text_atomic(paths[1], json.dumps(sweep_document(rows, provenance), indent=2) + "\n")
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


def sweep_document(rows: list[dict], provenance: dict | None = None) -> dict:
    """What sweep.json and ``sweep --json`` hold: the format, the provenance keys, then the rows."""
    return {"format": SWEEP_FORMAT, **(provenance or {}), "rows": rows}


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a sweep.json: this format, or the bare list of rows written before it."""
    document = json.loads(Path(path).read_text())
    return document if isinstance(document, list) else document["rows"]


def x_range(reductions: Sequence[float], min_span: float = 10.0) -> tuple[float, float]:
    """Plot limits (in %) around the achieved reductions, at least ``min_span`` points wide and never
    below 0: a single target would otherwise get matplotlib's hair-thin range around one value."""
    low, high = min(reductions, default=0.0), max(reductions, default=0.0)
    pad = max(min_span - (high - low), 0.0) / 2 + 0.05 * (high - low)
    low = max(low - pad, 0.0)
    return low, max(high + pad, low + min_span)
