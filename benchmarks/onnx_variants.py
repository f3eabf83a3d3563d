"""onnxruntime speed of one model's ONNX file under the cheap knobs, timed round-robin in one run (so
a busy machine slows every variant alike): the chunked scan's chunk size (``CHUNK``), the exporter's
``optimize=True`` (onnxscript's optimiser), onnxruntime's graph optimisation level, threads, and
other scan formulations (``--scans``: the ONNX ``Scan`` candidates of benchmarks/onnx_scan_loops.py,
and ``custom``: mambatr's onnxruntime custom ops, deploy onnx_ops="custom"), at one or more batch
sizes; beside mambatr eager at the same threads. Each variant's logits are checked against eager.

    python benchmarks/onnx_variants.py --depth 2 --chunks 4,8,16,32          # a 2-block proxy, minutes
    python benchmarks/onnx_variants.py --levels all,basic,disable --optimize --json out.json
    python benchmarks/onnx_variants.py --depth 2 --scans scan_token,scan_chunk   # ONNX Scan loops
    python benchmarks/onnx_variants.py --method mtr --scans custom --chunks "" --batch 1,8   # custom ops
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_scan_loops import SCANS  # noqa: E402

import mambatr
from mambatr import deploy
from mambatr.models import model_entry
from mambatr.ops import chunked_scan, scan
from mambatr.table import markdown_table

LEVELS = ("all", "extended", "basic", "disable")
FORMULATIONS = (*SCANS, "custom")


def build(name: str, depth: int | None, method: str | None, target: float) -> torch.nn.Module:
    """The model (shipped weights at full depth, else random: speed does not depend on them)."""
    torch.manual_seed(0)
    overrides = {} if depth is None else {"depth": depth}
    pretrained = depth is None and model_entry(name).weights is not None
    model = mambatr.create_model(name, pretrained=pretrained, **overrides).eval()
    if method:
        mambatr.apply(model, method, flops_reduction=target)
    return model


def export(
    model: torch.nn.Module, example: torch.Tensor, formulation: str, chunk: int, optimize: bool, path: Path
) -> dict:
    """Write the ONNX file with scan ``formulation`` ("chunked" or one of FORMULATIONS) and chunk
    size ``chunk``; its node count, op histogram and export seconds."""
    import onnx

    previous = chunked_scan.CHUNK, scan.selective_scan_chunked
    chunked_scan.CHUNK = chunk
    scan.selective_scan_chunked = SCANS.get(formulation, chunked_scan.selective_scan_chunked)
    try:
        start = time.perf_counter()
        ops = "custom" if formulation == "custom" else "standard"
        program = deploy.export_onnx(model, example, optimize=optimize, ops=ops)
        program.save(str(path), external_data=False)
        seconds = time.perf_counter() - start
    finally:
        chunked_scan.CHUNK, scan.selective_scan_chunked = previous
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
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes")
    parser.add_argument(
        "--chunks", default=str(chunked_scan.CHUNK), help='comma-separated CHUNK values ("": no chunked file)'
    )
    parser.add_argument("--levels", default="all", help=f"comma-separated, of {LEVELS}")
    parser.add_argument("--optimize", action="store_true", help="also the default chunk with optimize=True")
    parser.add_argument("--scans", default="", help=f"comma-separated, of {FORMULATIONS}, beside chunked")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (median reported)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per variant and round")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    levels = args.levels.split(",")
    if set(levels) - set(LEVELS):
        parser.error(f"--levels: unknown {sorted(set(levels) - set(LEVELS))}; expected {LEVELS}")
    chunks = [int(c) for c in args.chunks.split(",") if c]
    if chunks and min(chunks) < 2:
        parser.error("--chunks: each at least 2")
    batches = [int(b) for b in args.batch.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    formulations = [s for s in args.scans.split(",") if s]
    if set(formulations) - set(FORMULATIONS):
        parser.error(
            f"--scans: unknown {sorted(set(formulations) - set(FORMULATIONS))}; expected {FORMULATIONS}"
        )

    model = build(args.model, args.depth, args.method, args.target)
    example = torch.randn(model.config.input_shape(max(*batches, 2)))
    with torch.inference_mode():
        eager_logits = model(example)
    files = []
    with tempfile.TemporaryDirectory() as folder:
        exports = [("chunked", chunk, False) for chunk in chunks]
        exports += [("chunked", chunked_scan.CHUNK, True)] if args.optimize else []
        exports += [(formulation, chunked_scan.CHUNK, False) for formulation in formulations]
        for formulation, chunk, optimize in tqdm(exports, desc="export", file=sys.stderr):
            path = Path(folder) / f"{formulation}_chunk{chunk}_opt{int(optimize)}.onnx"
            info = export(model, example, formulation, chunk, optimize, path)
            files.append((formulation, chunk, optimize, path, info))
        variants = {}  # name -> (callable, row)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            variants[f"eager t{threads}"] = (threads, model, dict(runtime="eager", threads=threads))
            for formulation, chunk, optimize, path, info in files:
                for level in levels:
                    runner = session(path, level, threads)
                    with torch.inference_mode():
                        logits = runner(example)
                    error = float((logits - eager_logits).abs().max() / eager_logits.abs().max())
                    row = dict(runtime="onnxruntime", threads=threads, scan=formulation, chunk=chunk,
                               optimize=optimize, level=level, rel_error=error, **info)  # fmt: skip
                    name = f"ort {formulation} c{chunk} o{int(optimize)} {level} t{threads}"
                    variants[name] = (threads, runner, row)
        rates = collections.defaultdict(list)
        for _ in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
            for name, (threads, fn, _) in variants.items():
                torch.set_num_threads(threads)
                for batch in batches:
                    rate = deploy.images_per_s(fn, example[:batch], warmup=1, runs=args.runs)
                    rates[name, batch].append(rate)
    rows = []
    for batch in batches:
        for name, (_, _, row) in variants.items():
            rows.append({**row, "batch": batch, "images_per_s": statistics.median(rates[name, batch])})
    headers = ["runtime", "threads", "scan", "CHUNK", "optimize", "ORT level", "nodes", "export s", "batch"]
    headers += ["images/s", "rel. error"]
    table = [
        [r["runtime"], r["threads"], r.get("scan", "-"), r.get("chunk", "-"), r.get("optimize", "-"),
         r.get("level", "-"), r.get("nodes", "-"), r.get("export_s", "-"), r["batch"], r["images_per_s"],
         r.get("rel_error", "-")]
        for r in rows
    ]  # fmt: skip
    depth = f", depth {args.depth} (random weights)" if args.depth else ""
    print(f"{args.model}{depth}, {args.method or 'dense'}, torch {torch.__version__}, "
          f"median of {args.rounds} round-robin rounds")  # fmt: skip
    print(markdown_table(headers, table))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
