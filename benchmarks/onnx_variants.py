"""onnxruntime speed of one model's ONNX file under the cheap knobs, timed round-robin in one run (so
a busy machine slows every variant alike): the chunked scan's chunk size (``CHUNK``), the exporter's
``optimize=True`` (onnxscript's optimiser), onnxruntime's graph optimisation level, and threads;
beside mambatr eager at the same threads. Each variant's logits are checked against eager.

    python benchmarks/onnx_variants.py --depth 2 --chunks 4,8,16,32          # a 2-block proxy, minutes
    python benchmarks/onnx_variants.py --levels all,basic,disable --optimize --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import mambatr
from mambatr import deploy
from mambatr.models import model_entry
from mambatr.ops import chunked_scan
from mambatr.table import markdown_table

LEVELS = ("all", "extended", "basic", "disable")


def build(name: str, depth: int | None, method: str | None, target: float) -> torch.nn.Module:
    """The model (shipped weights at full depth, else random: speed does not depend on them)."""
    torch.manual_seed(0)
    overrides = {} if depth is None else {"depth": depth}
    pretrained = depth is None and model_entry(name).weights is not None
    model = mambatr.create_model(name, pretrained=pretrained, **overrides).eval()
    if method:
        mambatr.apply(model, method, flops_reduction=target)
    return model


def export(model: torch.nn.Module, example: torch.Tensor, chunk: int, optimize: bool, path: Path) -> dict:
    """Write the ONNX file with chunk size ``chunk``; its node count, op histogram and export seconds."""
    import onnx

    previous, chunked_scan.CHUNK = chunked_scan.CHUNK, chunk
    try:
        start = time.perf_counter()
        program = deploy.export_onnx(model, example, optimize=optimize)
        program.save(str(path), external_data=False)
        seconds = time.perf_counter() - start
    finally:
        chunked_scan.CHUNK = previous
    nodes = onnx.load(str(path)).graph.node
    ops = collections.Counter(node.op_type for node in nodes)
    return {"nodes": len(nodes), "export_s": seconds, "top_ops": dict(ops.most_common(5))}


def session(path: Path, level: str, threads: int) -> deploy.OnnxRunner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    return deploy.OnnxRunner(path, threads, options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--depth", type=int, help="fewer blocks (random weights): a quick proxy")
    parser.add_argument("--method", help="reduce with this method at --target first")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunks", default=str(chunked_scan.CHUNK), help="comma-separated CHUNK values")
    parser.add_argument("--levels", default="all", help=f"comma-separated, of {LEVELS}")
    parser.add_argument("--optimize", action="store_true", help="also the default chunk with optimize=True")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (median reported)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per variant and round")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    levels = args.levels.split(",")
    if set(levels) - set(LEVELS):
        parser.error(f"--levels: unknown {sorted(set(levels) - set(LEVELS))}; expected {LEVELS}")
    chunks = [int(c) for c in args.chunks.split(",")]
    if min(chunks) < 2:
        parser.error("--chunks: each at least 2")
    thread_counts = [int(t) for t in args.threads.split(",")]

    model = build(args.model, args.depth, args.method, args.target)
    example = torch.randn(model.config.input_shape(max(args.batch, 2)))
    images = example[: args.batch]
    with torch.inference_mode():
        eager_logits = model(example)
    files = []
    with tempfile.TemporaryDirectory() as folder:
        exports = [(chunk, False) for chunk in chunks]
        exports += [(chunked_scan.CHUNK, True)] if args.optimize else []
        for chunk, optimize in tqdm(exports, desc="export", file=sys.stderr):
            path = Path(folder) / f"chunk{chunk}_opt{int(optimize)}.onnx"
            files.append((chunk, optimize, path, export(model, example, chunk, optimize, path)))
        variants = {}  # name -> (callable, row)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            variants[f"eager t{threads}"] = (threads, model, dict(runtime="eager", threads=threads))
            for chunk, optimize, path, info in files:
                for level in levels:
                    runner = session(path, level, threads)
                    with torch.inference_mode():
                        logits = runner(example)
                    error = float((logits - eager_logits).abs().max() / eager_logits.abs().max())
                    row = dict(runtime="onnxruntime", threads=threads, chunk=chunk, optimize=optimize,
                               level=level, rel_error=error, **info)  # fmt: skip
                    variants[f"ort c{chunk} o{int(optimize)} {level} t{threads}"] = (threads, runner, row)
        rates = collections.defaultdict(list)
        for _ in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
            for name, (threads, fn, _) in variants.items():
                torch.set_num_threads(threads)
                rates[name].append(deploy.images_per_s(fn, images, warmup=1, runs=args.runs))
    rows = []
    for name, (_, _, row) in variants.items():
        rows.append({**row, "batch": args.batch, "images_per_s": statistics.median(rates[name])})
    headers = ["runtime", "threads", "CHUNK", "optimize", "ORT level", "nodes", "export s", "images/s"]
    headers.append("rel. error")
    table = [
        [r["runtime"], r["threads"], r.get("chunk", "-"), r.get("optimize", "-"), r.get("level", "-"),
         r.get("nodes", "-"), r.get("export_s", "-"), r["images_per_s"], r.get("rel_error", "-")]
        for r in rows
    ]  # fmt: skip
    depth = f", depth {args.depth} (random weights)" if args.depth else ""
    print(f"{args.model}{depth}, {args.method or 'dense'}, batch {args.batch}, torch {torch.__version__}, "
          f"median of {args.rounds} round-robin rounds")  # fmt: skip
    print(markdown_table(headers, table))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
