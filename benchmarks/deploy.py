"""Speed of a reduced model in each runtime it can leave Python for, measured in one run.

For each model (``vim_fmnist_p2`` with its shipped weights, ViM-S with random ones: speed does not
depend on the weights), each method at --target (and the dense model), each runtime (mambatr eager,
``torch.compile`` with Inductor, onnxruntime on the CPU execution provider) and each batch size:
images/s (median of --runs timed calls after warm-up), the reduced-vs-dense speed-up in that runtime,
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

RUNTIMES = ("eager", "compile", "onnx")


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
        torch._dynamo.reset()
        fn = torch.compile(model, fullgraph=True, dynamic=False)
    else:
        path = folder / "model.onnx"
        deploy.save(model, example, "onnx", path)
        fn = deploy.load("onnx", path, torch.get_num_threads())
    return fn, time.perf_counter() - start


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    methods = [None, *[m for m in args.methods.split(",") if m]]
    batches = [int(b) for b in args.batches.split(",")]
    runtimes = args.runtimes.split(",")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            for method in methods:
                model, achieved = build(name, method, args.target)
                example = torch.randn(model.config.input_shape(max(batches)))
                for runtime in runtimes:
                    fn, prepare_s = runner(model, runtime, example, Path(folder))
                    for batch in batches:
                        images = example[:batch]
                        with torch.inference_mode():
                            fn(images)  # a compiled model compiles for this batch size here
                        rate = deploy.images_per_s(fn, images, warmup=args.warmup, runs=args.runs)
                        rows.append(
                            dict(model=name, method=method or "dense", runtime=runtime, batch=batch,
                                 flops_reduction=achieved, images_per_s=rate, prepare_s=prepare_s)
                        )  # fmt: skip
                        print(
                            f"{name} {method or 'dense'} {runtime} b{batch}: {rate:.1f} img/s",
                            file=sys.stderr,
                        )
        if "vim_small" in args.models.split(",") and 8 in batches:
            deit, label = deit_small()
            deit.eval()
            images = torch.randn(8, 3, 224, 224)
            for runtime in [r for r in runtimes if r != "onnx"]:
                fn, prepare_s = runner(deit, runtime, images, Path(folder))
                with torch.inference_mode():
                    fn(images)
                rate = deploy.images_per_s(fn, images, warmup=args.warmup, runs=args.runs)
                rows.append(dict(model=label, method="-", runtime=runtime, batch=8, flops_reduction=0.0,
                                 images_per_s=rate, prepare_s=prepare_s))  # fmt: skip
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
        "--runtimes", default=",".join(RUNTIMES), help="comma-separated: eager, compile, onnx"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
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
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(markdown_table(headers, table))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
