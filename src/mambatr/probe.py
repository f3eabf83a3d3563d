"""Fragility probe: top-1 (test split; val for decisions) after dropping N patch tokens after block k.

No importance is computed: the dropped tokens are chosen from outside, in one of two orders,

- ``random``: a fixed random set of token positions per seed, the same for every image (several seeds
  averaged): what any reduction costs when its choice carries no information;
- ``background``: per image, the N tokens whose input patch has the lowest energy (sum of squared pixel
  values in [0, 1]; ties by position): background first, what a centred-object dataset suggests is
  the cheapest to drop.

A testbed on which training-free methods can be told apart should lose little when a few tokens go
early; the probe says whether it does (docs/testbed.md, "Fragility probe"). It runs through the same
hook as the methods (``FixedPrune`` is a ``ReductionMethod`` set as the backbone's ``reduction``):
pruned tokens leave hidden and residual streams after block k, later blocks see the shorter sequence,
the class token stays and the order is kept.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mambatr.evaluate import evaluate, tensor_batches
from mambatr.models.backbone import BackboneConfig, BlockInternals, ReducibleBackbone
from mambatr.reduction.api import Reduction
from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.plan import make_plan
from mambatr.reduction.schedule import check_layers
from mambatr.runs import RunFolder
from mambatr.table import markdown_table
from mambatr.tokens import TokenState

ORDERS = ("random", "background")
AFTER_FRACTIONS = (1 / 6, 1 / 2, 5 / 6)  # early, middle, late: after blocks 2, 6, 10 of 12
REMOVE_FRACTIONS = (0.1, 0.2)  # of the patch tokens: 5 and 10 of 49


def default_after(depth: int) -> list[int]:
    """Blocks to prune after: 1/6, 1/2 and 5/6 of the depth, never the last block (it would save nothing)."""
    if depth < 2:
        raise ValueError(f"a depth-{depth} model has no block to prune after (the last one saves nothing)")
    return sorted({min(depth - 2, int(depth * f + 0.5)) for f in AFTER_FRACTIONS})


def default_remove(num_patches: int) -> list[int]:
    """Tokens to drop: about 10 % and 20 % of the patch tokens (at least one)."""
    return sorted({max(1, int(num_patches * f + 0.5)) for f in REMOVE_FRACTIONS})


def parse_ints(text: str | None, flag: str) -> list[int] | None:
    """Comma-separated integers from the command line; None when the flag was not given."""
    if text is None:
        return None
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None


def check_remove(remove: Sequence[int], num_patches: int) -> list[int]:
    """Sorted distinct token counts, each leaving at least one patch token."""
    bad = [count for count in remove if not 0 <= count < num_patches]
    if bad:
        raise ValueError(
            f"--remove {bad}: the model has {num_patches} patch tokens; remove 0..{num_patches - 1}"
        )
    return sorted(set(remove))


def token_priority(patch_priority: torch.Tensor, config: BackboneConfig) -> torch.Tensor:
    """(B, M) per patch -> (B, L) per original token position, the class token's slot at +inf (kept)."""
    index = config.cls_index
    if index is None:
        return patch_priority
    keep = torch.full_like(patch_priority[:, :1], math.inf)
    return torch.cat((patch_priority[:, :index], keep, patch_priority[:, index:]), dim=1)


def random_priority(seed: int, config: BackboneConfig) -> torch.Tensor:
    """(1, L): each patch's rank in a permutation drawn from ``seed``; the lowest ranks are dropped."""
    num_patches = config.seq_len - int(config.has_cls)
    order = torch.randperm(num_patches, generator=torch.Generator().manual_seed(seed))
    rank = torch.empty(num_patches).scatter_(0, order, torch.arange(num_patches, dtype=torch.float32))
    return token_priority(rank[None], config)


def patch_energy(samples: torch.Tensor, config: BackboneConfig) -> torch.Tensor:
    """(B, M) sum of squared pixel values (uint8 / 255) over each patch token's input window.

    ``samples`` are the testbed's uint8 images (B, H, W) or clips (B, T, H, W); patches in the token
    order (frame by frame, raster). The window is ``patch_size`` wide every ``stride`` px (PlainMamba's
    conv stem tokens: its nominal patch, the image padded at the bottom and right as its "corner" padding).
    """
    pixels = samples.float().div(255).reshape(config.input_shape(samples.shape[0]))
    if pixels.ndim == 5:  # (B, C, T, H, W): every frame is a grid of patches
        pixels = pixels.transpose(1, 2).flatten(0, 1)
    patch = config.patch_size
    stride = getattr(config, "stride", patch)
    pad = max(0, (config.grid - 1) * stride + patch - pixels.shape[-1])
    power = F.pad(pixels.pow(2).sum(dim=1, keepdim=True), (0, pad, 0, pad))
    energy = F.unfold(power, patch, stride=stride).sum(dim=1)  # (B * T, grid**2)
    return energy.reshape(samples.shape[0], -1)


