"""Selective scan and depthwise causal conv for Vision Mamba, in mambatr's (batch, length, E) layout.

``selective_scan`` / ``causal_conv1d`` dispatch to the C++ CPU kernels, the Triton kernels (CUDA),
mamba_ssm's CUDA kernels, a vectorised PyTorch path or the reference loops (``impl=``, see
:mod:`mambatr.ops.dispatch`).
"""

from mambatr.ops import _cpu_kernels
from mambatr.ops.conv import causal_conv1d, causal_conv1d_torch
from mambatr.ops.dispatch import IMPLS, backend_info, last_impl, prepare
from mambatr.ops.reference import causal_conv1d_reference, selective_scan_reference
from mambatr.ops.scan import selective_scan, selective_scan_torch

_cpu_kernels.load_installed()

__all__ = [
    "IMPLS",
    "backend_info",
    "causal_conv1d",
    "causal_conv1d_reference",
    "causal_conv1d_torch",
    "last_impl",
    "prepare",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]
