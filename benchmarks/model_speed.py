"""Whole-model inference and training images/s with mambatr's C++ kernels vs the pure-PyTorch path,
measured in one run (ratios printed). Random weights: speed does not depend on them.

    python benchmarks/model_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mambatr
from mambatr.table import markdown_table

CASES = [("vim_fmnist", 128), ("vim_tiny", 8)]  # (model, batch): the testbed and ViM-T at 224


def images_per_s(model: torch.nn.Module, batch: int, train: bool, runs: int) -> float:
    config = model.config
    images = torch.randn(batch, config.in_chans, config.img_size, config.img_size)
    labels = torch.randint(0, config.num_classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step() -> None:
        if train:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(images)

    step()  # warm-up (and kernel build)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, batch in CASES:
        model = mambatr.create_model(name)
        for mode in ("inference", "training"):
            rates = {}
            for impl in ("cpu", "torch"):
                model.scan_impl = impl
                rates[impl] = images_per_s(model, batch, mode == "training", args.runs)
            rows.append([name, batch, mode, rates["cpu"], rates["torch"], rates["cpu"] / rates["torch"]])
    print(f"{args.threads} threads, median of {args.runs} runs\n")
    print(
        markdown_table(["model", "batch", "mode", "C++ kernels img/s", "PyTorch path img/s", "ratio"], rows)
    )


if __name__ == "__main__":
    main()
