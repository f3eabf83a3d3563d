"""How close the CPU kernels run to this machine's limits, in one run: the scan's state updates/s, the
conv's GB/s next to a plain memory copy, the matmul GFLOP/s, 1- vs 2-thread speed-ups, ViM-S dense
images/s next to DeiT-S (the transformer of the same cost a user would otherwise pick), and a
``vim_fmnist`` training step.

    python benchmarks/roofline.py [--threads 2] [--json out.json]

DeiT-S is timm's ``deit_small_patch16_224`` when timm imports; otherwise the same architecture written
here in plain PyTorch (patch-16 conv, 12 pre-norm blocks of fused attention and a GELU MLP, dim 384,
6 heads), and the table says which one ran. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import mambatr
from mambatr.heap import keep_freed_memory
from mambatr.ops import backend_info, causal_conv1d, selective_scan
from mambatr.table import markdown_table

CONV_FORWARD = "conv forward + SiLU, 64 x 197 x 768, K 4"
MEMORY_COPY = "memory copy, 64 x 197 x 768 float32 (torch copy_)"


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_threads(threads: int, fn: Callable[[], float]) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def scan_inputs(batch: int, length: int, E: int, N: int, grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inputs = {
        "u": torch.randn(batch, length, E, generator=g),
        "delta": torch.randn(batch, length, E, generator=g) * 0.5 - 1,
        "A": -torch.rand(E, N, generator=g) * 8 - 0.5,
        "B": torch.randn(batch, length, N, generator=g),
        "C": torch.randn(batch, length, N, generator=g),
        "D": torch.ones(E),
        "z": torch.randn(batch, length, E, generator=g),
        "delta_bias": torch.randn(E, generator=g) * 0.1,
    }
    return {k: v.requires_grad_(grad) for k, v in inputs.items()}


def scan_forward_seconds(batch: int, length: int, E: int, N: int, runs: int) -> float:
    inputs = scan_inputs(batch, length, E, N, grad=False)
    with torch.inference_mode():
        return median_seconds(lambda: selective_scan(**inputs, delta_softplus=True, impl="cpu"), runs)


def scan_train_seconds(batch: int, length: int, E: int, N: int, runs: int) -> float:
    inputs = scan_inputs(batch, length, E, N, grad=True)
    grad = torch.randn(batch, length, E)

    def step() -> None:
        y = selective_scan(**inputs, delta_softplus=True, impl="cpu")
        torch.autograd.grad(y, list(inputs.values()), grad)

    return median_seconds(step, runs)


def conv_seconds(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, train: bool, runs: int) -> float:
    if not train:
        with torch.inference_mode():
            return median_seconds(lambda: causal_conv1d(x, weight, bias, impl="cpu"), runs)
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    grad = torch.randn_like(x)
    return median_seconds(lambda: torch.autograd.grad(causal_conv1d(*leaves, impl="cpu"), leaves, grad), runs)


class DeiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(attn)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DeiTSmall(nn.Module):
    """timm's deit_small_patch16_224 layer for layer (4.6 GFLOPs), for machines without timm."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 16, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 197, dim))
        self.blocks = nn.Sequential(*(DeiTBlock(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def deit_small() -> tuple[nn.Module, str]:
    try:
        import timm
    except Exception as err:  # timm missing, or its torchvision built for another torch
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
        return DeiTSmall(), f"DeiT-S, plain-PyTorch replica (timm not importable: {reason})"
    return timm.create_model("deit_small_patch16_224"), f"DeiT-S, timm {timm.__version__}"


def images_per_second(model: nn.Module, batch: int, size: int, channels: int, runs: int) -> float:
    images = torch.randn(batch, channels, size, size)
    model.eval()
    with torch.inference_mode():
        return batch / median_seconds(lambda: model(images), runs, warmup=1)


def train_images_per_second(model: nn.Module, batch: int, runs: int) -> float:
    config = model.config
    images = torch.randn(batch, config.in_chans, config.img_size, config.img_size)
    labels = torch.randint(0, config.num_classes, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch / median_seconds(step, runs, warmup=1)


def matmul_gflops(m: int, k: int, n: int, runs: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / median_seconds(lambda: a @ b, runs) / 1e9


def copy_gbps(x: torch.Tensor, runs: int) -> float:
    out = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / median_seconds(lambda: out.copy_(x), runs) / 1e9


def measure(threads: int, quick: bool) -> list[dict]:
    """Rows of (what, figure, unit, 1 thread, `threads` threads)."""
    runs = 3 if quick else 10
    model_runs = max(3, runs // 3)
    scan_fwd = (4, 197, 768, 16)  # one ViM-S layer direction at batch 4
    scan_train = (128, 50, 192, 16)  # one vim_fmnist layer direction at its training batch
    x = torch.randn(64, 197, 768)
    weight, bias = torch.randn(768, 4), torch.randn(768)
    conv_bytes = 2 * x.numel() * 4  # read x once, write y once
    updates = scan_fwd[0] * scan_fwd[1] * scan_fwd[2] * scan_fwd[3]
    vim_small = mambatr.create_model("vim_small")
    deit, deit_name = deit_small()
    vim_fmnist = mambatr.create_model("vim_fmnist")
    cases: list[tuple[str, str, Callable[[], float]]] = [
        (
            "scan forward, B 4 L 197 E 768 N 16 (ViM-S layer)",
            "G state updates/s",
            lambda: updates / scan_forward_seconds(*scan_fwd, runs) / 1e9,
        ),
        (
            "scan fwd+bwd, B 128 L 50 E 192 N 16 (vim_fmnist layer)",
            "ms",
            lambda: 1e3 * scan_train_seconds(*scan_train, runs),
        ),
        (
            CONV_FORWARD,
            "GB/s",
            lambda: conv_bytes / conv_seconds(x, weight, bias, False, runs) / 1e9,
        ),
        ("conv fwd+bwd, 64 x 197 x 768, K 4", "ms", lambda: 1e3 * conv_seconds(x, weight, bias, True, runs)),
        (MEMORY_COPY, "GB/s", lambda: copy_gbps(x, runs)),
        (
            "matmul 1576 x 384 x 1536 (ViM-S in_proj, batch 8)",
            "GFLOP/s",
            lambda: matmul_gflops(1576, 384, 1536, runs),
        ),
        ("ViM-S dense, batch 1", "images/s", lambda: images_per_second(vim_small, 1, 224, 3, runs)),
        (
            "ViM-S dense, batch 8",
            "images/s",
            lambda: images_per_second(vim_small, 8, 224, 3, model_runs),
        ),
        (f"{deit_name}, batch 8", "images/s", lambda: images_per_second(deit, 8, 224, 3, max(3, runs // 3))),
        (
            "vim_fmnist training step, batch 128",
            "images/s",
            lambda: train_images_per_second(vim_fmnist, 128, runs),
        ),
    ]
    rows = []
    for what, unit, fn in tqdm(cases, desc="roofline", leave=False):
        one = with_threads(1, fn)
        many = with_threads(threads, fn)
        rows.append({"what": what, "unit": unit, "1 thread": one, f"{threads} threads": many})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="the second column's thread count (default 2)")
    parser.add_argument("--quick", action="store_true", help="3 timed runs per figure instead of 10")
    parser.add_argument("--json", help="also write the rows and the machine to this JSON file")
    parser.add_argument(
        "--keep-heap", action="store_true", help="glibc: reuse freed memory for large tensors (mambatr.heap)"
    )
    args = parser.parse_args(argv)
    if args.keep_heap and not keep_freed_memory():
        raise RuntimeError("--keep-heap: mallopt refused the thresholds (not glibc?)")
    selective_scan(**scan_inputs(1, 2, 8, 2, grad=False), impl="cpu")  # build / load before timing
    rows = measure(args.threads, args.quick)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    heap = ", glibc heap kept for large tensors (--keep-heap)" if args.keep_heap else ""
    print(f"{cpu} ({isa}), torch {torch.__version__}, kernels: {backend_info('cpu')['cpu_kernels']}{heap}")
    by_name = {r["what"]: r for r in rows}
    many = f"{args.threads} threads"
    for r in rows:
        r["speedup"] = r[many] / r["1 thread"] if r["unit"] != "ms" else r["1 thread"] / r[many]
    print(
        markdown_table(
            ["what", "unit", "1 thread", many, f"{args.threads}-thread speed-up"],
            [[r["what"], r["unit"], r["1 thread"], r[many], r["speedup"]] for r in rows],
        )
    )
    vim, deit = by_name["ViM-S dense, batch 8"], next(r for r in rows if r["what"].startswith("DeiT-S"))
    conv, copy = by_name[CONV_FORWARD], by_name[MEMORY_COPY]
    print(
        f"\nViM-S / DeiT-S images/s at batch 8, {many}: {vim[many] / deit[many]:.2f}; "
        f"conv / memory copy GB/s, {many}: {conv[many] / copy[many]:.2f}"
    )
    if args.json:
        info = {"cpu": cpu, "isa": isa, "torch": torch.__version__, "platform": platform.platform()}
        info["keep_heap"] = args.keep_heap
        with open(args.json, "w") as f:
            json.dump({"machine": info, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
