"""Wall-clock throughput of a dense and a reduced model, measured in the same run.

As ToMe's ``utils.benchmark``: warm-up runs are thrown away, the device is synchronised around each
timed run, and the figure is images per second. Repeated runs give a median and a spread; the time
spent inside the reduction steps is measured separately, as a share of the reduced model's time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm import tqdm

from mambatr.reduction.api import intercept_reduction


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def reduction_timer(model: nn.Module, device: torch.device) -> Iterator[list[float]]:
    """Collect the seconds spent in each call of the model's reduction step (empty when dense)."""
    spent: list[float] = []

    def timed(reduce, *args):
        _sync(device)
        start = time.perf_counter()
        out = reduce(*args)
        _sync(device)
        spent.append(time.perf_counter() - start)
        return out

    with intercept_reduction(model, timed):
        yield spent


@torch.inference_mode()
def throughput(
    model: nn.Module,
    images: torch.Tensor,
    warmup: int = 3,
    runs: int = 10,
    progress: bool = False,
    desc: str = "bench",
) -> dict:
    """images/s over ``runs`` timed forward passes of one batch: median, min, max, and the share of
    time inside reduction steps. ``progress`` counts the passes on stderr, outside the timed part."""
    device = images.device
    model.eval()
    times, reduce_shares = [], []
    with tqdm(total=warmup + runs, desc=desc, unit="pass", disable=not progress, leave=False) as bar:
        for _ in range(warmup):
            model(images)
            bar.update()
        for _ in range(runs):
            with reduction_timer(model, device) as spent:
                _sync(device)
                start = time.perf_counter()
                model(images)
                _sync(device)
                elapsed = time.perf_counter() - start
            times.append(elapsed)
            reduce_shares.append(sum(spent) / elapsed)
            bar.update()
    rates = sorted(len(images) / t for t in times)
    return {
        "images_per_s": statistics.median(rates),
        "images_per_s_min": rates[0],
        "images_per_s_max": rates[-1],
        "reduction_share": statistics.median(reduce_shares),
        "runs": runs,
        "batch_size": len(images),
    }
