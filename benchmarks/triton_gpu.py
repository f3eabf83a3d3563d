"""GPU figures for impl="triton", in one run: the kernels checked against the reference on the GPU,
scan/conv kernel times, ViM-S dense images/s at batch 64 and 128 (triton vs the PyTorch path, and
mamba_ssm when it imports), one vim_fmnist training step, and the reduced ViM-S models' speed-ups
for every method at 20 / 30 / 40 % with HSA aligned and unaligned (triton kernels, batch 64).

    python benchmarks/triton_gpu.py --json docs/results/triton_gpu.json

Random weights (speed does not depend on them), float32. ``--smoke`` runs every section at toy sizes
(a 16x16 two-block Vim, one timed run) to check the script itself, on a CPU too:
``TRITON_INTERPRET=1 python benchmarks/triton_gpu.py --smoke --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import mambatr
from mambatr.benchmark import throughput
from mambatr.ops import backend_info, causal_conv1d, selective_scan
from mambatr.ops.dispatch import cuda_package_available
from mambatr.table import markdown_table

METHODS = ("mtr", "hsa", "stm", "utr", "evit", "pumer", "tome")
TOY = dict(img_size=16, patch_size=4, stride=4, embed_dim=16, depth=2, num_classes=5, d_state=4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def scan_inputs(batch: int, length: int, E: int, N: int, device: torch.device, gap: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    inputs = dict(
        u=rand(batch, length, E),
        delta=rand(batch, length, E) * 0.5,
        A=-torch.rand(E, N, generator=g) * 2 - 0.1,
        B=rand(batch, length, N),
        C=rand(batch, length, N),
        D=rand(E),
        z=rand(batch, length, E),
        delta_bias=rand(E) * 0.3,
    )
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["gap"] = torch.randint(0, 3, (batch, length), generator=g).to(device) if gap else None
    return inputs


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1)).item()


def check_kernels(device: torch.device, smoke: bool) -> list[dict]:
    """Triton against the reference loops on this device: values and every gradient, float32 and bf16."""
    batch, length, E, N = (2, 5, 12, 4) if smoke else (2, 37, 70, 16)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for reverse in (False, True):
            inputs = scan_inputs(batch, length, E, N, device, gap=True)
            gap = inputs.pop("gap")
            low = {k: v.to(dtype) if v.dim() == 3 else v for k, v in inputs.items()}  # activations rounded
            grad_out = torch.randn(batch, length, E, device=device).to(dtype)
            results = []
            for impl, cast in (("reference", torch.Tensor.float), ("triton", torch.Tensor.clone)):
                leaves = {k: cast(v).detach().requires_grad_() for k, v in low.items()}
                y = selective_scan(**leaves, gap=gap, delta_softplus=True, reverse=reverse, impl=impl)
                grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
                results.append((y, grads))
            (y_ref, g_ref), (y, grads) = results
            worst = max(relative_error(a, b) for a, b in zip(grads, g_ref, strict=True))
            case = f"scan B{batch} L{length} E{E} N{N} gap reverse={reverse}"
            rows.append(dict(case=case, dtype=str(dtype), y=relative_error(y, y_ref), grads=worst))
    for silu, reverse in ((True, False), (False, True)):
        g = torch.Generator().manual_seed(1)
        x, w, b = (torch.randn(*s, generator=g).to(device) for s in ((batch, length, E), (E, 4), (E,)))
        grad_out = torch.randn(x.shape, generator=g).to(device)
        outs = []
        for impl in ("reference", "triton"):
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            y = causal_conv1d(*leaves, silu=silu, reverse=reverse, impl=impl)
            outs.append((y, torch.autograd.grad(y, leaves, grad_out)))
        worst = max(relative_error(a, b) for a, b in zip(outs[1][1], outs[0][1], strict=True))
        case = f"conv B{batch} L{length} E{E} K4 silu={silu} reverse={reverse}"
        rows.append(
            dict(case=case, dtype="torch.float32", y=relative_error(outs[1][0], outs[0][0]), grads=worst)
        )
    return rows


def impls(device: torch.device, *packages: str) -> list[str]:
    """triton and the PyTorch path; "cuda" too when the CUDA packages import (mamba_ssm, causal_conv1d)."""
    packages = packages or ("mamba_ssm", "causal_conv1d")
    cuda = device.type == "cuda" and all(cuda_package_available(p) for p in packages)
    return ["triton", "torch", *(["cuda"] if cuda else [])]


def kernel_times(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """One ViM-S layer direction: scan forward, scan forward+backward, conv forward+backward (ms)."""
    batch, length, E, N = (2, 9, 16, 4) if smoke else (64, 197, 768, 16)
    inputs = scan_inputs(batch, length, E, N, device, gap=False)
    inputs.pop("gap")
    scan_leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    conv_leaves = [
        torch.randn(*s, device=device, requires_grad=True) for s in ((batch, length, E), (E, 4), (E,))
    ]
    rows = []
    for impl in impls(device, "mamba_ssm"):
        scan = lambda impl=impl: selective_scan(**scan_leaves, delta_softplus=True, impl=impl)
        scan_train = lambda scan=scan: torch.autograd.grad(scan().sum(), list(scan_leaves.values()))
        conv_train = lambda impl=impl: torch.autograd.grad(
            causal_conv1d(*conv_leaves, impl=impl).sum(), conv_leaves
        )
        with torch.no_grad():
            forward = median_ms(scan, device, warmup, runs)
        train = median_ms(scan_train, device, warmup, runs)
        conv = median_ms(conv_train, device, warmup, runs) if impl in impls(device, "causal_conv1d") else None
        shape = f"B{batch} L{length} E{E} N{N}"
        rows.append(
            dict(impl=impl, shape=shape, scan_fwd_ms=forward, scan_fwd_bwd_ms=train, conv_fwd_bwd_ms=conv)
        )
    return rows


def make_model(name: str, smoke: bool, device: torch.device) -> torch.nn.Module:
    model = mambatr.create_model("vim_custom", **TOY) if smoke else mambatr.create_model(name)
    return model.to(device)


def dense(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """ViM-S dense forward images/s at batch 64 and 128 for each implementation."""
    model = make_model("vim_small", smoke, device)
    config = model.config
    rows = []
    for batch in (2, 4) if smoke else (64, 128):
        images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=device)
        for impl in impls(device):
            model.scan_impl = impl
            rate = throughput(model, images, warmup, runs)["images_per_s"]
            rows.append(
                dict(model="toy" if smoke else "vim_small", batch=batch, impl=impl, images_per_s=rate)
            )
    return rows


def training(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """One vim_fmnist training step (AdamW at learning rate 0, batch 128): ms and images/s."""
    model = make_model("vim_fmnist", smoke, device).train()
    config = model.config
    batch = 4 if smoke else 128
    images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=device)
    labels = torch.randint(0, config.num_classes, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = []
    for impl in impls(device):
        model.scan_impl = impl
        ms = median_ms(step, device, warmup, runs)
        rows.append(
            dict(
                model="toy" if smoke else "vim_fmnist",
                batch=batch,
                impl=impl,
                step_ms=ms,
                images_per_s=batch * 1e3 / ms,
            )
        )
    return rows


def reduced(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """Every method at 20/30/40 % on ViM-S, batch 64, triton kernels; HSA aligned and unaligned. The
    dense model is measured right before each reduced one."""
    model = make_model("vim_small", smoke, device).eval()
    model.scan_impl = "triton"
    config = model.config
    batch = 2 if smoke else 64
    images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=device)
    variants = [(m, {}) for m in METHODS] + [("hsa", {"align": False})]
    rows = []
    for method, options in variants:
        for target in (None,) if smoke else (0.2, 0.3, 0.4):
            # the toy model cannot reach every FLOPs target: it gets a fixed amount (STM: k tokens)
            amount = dict(flops_reduction=target) if target else dict(ratio=2.0 if method == "stm" else 0.25)
            mambatr.remove(model)
            dense_rate = throughput(model, images, warmup, runs)["images_per_s"]
            report = mambatr.apply(model, method, **amount, **options)
            result = throughput(model, images, warmup, runs)
            mambatr.remove(model)
            ideal = 1 / (1 - report.flops_reduction_achieved)
            speedup = result["images_per_s"] / dense_rate
            name = method
            if method == "hsa":
                name += " aligned" if options.get("align", True) else " unaligned"
            rows.append(
                dict(
                    method=name,
                    target=target,
                    flops_reduction=report.flops_reduction_achieved,
                    dense_images_per_s=dense_rate,
                    images_per_s=result["images_per_s"],
                    speedup=speedup,
                    ideal=ideal,
                    of_ideal=speedup / ideal,
                    reduction_share=result["reduction_share"],
                )
            )
    return rows


def table(rows: list[dict]) -> str:
    return markdown_table(list(rows[0]), [list(r.values()) for r in rows]) if rows else "(none)"


SECTIONS = {
    "check": (
        "check: triton vs reference on this device (max error / max(1, max |reference|))",
        check_kernels,
    ),
    "kernels": ("kernels: one ViM-S layer direction (ms, median)", kernel_times),
    "dense": ("ViM-S dense forward", dense),
    "training": ("vim_fmnist training step", training),
    "reduced": ("reduced ViM-S, batch 64, triton", reduced),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, one run: checks the script")
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args(argv)
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; expected a subset of {list(SECTIONS)}")
    device = torch.device(args.device)
    warmup, runs = (1, 1) if args.smoke else (args.warmup, args.runs)
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(
        f"{name}, torch {torch.__version__}, triton {triton.__version__}, backends {backend_info(device)}\n"
    )
    results = {"device": name}
    for key in chosen:
        title, measure = SECTIONS[key]
        rows = (
            measure(device, args.smoke)
            if measure is check_kernels
            else measure(device, args.smoke, warmup, runs)
        )
        results[title] = rows
        print(f"## {title}\n\n{table(rows)}\n", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
