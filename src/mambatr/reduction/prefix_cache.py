"""Calibration trials that re-run only the blocks they change: the incumbent's block entries, cached.

A greedy calibration trial differs from the incumbent schedule from one block on (the block after which
it removes more tokens); every block before it computes exactly what the incumbent computed. A
``PrefixCache`` keeps what enters each block when the incumbent runs (per batch of calibration images,
within a memory budget: every block when it fits, else evenly spaced ones), and a trial runs from the
latest cached block at or before its first change. The batches and kernels are the ones a full forward
uses, so the logits are the same bits, and the search finds the same schedule (tests/test_calibrate.py).
"""

from __future__ import annotations

import math

import torch

from mambatr.models.backbone import BlockEntry, ReducibleBackbone, Reduction
from mambatr.reduction.base import ReductionMethod
from mambatr.tokens import TokenState

DEFAULT_CACHE_BYTES = 2 * 1024**3  # vim_fmnist_p2 on 500 images keeps all 12 blocks in about 0.9 GB


def first_change(incumbent: dict[int, int], trial: dict[int, int]) -> int:
    """The first block after which ``trial`` removes a different count than ``incumbent`` (0 if none)."""
    layers = incumbent.keys() | trial.keys()
    return min((layer for layer in layers if incumbent.get(layer, 0) != trial.get(layer, 0)), default=0)


class PrefixCache:
    """The incumbent schedule's block entries on the calibration images; logits of trials from them.

    ``logits(removals)`` evaluates a schedule that differs from the incumbent from some block on, and
    keeps the entries it computed while the budget has room; ``accept(removals)`` makes it the incumbent
    (those entries, or re-recorded ones), and forgets the other trials'. Starts dense.
    """

    def __init__(
        self,
        backbone: ReducibleBackbone,
        method: ReductionMethod,
        images: torch.Tensor,
        batch_size: int,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.backbone, self.method = backbone, method
        self.depth = len(backbone.layers)
        self.incumbent: dict[int, int] = {}
        self.blocks_run = 0  # blocks evaluated over all batches, for the speed-up figures
        batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self.entries: list[dict[int, BlockEntry]] = []
        self.kept: set[int] = {0}
        self.budget, self.block_bytes = cache_bytes, 0.0
        self.pending: dict[tuple, list[dict[int, BlockEntry]]] = {}  # this round's trials' entries
        dense = []
        previous, backbone.reduction = backbone.reduction, None
        try:
            with torch.inference_mode():
                for number, batch in enumerate(batches):
                    state = TokenState.initial(backbone.embed(batch), backbone.config.cls_index)
                    first = BlockEntry(0, state, state.hidden, None, None)
                    if number == 0:
                        self.block_bytes = first.nbytes() * len(images) / len(batch)
                        self.kept = self._blocks_within(self.block_bytes, cache_bytes)
                    self.entries.append({0: first})
                    dense.append(self._run(first, self.entries[-1], record_after=-1))
        finally:
            backbone.reduction = previous
        self.dense_logits = torch.cat(dense)  # the dense model's, from the same pass that filled the cache

    def _blocks_within(self, bytes_per_block: float, budget: int) -> set[int]:
        """Block 0 and evenly spaced others, as many as ``budget`` holds (reduced blocks hold fewer
        tokens, so the dense size is an upper bound)."""
        fits = max(1, int(budget // max(bytes_per_block, 1.0)))
        stride = math.ceil(self.depth / fits)
        return set(range(0, self.depth, stride))

    def _run(self, entry: BlockEntry, store: dict[int, BlockEntry], record_after: int | None) -> torch.Tensor:
        """Logits from ``entry`` on; kept entries after block ``record_after`` replace those in ``store``."""

        def record(block: BlockEntry) -> None:
            if block.index > record_after and block.index in self.kept:
                store[block.index] = block

        self.blocks_run += self.depth - entry.index
        features = self.backbone.blocks_from(entry, record if record_after is not None else None)
        return self.backbone.head(features).double()

    @torch.inference_mode()
    def logits(self, removals: dict[int, int]) -> torch.Tensor:
        """(images, classes) float64 logits of the model reduced by ``removals``."""
        start = first_change(self.incumbent, removals)
        after = [layer for layer in self.kept if layer > start]
        held = len(self.kept) + sum(len(trial[0]) for trial in self.pending.values())
        stores = None
        if (held + len(after)) * self.block_bytes <= self.budget:  # room to keep this trial's entries
            stores = [{} for _ in self.entries]
            self.pending[tuple(sorted(removals.items()))] = stores
        return self._trial(removals, start, stores)

    def _trial(
        self, removals: dict[int, int], start: int, stores: list[dict[int, BlockEntry]] | None
    ) -> torch.Tensor:
        """Logits of ``removals`` from the cache; the entries after ``start`` go to ``stores``."""
        begin = max(layer for layer in self.kept if layer <= start)
        active = {layer: count for layer, count in removals.items() if count}
        previous = self.backbone.reduction
        self.backbone.reduction = Reduction(self.method, active) if active else None
        try:
            return torch.cat(
                [
                    self._run(entries[begin], stores[b] if stores else {}, start if stores else None)
                    for b, entries in enumerate(self.entries)
                ]
            )
        finally:
            self.backbone.reduction = previous

    @torch.inference_mode()
    def accept(self, removals: dict[int, int]) -> None:
        """``removals`` becomes the incumbent: the entries after its first change replace the old ones
        (kept from its trial, else computed again)."""
        stores = self.pending.pop(tuple(sorted(removals.items())), None)
        if stores is None:
            stores = [{} for _ in self.entries]
            self._trial(removals, first_change(self.incumbent, removals), stores)
        for entries, recorded in zip(self.entries, stores, strict=True):
            entries.update(recorded)
        self.pending.clear()
        self.incumbent = dict(removals)
