"""Choosing the implementation behind ``selective_scan`` / ``causal_conv1d``, and reporting it.

impl: "auto" (the default, overridable with $MAMBATR_OPS_IMPL), "reference" (plain loops),
"cpu" (C++ kernels), "torch" (vectorised PyTorch, any device), "chunked" (standard tensor ops only, no
loop over time: what ONNX export uses, see mambatr.ops.chunked_scan; the conv as in "torch"),
"triton" (Triton kernels: CUDA tensors, or CPU tensors in Triton's interpreter with TRITON_INTERPRET=1),
"cuda" (mamba_ssm / causal_conv1d).
"auto" picks "cpu" for CPU tensors; for CUDA tensors what is proven first: "cuda" when the CUDA
package imports and the call has no gap (mamba_ssm / causal_conv1d, the official kernels and the
speed baseline GPU users compare against), else "triton" (with or without a gap: HSA's gap-aligned
scan has no CUDA kernel) when triton imports, else "torch". Changing that order needs GPU figures
showing triton as fast (docs/performance.md). An unusable explicit choice raises; nothing falls back
silently.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import torch

from mambatr.ops import _cpu_kernels

IMPLS = ("auto", "reference", "cpu", "torch", "chunked", "triton", "cuda")
ENV_VAR = "MAMBATR_OPS_IMPL"
CUDA_PACKAGES = {"selective_scan": "mamba_ssm", "causal_conv1d": "causal_conv1d"}

_last: dict[str, str] = {}
_used: dict[str, set[str]] = {}


@functools.cache
@torch.compiler.assume_constant_result  # torch.compile runs it while tracing (Dynamo traces past the cache)
def cuda_package_available(package: str) -> bool:
    """Whether ``package`` imports (once per process)."""
    try:
        importlib.import_module(package)
    except Exception:  # a broken CUDA build raises more than ImportError
        return False
    return True


def default_impl() -> str:
    impl = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if impl not in IMPLS:
        raise ValueError(f"${ENV_VAR}={impl!r}: expected one of {IMPLS}")
    return impl


def triton_interpreter() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter (the values triton accepts as true)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def check_triton_kernels(op: str, device: torch.device, interpreted: bool) -> None:
    """Refuse CPU tensors for kernels that were compiled for the GPU (TRITON_INTERPRET set too late)."""
    if device.type != "cuda" and not interpreted:
        raise RuntimeError(
            f"{op}: mambatr's Triton kernels were loaded without TRITON_INTERPRET=1, so they need CUDA "
            f"tensors; to run them on {device}, set TRITON_INTERPRET=1 before the process imports triton"
        )


def _auto(op: str, device: torch.device, cuda_ok: bool) -> str:
    """What "auto" means for ``op`` on ``device``."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda" and cuda_ok and cuda_package_available(CUDA_PACKAGES[op]):
        return "cuda"
    if device.type == "cuda" and cuda_package_available("triton"):
        return "triton"
    return "torch"


def resolve(op: str, impl: str, device: torch.device, cuda_ok: bool = True) -> str:
    """The concrete implementation for ``op`` on ``device``; records it for :func:`last_impl`.

    ``cuda_ok`` is False when the call needs a feature the CUDA package lacks (the scan's gap).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")
    chosen = default_impl() if impl == "auto" else impl
    if chosen == "auto":
        chosen = _auto(op, device, cuda_ok)
    if chosen == "triton":
        if not cuda_package_available("triton"):
            raise RuntimeError(f"{op}: impl='triton' needs the `triton` package (pip install triton)")
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
            raise ValueError(
                f"{op}: impl='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
                f"(Triton's interpreter, slow: for tests); got {device}"
            )
    if chosen == "cpu" and device.type != "cpu":
        raise ValueError(f"{op}: impl='cpu' needs CPU tensors, got {device}")
    if chosen == "cuda":
        if device.type != "cuda":
            raise ValueError(f"{op}: impl='cuda' needs CUDA tensors, got {device}")
        if not cuda_ok:
            raise ValueError(f"{op}: impl='cuda' ({CUDA_PACKAGES[op]}) has no gap support; use 'torch'")
        if not cuda_package_available(CUDA_PACKAGES[op]):
            raise RuntimeError(f"{op}: impl='cuda' needs the `{CUDA_PACKAGES[op]}` package (pip install it)")
    if not torch.compiler.is_compiling():
        # bookkeeping of eager calls only: traced, its read became a guard of every compiled model,
        # and any later call with another impl (an ONNX export runs "chunked") recompiled them all
        _last[op] = chosen
        _used.setdefault(op, set()).add(chosen)
    return chosen


def last_impl() -> dict[str, str]:
    """Which implementation each op used on its most recent call, e.g. {"selective_scan": "cpu"}."""
    return dict(_last)


def impls_used(reset: bool = False) -> dict[str, list[str]]:
    """Every implementation each op used since the last reset (HSA's aligned model runs the dense
    layers on one and the gap-aligned ones on another), e.g. {"selective_scan": ["cuda", "triton"]}."""
    used = {op: sorted(impls) for op, impls in _used.items()}
    if reset:
        _used.clear()
    return used


def backend_info(device: str | torch.device = "cpu") -> dict[str, str]:
    """What "auto" resolves to on ``device`` and the state of each backend (for CLI/bench headers)."""
    device = torch.device(device)
    info = {"default_impl": default_impl()}
    chosen = default_impl()
    calls = [(op, op, True) for op in CUDA_PACKAGES] + [
        ("selective_scan with gap (HSA aligned)", "selective_scan", False)
    ]
    for key, op, cuda_ok in calls:
        info[key] = _auto(op, device, cuda_ok) if chosen == "auto" else chosen
    info["cpu_kernels"] = (
        f"{_cpu_kernels.loaded_from()} ({Path(_cpu_kernels.load()).name}, "
        f"parallel loops on {_cpu_kernels.parallel_threads()} threads)"
        if _cpu_kernels.is_loaded()
        else f"not loaded yet (installed: {_cpu_kernels.installed_library() is not None}, "
        f"first-use build folder {_cpu_kernels.build_dir()})"
    )
    for package in CUDA_PACKAGES.values():
        info[f"{package} (CUDA)"] = "importable" if cuda_package_available(package) else "not installed"
    info["triton"] = "importable" if cuda_package_available("triton") else "not installed"
    return info


def prepare(device: str | torch.device = "cpu", impl: str = "auto") -> None:
    """Load (building once if needed) the kernels ``impl`` resolves to on ``device``, so a timed run
    never includes a build or a library load."""
    if resolve("selective_scan", impl, torch.device(device)) == "cpu":
        _cpu_kernels.load()
