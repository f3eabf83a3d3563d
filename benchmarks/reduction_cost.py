"""What a compiled reduced model's speed-up is made of: the backbone at fewer tokens, and the steps.

For each method at --target, the compiled reduced model beside its *free twin*: the same per-layer
token counts, but each reduction step a slice (the first tokens kept: no scores, sort, gathers or
merges; what a reduction costing nothing would run; HSA's twin keeps the aligned scan's gap inputs).
Both and the compiled dense model are timed round-robin. Per method:

* twin / ideal: the twin's speed-up over dense against 1 / (1 - FLOPs reduction): how close the
  backbone alone comes to the ideal at those token counts (fixed per-layer costs and smaller, less
  efficient matmuls and scans keep it below 1);
* step share: 1 - method's images/s / twin's: the share of the reduced model's time spent in its
  reduction steps;
* of ideal: the method's speed-up against the ideal = twin / ideal x (1 - step share).

    python benchmarks/reduction_cost.py --threads 1 --batches 1,8
    python benchmarks/reduction_cost.py --methods mtr --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

import mambatr
from mambatr import deploy
from mambatr.models import model_entry
from mambatr.models.backbone import BlockInternals
from mambatr.table import markdown_table
from mambatr.tokens import TokenState


class FreeSlice:
    """A reduction step that costs (almost) nothing: keep the first tokens."""

    def __init__(self, aligns_scan: bool) -> None:
        self.aligns_scan = aligns_scan

    def reduce(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        keep = state.length - count
        return replace(
            state,
            hidden=state.hidden[:, :keep],
            residual=state.residual[:, :keep],
            positions=state.positions[:, :keep],
            sizes=state.sizes[:, :keep],
            sources=None,
            cls_at=None,
        )


def create(name: str) -> torch.nn.Module:
    """The model with its shipped weights if it has any, else random ones (speed does not depend on them)."""
    return mambatr.create_model(name, pretrained=model_entry(name).weights is not None).eval()


def models(name: str, method: str, target: float) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """The reduced model, its free twin (same removals) and the FLOPs reduction they claim."""
    reduced, twin = create(name), create(name)
    achieved = mambatr.apply(reduced, method, flops_reduction=target).flops_reduction_achieved
    twin.reduction = replace(reduced.reduction, method=FreeSlice(reduced.reduction.method.aligns_scan))
    return reduced, twin, achieved


def compiled(model: torch.nn.Module, images: list[torch.Tensor]):
    fn = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        for batch in images:
            fn(batch)  # compiled here for each batch size
    return fn


def measure(args: argparse.Namespace) -> list[dict]:
    limits = dict(recompile_limit=256, fail_on_recompile_limit_hit=True)
    batches = [int(b) for b in args.batches.split(",")]
    with torch._dynamo.config.patch(**limits):
        dense = create(args.model)
        images = [torch.randn(dense.config.input_shape(b)) for b in batches]
        compiled_models = {("dense", "dense"): compiled(dense, images)}
        achieved = {}
        for method in args.methods.split(","):
            reduced, twin, achieved[method] = models(args.model, method, args.target)
            compiled_models[(method, "method")] = compiled(reduced, images)
            compiled_models[(method, "twin")] = compiled(twin, images)
            print(f"compiled: {method} and its twin", file=sys.stderr)
        keys = [(*key, len(batch)) for key in compiled_models for batch in images]
        cells = [(fn, batch) for fn in compiled_models.values() for batch in images]
        rate = dict(zip(keys, deploy.round_robin(cells, args.rounds, args.warmup, args.runs), strict=True))
    rows = []
    for method, reduction in achieved.items():
        for batch in batches:
            ideal = 1.0 / (1.0 - reduction)
            base, own, free = (rate[("dense", "dense", batch)], rate[(method, "method", batch)],
                               rate[(method, "twin", batch)])  # fmt: skip
            rows.append(dict(method=method, batch=batch, flops_reduction=reduction, ideal=ideal,
                             dense_images_per_s=base, images_per_s=own, twin_images_per_s=free,
                             twin_of_ideal=free / base / ideal, step_share=1.0 - own / free,
                             of_ideal=own / base / ideal))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--methods", default="mtr,hsa,tome")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--batches", default="1")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per cell and round")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per cell and round (median)")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args)
    headers = ["method", "batch", "FLOPs red. %", "dense img/s", "img/s", "twin img/s", "twin / ideal",
               "step share %", "of ideal"]  # fmt: skip
    table = [[r["method"], r["batch"], 100 * r["flops_reduction"], r["dense_images_per_s"], r["images_per_s"],
              r["twin_images_per_s"], r["twin_of_ideal"], 100 * r["step_share"], r["of_ideal"]]
             for r in rows]  # fmt: skip
    print(f"{args.model}, torch {torch.__version__}, {args.threads} threads, compiled (Inductor), "
          f"median of {args.rounds} round-robin rounds")  # fmt: skip
    print(markdown_table(headers, table))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