class FixedPrune(ReductionMethod):
    """Drop the ``count`` reducible tokens of lowest ``priority`` (set from outside per batch): a probe,
    not a method, so it is not in the registry. Ties go to the earlier position."""

    name = "fixed_prune"

    def __init__(self) -> None:
        super().__init__()
        self.priority: torch.Tensor | None = None  # (B or 1, L) per original token position

    def max_removal(self, tokens: int, has_cls: bool) -> int:
        return max(0, tokens - int(has_cls) - 1)

    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        return 0

    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        if self.priority is None:
            raise ValueError("fixed_prune: no priority set for this batch")
        priority = self.priority.to(state.positions.device).expand(state.positions.shape[0], -1)
        score = torch.gather(priority, 1, state.positions).masked_fill(~state.reducible_mask(), math.inf)
        order = score.argsort(dim=1, stable=True)  # positions are sorted: ties keep the earlier first
        return make_plan(state, order[:, count:], order[:, :count]).apply(state)


class PrunedModel(nn.Module):
    """Takes uint8 samples: sets the batch's pruning priority (``order``), then runs the model on
    ``to_input(samples)``. The model is reduced by ``FixedPrune`` wherever its ``reduction`` says."""

    def __init__(
        self,
        model: ReducibleBackbone,
        method: FixedPrune,
        to_input: Callable[[torch.Tensor], torch.Tensor],
        order: str = "random",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.model, self.method, self.to_input = model, method, to_input
        self.fixed = random_priority(seed, model.config) if order == "random" else None

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        config = self.model.config
        if self.fixed is None:  # background: this batch's own patch energies
            self.method.priority = token_priority(patch_energy(samples, config), config)
        else:
            self.method.priority = self.fixed
        return self.model(self.to_input(samples))


Batch = tuple[torch.Tensor, torch.Tensor]


def _counted(batches: Iterable[Batch], bar: tqdm) -> Iterator[Batch]:
    """The batches, advancing the progress bar by each one's images."""
    for inputs, labels in batches:
        yield inputs, labels
        bar.update(len(labels))


def run_probe(
    model: ReducibleBackbone,
    samples: torch.Tensor,
    labels: torch.Tensor,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    after: Sequence[int] | None = None,
    remove: Sequence[int] | None = None,
    seeds: int = 3,
    batch_size: int = 256,
    progress: bool = True,
    run: RunFolder | None = None,
) -> dict:
    """Dense top-1, then one row per (after, remove, order): ``random`` averaged over ``seeds`` seeds
    (mean and sample std), ``background`` deterministic. ``after`` / ``remove`` default to the model's
    depth and patch count (``default_after``, ``default_remove``). With ``run``, each evaluation's
    top-1 is kept in the run folder as it finishes, and those found there are not evaluated again."""
    if not isinstance(model, ReducibleBackbone):
        raise TypeError(f"the probe needs a mambatr backbone, got {type(model).__name__}")
    config = model.config
    num_patches = config.seq_len - int(config.has_cls)
    after = check_layers(after, config.depth) if after is not None else default_after(config.depth)
    remove = check_remove(remove, num_patches) if remove is not None else default_remove(num_patches)
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    method = FixedPrune()
    runs = 1 + len(after) * len(remove) * (seeds + 1)
    bar = tqdm(total=runs * len(samples), desc="probe", unit="img", disable=not progress, leave=False)

    def top1(order: str, seed: int = 0) -> float:
        key = cell_key(model.reduction, order, seed)
        kept = run.done(key) if run is not None else None
        if kept is not None:
            bar.update(len(samples))
            return kept
        batches = tensor_batches(samples, labels, batch_size, to_input=lambda x: x)
        pruned = PrunedModel(model, method, to_input, order, seed)
        result = evaluate(pruned, _counted(batches, bar), progress=False)["top1"]
        return run.save(key, result) if run is not None else result

    previous = model.reduction
    try:
        model.reduction = None
        dense = top1("random")
        rows = []
        for block in after:
            for count in remove:
                model.reduction = Reduction(method, {block: count})
                scores = [top1("random", seed) for seed in range(seeds)]
                mean, std = statistics.fmean(scores), statistics.stdev(scores) if seeds > 1 else 0.0
                row = {"after": block, "remove": count}
                rows.append({**row, "order": "random", "top1": mean, "std": std, "seeds": seeds})
                rows.append(
                    {**row, "order": "background", "top1": top1("background"), "std": 0.0, "seeds": 1}
                )
    finally:
        model.reduction = previous
        bar.close()
    return {"dense_top1": dense, "images": len(samples), "patch_tokens": num_patches, "rows": rows}


def cell_key(reduction: Reduction | None, order: str, seed: int) -> str:
    """An evaluation's cell key in a run folder: ``dense``, ``after2_remove5_random_seed1``, ..."""
    if reduction is None:
        return "dense"
    ((block, count),) = reduction.removals.items()
    what = f"after{block}_remove{count}_{order}"
    return f"{what}_seed{seed}" if order == "random" else what


def probe_table(model_name: str, result: dict) -> str:
    """A title line and a Markdown table of ``run_probe``'s result, dense first."""
    dense = result["dense_top1"]
    rows = [["-", 0, "dense", f"{dense:.2f}", "", ""]]
    for row in result["rows"]:
        std = f"{row['std']:.2f}" if row["seeds"] > 1 else ""
        change = f"{row['top1'] - dense:+.2f}"
        rows.append([row["after"], row["remove"], row["order"], f"{row['top1']:.2f}", change, std])
    title = (
        f"{model_name}: {result['images']:,} {result.get('split', 'test')} images, "
        f"{result['patch_tokens']} patch tokens; "
        "random: mean and sample std over seeds"
    )
    headers = ["after block", "removed", "order", "top-1 %", "change (points)", "std"]
    return f"{title}\n{markdown_table(headers, rows)}"
