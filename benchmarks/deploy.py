"""Speed of a reduced model in each runtime it can leave Python for, measured in one run.

For each model (``vim_fmnist_p2`` with its shipped weights, ViM-S with random ones: speed does not
depend on the weights), each method at --target (and the dense model), each runtime (mambatr eager,
``torch.compile`` with Inductor, onnxruntime on the CPU execution provider with the standard-op file
(``onnx``) and with mambatr's custom ops for the scan and conv (``onnx_custom``)) and each batch size:
images/s (every cell timed round-robin, so load that comes and goes slows all alike: the median of
--rounds rounds, each the median of --runs calls), the reduced-vs-dense speed-up in that runtime,
the ideal speed-up 1 / (1 - FLOPs reduction) and their ratio. DeiT-S (the transformer of ViM-S's cost,
``F.scaled_dot_product_attention``) is timed beside ViM-S at batch 8, eager and compiled.

    python benchmarks/deploy.py                                   # the table in docs/performance.md
    python benchmarks/deploy.py --models vim_fmnist_p2 --runtimes eager,onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import mambatr
from mambatr import deploy
from mambatr.models import model_entry
from mambatr.table import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import deit_small  # noqa: E402

RUNTIMES = ("eager", "compile", "onnx", "onnx_custom")


def build(name: str, method: str | None, target: float) -> tuple[torch.nn.Module, float]:
    """The model (shipped weights if any, else random) reduced by ``method``; its FLOPs reduction."""
    torch.manual_seed(0)
    model = mambatr.create_model(name, pretrained=model_entry(name).weights is not None).eval()
    if method is None:
        return model, 0.0
    return model, mambatr.apply(model, method, flops_reduction=target).flops_reduction_achieved


def runner(model: torch.nn.Module, runtime: str, example: torch.Tensor, folder: Path):
    """A callable images -> logits for ``runtime``, and the seconds it took to prepare."""
    start = time.perf_counter()
    if runtime == "eager":
        fn = model
    elif runtime == "compile":
        fn = torch.compile(model, fullgraph=True, dynamic=False)
    else:
        path = folder / f"{runtime}_{id(model)}.onnx"
        ops = "custom" if runtime == "onnx_custom" else "standard"
        deploy.save(model, example, "onnx", path, onnx_ops=ops)
        fn = deploy.load("onnx", path, torch.get_num_threads())
    return fn, time.perf_counter() - start


def prepare(args: argparse.Namespace, folder: Path) -> list[tuple[dict, object, torch.Tensor]]:
    """Every cell (model, method, runtime, batch) ready to time: its row, its callable (compiled and
    called once at its batch size), its images."""
    cells = []
    methods = [None, *[m for m in args.methods.split(",") if m]]
    batches = [int(b) for b in args.batches.split(",")]
    runtimes = args.runtimes.split(",")
    for name in args.models.split(","):
        for method in methods:
            model, achieved = build(name, method, args.target)
            example = torch.randn(model.config.input_shape(max(batches)))
            for runtime in runtimes:
                fn, prepare_s = runner(model, runtime, example, folder)
                for batch in batches:
                    with torch.inference_mode():
                        fn(example[:batch])  # a compiled model compiles for this batch size here
                    row = dict(model=name, method=method or "dense", runtime=runtime, batch=batch,
                               flops_reduction=achieved, prepare_s=prepare_s)  # fmt: skip
                    cells.append((row, fn, example[:batch]))
                    print(f"ready: {name} {method or 'dense'} {runtime} b{batch}", file=sys.stderr)
    if "vim_small" in args.models.split(",") and 8 in batches:
        deit, label = deit_small()
        images = torch.randn(8, 3, 224, 224)
        for runtime in [r for r in runtimes if not r.startswith("onnx")]:
            fn, prepare_s = runner(deit.eval(), runtime, images, folder)
            with torch.inference_mode():
                fn(images)
            row = dict(model=label, method="-", runtime=runtime, batch=8, flops_reduction=0.0,
                       prepare_s=prepare_s)  # fmt: skip
            cells.append((row, fn, images))
    return cells


def measure(args: argparse.Namespace) -> list[dict]:
    """Every cell timed round-robin (``--rounds`` rounds of ``--runs`` calls each, after ``--warmup``),
    so load that comes and goes slows them alike; the median round. Then speed-ups against dense."""
    # each model instance and batch size is its own compiled entry of the same forward: allow them all,
    # and fail loudly rather than fall back to eager past the limit
    limits = dict(recompile_limit=256, fail_on_recompile_limit_hit=True)
    with tempfile.TemporaryDirectory() as folder, torch._dynamo.config.patch(**limits):
        cells = prepare(args, Path(folder))  # every compiled cell compiled here, before timing
        rates = deploy.round_robin(
            [(fn, images) for _, fn, images in cells], args.rounds, args.warmup, args.runs
        )
    rows = [dict(row, images_per_s=rate) for (row, _, _), rate in zip(cells, rates, strict=True)]
    dense = {
        (r["model"], r["runtime"], r["batch"]): r["images_per_s"] for r in rows if r["method"] == "dense"
    }
    for row in rows:
        base = dense.get((row["model"], row["runtime"], row["batch"]))
        ideal = 1.0 / (1.0 - row["flops_reduction"])
        speedup = row["images_per_s"] / base if base else None
        row.update(speedup=speedup, ideal=ideal, of_ideal=None if speedup is None else speedup / ideal)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="vim_fmnist_p2,vim_small")
    parser.add_argument("--methods", default="mtr,hsa,tome")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument(
        "--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, of {', '.join(RUNTIMES)}"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per cell and round")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per cell and round (median)")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    unknown = set(args.runtimes.split(",")) - set(RUNTIMES)
    if unknown:
        parser.error(f"--runtimes: unknown {sorted(unknown)}; expected {RUNTIMES}")
    torch.set_num_threads(args.threads)
    rows = measure(args)
    headers = [
        "model",
        "method",
        "runtime",
        "batch",
        "FLOPs red. %",
        "images/s",
        "speed-up",
        "ideal",
        "of ideal",
    ]
    table = [
        [r["model"], r["method"], r["runtime"], r["batch"], 100 * r["flops_reduction"], r["images_per_s"],
         r["speedup"] or "-", r["ideal"], r["of_ideal"] or "-"]
        for r in rows
    ]  # fmt: skip
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.rounds} round-robin rounds")
    print(markdown_table(headers, table))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
