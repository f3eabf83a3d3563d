"""Where a compiled model's time goes: torch.profiler's self time per op and per Inductor kernel.

The model is compiled (``torch.compile(fullgraph=True)``, Inductor) with Inductor's kernel profiling
on, so each generated C++ kernel shows under its own name (``graph_N_cpp_fused_...``) beside aten
ops and mambatr's operators (``mambatr::scan_fwd``, ``mambatr::conv_fwd``). Figures are per forward
pass of one batch: the unprofiled median, then the profiled self times (profiling adds some).
``--deit`` profiles DeiT-S (benchmarks/roofline.py's) the same way beside it.

    python benchmarks/profile_compiled.py --model vim_small --batch 8 --deit
    python benchmarks/profile_compiled.py --model vim_fmnist_p2 --method mtr --batch 1 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

import mambatr
from mambatr.models import model_entry
from mambatr.table import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import deit_small  # noqa: E402


def profiled(model: torch.nn.Module, images: torch.Tensor, runs: int) -> tuple[float, list[tuple]]:
    """Unprofiled median ms per call of the compiled model, and (self ms per call, calls per call,
    name) of every op and kernel, largest first."""
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        with torch.inference_mode():
            for _ in range(2):
                compiled(images)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                compiled(images)
                times.append(time.perf_counter() - start)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(runs):
                    compiled(images)
    rows = [(e.self_cpu_time_total / runs / 1e3, e.count / runs, e.key) for e in prof.key_averages()]
    return statistics.median(times) * 1e3, sorted(rows, reverse=True)


def report(label: str, ms: float, rows: list[tuple], top: int) -> None:
    print(
        f"\n{label}: {ms:.1f} ms per batch unprofiled, {sum(r[0] for r in rows):.1f} ms of profiled self time"
    )
    print(
        markdown_table(["self ms", "calls", "op or kernel"], [[r[0], r[1], r[2][:110]] for r in rows[:top]])
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vim_small")
    parser.add_argument("--method", help="reduce with this method first (default: dense)")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=5, help="timed calls, then as many profiled")
    parser.add_argument("--top", type=int, default=20, help="rows shown per model")
    parser.add_argument("--deit", action="store_true", help="profile DeiT-S the same way (224 x 224 inputs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mambatr.create_model(args.model, pretrained=model_entry(args.model).weights is not None).eval()
    if args.method:
        mambatr.apply(model, args.method, flops_reduction=args.target)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    label = f"{args.model} {args.method or 'dense'}"
    report(label, *profiled(model, torch.randn(model.config.input_shape(args.batch)), args.runs), args.top)
    if args.deit:
        deit, name = deit_small()
        report(name, *profiled(deit.eval(), torch.randn(args.batch, 3, 224, 224), args.runs), args.top)


if __name__ == "__main__":
    main()
