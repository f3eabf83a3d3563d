"""GPU figures for impl="triton", in one run (what benchmarks/gpu_session.sh runs): the kernels checked
against the reference on the GPU first (values and every gradient, float32 and bfloat16, with and
without gaps, both scan directions), scan/conv kernel times for one ViM-S layer at batch 64, ViM-S
dense images/s at batch 1, 64 and 128 (float32 and bfloat16 autocast; triton vs the PyTorch path,
and mamba_ssm when it imports), the reduced ViM-S models' speed-ups for every method at 20 / 30 /
40 % with HSA aligned and unaligned (batch 64), and one vim_fmnist_p2 training step.

    python benchmarks/triton_gpu.py --json docs/results/triton_gpu.json

Random weights (speed does not depend on them). ``--budget S`` starts no section after S seconds
(the rest are recorded as skipped); the JSON is rewritten after every section, so a run cut short
keeps what it measured. ``--smoke`` runs every section at toy sizes (a 12x12 two-block Vim, one
timed run) to check the script itself, on a CPU too:
``TRITON_INTERPRET=1 python benchmarks/triton_gpu.py --smoke --device cpu``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import mambatr
from mambatr.benchmark import throughput
from mambatr.ops import backend_info, causal_conv1d, selective_scan
from mambatr.ops.dispatch import cuda_package_available
from mambatr.ops.triton_scan import CHUNKS_VAR
from mambatr.table import markdown_table

METHODS = ("mtr", "hsa", "stm", "utr", "evit", "pumer", "tome")
TOY = dict(img_size=12, patch_size=4, stride=4, embed_dim=8, depth=2, num_classes=5, d_state=2)
# the check's bound on max error / max(1, max |reference|): float32 exp and division lower to the GPU's
# approximate ex2.approx.f32 / div.full.f32 (about 2 ulp each, PTX ISA), which the interpreter computes
# exactly; over a few dozen recurrence steps that stays far below 1e-4. bfloat16: the inputs' rounding
BOUNDS = {"torch.float32": 1e-4, "torch.bfloat16": 5e-2}
PRECISIONS = {"float32": None, "bfloat16 autocast": torch.bfloat16}


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
    """Triton against the reference loops on this device: values and every gradient, float32 and
    bfloat16, scan with and without gaps in both directions, the conv with and without SiLU."""
    batch, length, E, N = (2, 5, 12, 4) if smoke else (2, 37, 70, 16)
    rows = []
    scans = [
        (*case, 1)
        for case in itertools.product((torch.float32, torch.bfloat16), (True, False), (False, True))
    ]
    scans += [
        (dtype, True, reverse, 4) for dtype in (torch.float32, torch.bfloat16) for reverse in (False, True)
    ]
    for dtype, gapped, reverse, chunks in scans:
        inputs = scan_inputs(batch, length, E, N, device, gap=gapped)
        gap = inputs.pop("gap")
        low = {k: v.to(dtype) if v.dim() == 3 else v for k, v in inputs.items()}  # activations rounded
        grad_out = torch.randn(batch, length, E, device=device).to(dtype)
        results = []
        for impl, cast in (("reference", torch.Tensor.float), ("triton", torch.Tensor.clone)):
            leaves = {k: cast(v).detach().requires_grad_() for k, v in low.items()}
            with forward_chunks(chunks):
                y = selective_scan(**leaves, gap=gap, delta_softplus=True, reverse=reverse, impl=impl)
            grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
            results.append((y, grads))
        (y_ref, g_ref), (y, grads) = results
        worst = max(relative_error(a, b) for a, b in zip(grads, g_ref, strict=True))
        case = f"scan B{batch} L{length} E{E} N{N} gap={gapped} reverse={reverse}"
        case += f" {chunks} chunks" if chunks > 1 else ""
        rows.append(_checked(case, dtype, relative_error(y, y_ref), worst))
    for dtype, (silu, reverse) in itertools.product(
        (torch.float32, torch.bfloat16), ((True, False), (False, True))
    ):
        g = torch.Generator().manual_seed(1)
        x, w, b = (torch.randn(*s, generator=g).to(device) for s in ((batch, length, E), (E, 4), (E,)))
        x = x.to(dtype)  # rounded input; the reference runs in float32 on the same values
        grad_out = torch.randn(x.shape, generator=g).to(device).to(dtype)
        outs = []
        for impl, cast in (("reference", torch.Tensor.float), ("triton", torch.Tensor.clone)):
            leaves = [
                cast(x).detach().requires_grad_(),
                w.clone().requires_grad_(),
                b.clone().requires_grad_(),
            ]
            y = causal_conv1d(*leaves, silu=silu, reverse=reverse, impl=impl)
            outs.append((y, torch.autograd.grad(y, leaves, grad_out.to(y.dtype))))
        worst = max(relative_error(a, b) for a, b in zip(outs[1][1], outs[0][1], strict=True))
        case = f"conv B{batch} L{length} E{E} K4 silu={silu} reverse={reverse}"
        rows.append(_checked(case, dtype, relative_error(outs[1][0], outs[0][0]), worst))
    return rows


def _checked(case: str, dtype: torch.dtype, y: float, grads: float) -> dict:
    bound = BOUNDS[str(dtype)]
    return dict(case=case, dtype=str(dtype), y=y, grads=grads, bound=bound, ok=max(y, grads) < bound)


def impls(device: torch.device, *packages: str) -> list[str]:
    """triton and the PyTorch path; "cuda" too when the CUDA packages import (mamba_ssm, causal_conv1d)."""
    packages = packages or ("mamba_ssm", "causal_conv1d")
    cuda = device.type == "cuda" and all(cuda_package_available(p) for p in packages)
    return ["triton", "torch", *(["cuda"] if cuda else [])]


@contextlib.contextmanager
def forward_chunks(chunks: int) -> Iterator[None]:
    """Run the Triton scan's forward in ``chunks`` chunks of time ($MAMBATR_TRITON_CHUNKS)."""
    previous = os.environ.get(CHUNKS_VAR)
    os.environ[CHUNKS_VAR] = str(chunks)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[CHUNKS_VAR]
        else:
            os.environ[CHUNKS_VAR] = previous


