"""Where onnxruntime's time goes on a model's ONNX file: its profiler's node times summed per region
(the chunked scan, the causal conv, the reduction method's ranking and gathering, the MatMuls of the
linear layers, everything else) and per op type, averaged over --runs profiled runs after warm-up;
beside the unprofiled images/s of the same file and mambatr eager's, timed round-robin in one run.

Regions come from the exporter's stack traces: the scan's, the conv's and the method's functions are
registered as stack-trace anchors while exporting, so every ONNX node they produce names them.
Nodes onnxruntime fuses keep their first node's name (``name/FusionName``); nodes it inserts itself
(layout casts and reorders) are counted as "inserted by onnxruntime".

    python benchmarks/onnx_profile.py --method mtr --target 0.3 --batch 1 --threads 1
    python benchmarks/onnx_profile.py --method mtr --onnx-ops custom     # mambatr's custom ops
    python benchmarks/onnx_profile.py --onnx m.onnx --json profile.json      # an existing file (no eager)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.fx.proxy import _register_stack_trace_anchor

from mambatr import deploy
from mambatr.ops import chunked_scan, conv, scan
from mambatr.table import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_variants import build  # noqa: E402

MATMULS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}
INSERTED = "inserted by onnxruntime"


ANCHORS = {  # function -> region: the standard-op and the custom-op exports' scans and convs
    chunked_scan.selective_scan_chunked: "scan",
    scan.selective_scan_cpu: "scan",
    conv.causal_conv1d_torch: "conv",
    conv.causal_conv1d_cpu: "conv",
}


def export(model: torch.nn.Module, example: torch.Tensor, path: Path, onnx_ops: str) -> None:
    """Export with the scan, conv and reduction functions kept in every node's stack trace."""
    for function in ANCHORS:
        _register_stack_trace_anchor(function)
    if model.reduction is not None:
        _register_stack_trace_anchor(type(model.reduction.method).reduce)
    deploy.save(model, example, "onnx", path, onnx_ops=onnx_ops)


def regions(path: Path, method: str | None) -> dict[str, tuple[str, str]]:
    """Node name -> (region, op type) for every node of the file."""
    import onnx

    anchors = [(f"in {function.__name__}", region) for function, region in ANCHORS.items()]
    anchors += [("in reduce", f"reduction ({method})")] if method else []
    table = {}
    for node in onnx.load(str(path)).graph.node:
        trace = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.stack_trace"), "")
        region = next((name for anchor, name in anchors if anchor in trace), None)
        if region is None:
            region = "linear layers (MatMul)" if node.op_type in MATMULS else "other"
        table[node.name] = (region, node.op_type)
    return table


def profile(
    path: Path, images: torch.Tensor, threads: int, warmup: int, runs: int
) -> tuple[list[dict], float]:
    """The profiler's node events of the last ``runs`` of ``warmup + runs`` calls, and their mean
    wall time per run (ms) as the profiler saw it."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        options = onnxruntime.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        runner = deploy.OnnxRunner(path, threads, options)
        for _ in range(warmup + runs):
            runner(images)
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    calls = sorted((e for e in events if e["name"] == "model_run"), key=lambda e: e["ts"])[warmup:]
    start = calls[0]["ts"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["ts"] >= start]
    return nodes, statistics.mean(c["dur"] for c in calls) / 1e3


def summarise(nodes: list[dict], table: dict[str, tuple[str, str]], runs: int) -> dict[str, dict]:
    """ms per run and node executions per run, by region, by op type and by (region, op type)."""
    sums = {key: collections.defaultdict(lambda: [0.0, 0]) for key in ("region", "op", "region_op")}
    for event in nodes:
        name = event["name"].removesuffix("_kernel_time")
        region, _ = table.get(name.split("/")[0], (INSERTED, None))
        op = event["args"]["op_name"]
        for key, group in (("region", region), ("op", op), ("region_op", f"{region}: {op}")):
            sums[key][group][0] += event["dur"] / 1e3 / runs
            sums[key][group][1] += 1 / runs
    return {key: dict(sorted(v.items(), key=lambda kv: -kv[1][0])) for key, v in sums.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--depth", type=int, help="fewer blocks (random weights): a quick proxy")
    parser.add_argument("--method", help="reduce with this method at --target first")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--onnx", help="profile this file instead of exporting (regions need its metadata)")
    parser.add_argument("--onnx-ops", choices=deploy.ONNX_OPS, default="standard", help="the export's ops")
    parser.add_argument("--keep", help="also save the exported file here")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="profiled runs (and timed calls per round)")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds of the unprofiled timing")
    parser.add_argument("--top", type=int, default=15, help="rows of the op-type tables")
    parser.add_argument("--json", help="also write the sums to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model = None
        if args.onnx:
            path = Path(args.onnx)
            images = torch.randn(args.batch, *deploy.OnnxRunner(path).session.get_inputs()[0].shape[1:])
        else:
            model = build(args.model, args.depth, args.method, args.target)
            example = torch.randn(model.config.input_shape(max(args.batch, 2)))
            images = example[: args.batch]
            path = Path(args.keep or Path(folder) / "model.onnx")
            export(model, example, path, args.onnx_ops)
        table = regions(path, args.method)
        nodes, profiled_ms = profile(path, images, args.threads, args.warmup, args.runs)
        sums = summarise(nodes, table, args.runs)
        variants = {"onnxruntime": deploy.OnnxRunner(path, args.threads)}
        if model is not None:
            variants["eager"] = model
        rates = collections.defaultdict(list)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                rates[name].append(deploy.images_per_s(fn, images, warmup=1, runs=args.runs))
    speeds = {name: statistics.median(r) for name, r in rates.items()}
    kernel_ms = sum(ms for ms, _ in sums["region"].values())
    depth = f" depth {args.depth}" if args.depth else ""
    label = args.onnx or f"{args.model}{depth}, {args.method or 'dense'}, {args.onnx_ops} ops"
    timed = ", ".join(f"{n} {s:.2f} images/s ({1e3 * args.batch / s:.1f} ms)" for n, s in speeds.items())
    print(f"{label}, batch {args.batch}, {args.threads} thread(s), {len(table)} nodes in the file")
    print(f"profiled run {profiled_ms:.1f} ms, of which node kernels {kernel_ms:.1f} ms; unprofiled {timed}")
    for key, title, top in (("region", "region", None), ("op", "op type", args.top),
                            ("region_op", "region: op type", args.top)):  # fmt: skip
        rows = [[group, ms, 100 * ms / kernel_ms, calls] for group, (ms, calls) in sums[key].items()][:top]
        print()
        print(markdown_table([title, "ms / run", "% of node time", "nodes run / run"], rows))
    if args.json:
        out = dict(label=label, batch=args.batch, threads=args.threads, profiled_ms=profiled_ms,
                   kernel_ms=kernel_ms, images_per_s=speeds, **sums)  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
