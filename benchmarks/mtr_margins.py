"""How near MTR's decisions come to a tie on each image: where another runtime's rounding can flip them.

    python benchmarks/mtr_margins.py --model vim_fmnist_p2 --flops-reduction 0.3 [--split test]
        [--limit N] [--image I ...] [--top 10] [--threads 1] [--json]

MTR makes two discrete choices per reduction layer: the cut of the Δ ranking into keep / target /
source, and each source's most similar target. An exported model computes Δ and the similarities with
other kernels (onnxruntime's MatMul rounds differently from PyTorch's), so an image whose scores at a
cut, or whose two best targets for a source, are within float32 rounding can be reduced differently
there, and its logits then differ by what the swapped tokens carried. For every image this prints the
smallest relative score gap at each cut, (s_a - s_b) / |s_a|, and the smallest gap between a source's two
best cosine similarities, over all layers, eager float32; the ``--top`` closest images, and any
``--image`` asked for (e.g. the ``worst_image`` of ``mambatr export --json``), by test-split index.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from tqdm import tqdm

import mambatr
from mambatr.data.tasks import TESTBEDS
from mambatr.models import model_entry
from mambatr.reduction.mtr import MTR
from mambatr.reduction.ranking import ranked
from mambatr.table import markdown_table
from mambatr.tokens import gather_tokens

KINDS = ("keep/target", "target/source", "assignment")


class MarginRecorder:
    """Wraps ``MTR.step`` to keep, per image, the smallest gap of each kind seen so far: relative score
    gaps at the two cuts, and the absolute gap between a source's two best cosine similarities."""

    def __init__(self) -> None:
        self.gaps: dict[str, torch.Tensor] = {}
        self._step = MTR.step

    def __enter__(self) -> MarginRecorder:
        recorder = self

        def step(method: MTR, state, internals, count: int):
            recorder.record(method, state, internals, count)
            return recorder._step(method, state, internals, count)

        MTR.step = step
        return self

    def __exit__(self, *exc: object) -> None:
        MTR.step = self._step

    def reset(self, images: int) -> None:
        self.gaps = {kind: torch.full((images,), math.inf) for kind in KINDS}

    def record(self, method: MTR, state, internals, count: int) -> None:
        scores = method.scores(state, internals).float()
        protected = int(state.cls_position is not None)
        ordered = scores.masked_fill(~state.reducible_mask(), math.inf).sort(dim=1, descending=True).values
        cuts = (("keep/target", protected + count - 1), ("target/source", state.length - count - 1))
        for kind, above in cuts:
            high, low = ordered[:, above], ordered[:, above + 1]
            self.keep_smaller(kind, (high - low) / high.abs().clamp_min(1e-30))
        order = ranked(state, scores)
        targets = order[:, protected + count : state.length - count]
        sources = order[:, state.length - count :]
        hidden = torch.nn.functional.normalize(state.hidden.float(), dim=-1)
        similarity = gather_tokens(hidden, sources) @ gather_tokens(hidden, targets).transpose(1, 2)
        best_two = similarity.topk(2, dim=-1).values
        self.keep_smaller("assignment", (best_two[..., 0] - best_two[..., 1]).amin(-1))

    def keep_smaller(self, kind: str, gap: torch.Tensor) -> None:
        self.gaps[kind] = torch.minimum(self.gaps[kind], gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_fmnist_p2")
    parser.add_argument("--flops-reduction", type=float, default=0.3)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    parser.add_argument("--image", type=int, action="append", default=[], help="report this image too")
    parser.add_argument("--top", type=int, default=10, help="how many of the closest images to list")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mambatr.create_model(args.model, pretrained=True).eval()
    mambatr.apply(model, "mtr", flops_reduction=args.flops_reduction)
    testbed = TESTBEDS[model_entry(args.model).dataset]
    images = testbed.load(args.split, None)[0][: args.limit]
    gaps: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    with MarginRecorder() as recorder, torch.inference_mode():
        for start in tqdm(range(0, len(images), args.batch_size), desc="margins", unit="batch"):
            batch = testbed.to_input(images[start : start + args.batch_size])
            recorder.reset(len(batch))
            model(batch)
            for kind in KINDS:
                gaps[kind].append(recorder.gaps[kind])
    every = {kind: torch.cat(parts) for kind, parts in gaps.items()}
    closest = torch.stack(list(every.values())).amin(0).argsort()[: args.top].tolist()
    listed = closest + [i for i in args.image if i not in closest]
    summary = {
        "model": args.model,
        "flops_reduction": args.flops_reduction,
        "images": len(images),
        "below_1e-5": {kind: int((gap < 1e-5).sum()) for kind, gap in every.items()},
        "median": {kind: float(gap.median()) for kind, gap in every.items()},
        "rows": [{"image": i, **{kind: float(every[kind][i]) for kind in KINDS}} for i in listed],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    table = [[row["image"], *(f"{row[kind]:.2e}" for kind in KINDS)] for row in summary["rows"]]
    print(markdown_table(["image", *(f"smallest {kind} gap" for kind in KINDS)], table))
    counts = ", ".join(f"{kind} {n}" for kind, n in summary["below_1e-5"].items())
    medians = ", ".join(f"{kind} {m:.2e}" for kind, m in summary["median"].items())
    print(f"{summary['images']} images; gap below 1e-5: {counts}; medians: {medians}")


if __name__ == "__main__":
    main()