def latency(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """Batch 1, where the sequential scan has few programs (ViM-S: 24 per direction on a GPU of 132
    SMs): the Triton scan forward at ViM-S (L 197) and VideoMamba-M K400 (L 1569) shapes, and ViM-S
    dense images/s, sequential against the forward in chunks of time."""
    shapes = [(9, 16, 4)] if smoke else [(197, 768, 16), (1569, 1152, 16)]
    rows = []
    for length, E, N in shapes:
        inputs = scan_inputs(1, length, E, N, device, gap=False)
        inputs.pop("gap")
        for chunks in (1, 4) if smoke else (1, 4, 8, 16, 32):
            with forward_chunks(chunks), torch.no_grad():
                ms = median_ms(
                    lambda inputs=inputs: selective_scan(**inputs, delta_softplus=True, impl="triton"),
                    device,
                    warmup,
                    runs,
                )
            rows.append(
                dict(what=f"scan forward B1 L{length} E{E} N{N}", chunks=chunks, ms=ms, images_per_s=None)
            )
    model = make_model("vim_small", smoke, device)
    model.scan_impl = "triton"
    config = model.config
    images = torch.randn(1, config.in_chans, config.img_size, config.img_size, device=device)
    for chunks in (1, 4) if smoke else (1, 4, 8, 16):
        with forward_chunks(chunks):
            rate = throughput(model, images, warmup, runs)["images_per_s"]
        what = "toy" if smoke else "vim_small"
        rows.append(
            dict(what=f"{what} dense forward, batch 1", chunks=chunks, ms=1e3 / rate, images_per_s=rate)
        )
    return rows


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


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bfloat16 autocast on ``device`` (what mixed-precision users run), or nothing for float32."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def dense(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """ViM-S dense forward images/s at batch 1, 64 and 128, float32 and bfloat16 autocast, per impl."""
    model = make_model("vim_small", smoke, device)
    config = model.config
    rows = []
    for batch, (precision, dtype) in itertools.product((1, 2) if smoke else (1, 64, 128), PRECISIONS.items()):
        images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=device)
        for impl in impls(device):
            model.scan_impl = impl
            with autocast(device, dtype):
                rate = throughput(model, images, warmup, runs)["images_per_s"]
            name = "toy" if smoke else "vim_small"
            rows.append(dict(model=name, batch=batch, precision=precision, impl=impl, images_per_s=rate))
    return rows


def training(device: torch.device, smoke: bool, warmup: int, runs: int) -> list[dict]:
    """One vim_fmnist_p2 training step (AdamW at learning rate 0, batch 128): ms and images/s."""
    model = make_model("vim_fmnist_p2", smoke, device).train()
    config = model.config
    batch = 2 if smoke else 128
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
                model="toy" if smoke else "vim_fmnist_p2",
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
    batch = 1 if smoke else 64
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
    "latency": ("batch 1: sequential vs chunked forward (triton)", latency),
    "reduced": ("reduced ViM-S, batch 64, triton", reduced),
    "training": ("vim_fmnist_p2 training step", training),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, one run: checks the script")
    parser.add_argument("--json", type=Path, help="also write every row here (after every section)")
    parser.add_argument("--budget", type=float, help="seconds: start no section after this many")
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
    warmup, runs = (0, 1) if args.smoke else (args.warmup, args.runs)
    import triton

    start = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    info = backend_info(device)
    print(f"{name}, torch {torch.__version__}, triton {triton.__version__}, backends {info}\n", flush=True)
    results = dict(
        device=name,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        triton=triton.__version__,
        backends=info,
        smoke=args.smoke,
        sections={},
    )
    for key in chosen:
        title, measure = SECTIONS[key]
        if args.budget is not None and time.perf_counter() - start > args.budget:
            results["sections"][title] = dict(skipped=f"past the {args.budget:.0f} s budget")
            print(f"## {title}\n\nskipped: past the {args.budget:.0f} s budget\n", flush=True)
        else:
            began = time.perf_counter()
            rows = (
                measure(device, args.smoke) if key == "check" else measure(device, args.smoke, warmup, runs)
            )
            results["sections"][title] = dict(seconds=time.perf_counter() - began, rows=rows)
            print(f"## {title}\n\n{table(rows)}\n", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    checked = results["sections"].get(SECTIONS["check"][0], {}).get("rows", [])
    failed = [r["case"] + " " + r["dtype"] for r in checked if not r["ok"]]
    if failed:
        print(f"CHECK FAILED (over the bound): {failed}", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
