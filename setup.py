"""Compiles the C++ CPU kernels into the package at install time (metadata lives in pyproject.toml).

torch must be importable while building, so install with ``pip install --no-build-isolation [-e] .``
(scripts/setup.sh does): with pip's default build isolation torch is absent from the build environment,
nothing is compiled here, and the kernels are compiled on first use instead
(see src/mambatr/ops/_cpu_kernels.py).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from setuptools import setup

OPS = Path(__file__).resolve().parent / "src" / "mambatr" / "ops"


def kernel_build() -> dict:
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print(
            "mambatr: torch is not importable in this build environment; the C++ kernels will be compiled "
            "on first use. Install with `pip install --no-build-isolation .` to compile them now.",
            file=sys.stderr,
        )
        return {}
    spec = importlib.util.spec_from_file_location("mambatr_kernel_build", OPS / "kernel_build.py")
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    (OPS / "_kernels.json").write_text(json.dumps(kernels.build_info()) + "\n")
    extension = CppExtension(
        "mambatr.ops._kernels",
        sources=[f"src/mambatr/ops/csrc/{source}" for source in kernels.SOURCES],
        include_dirs=[str(OPS / "csrc")],
        extra_compile_args=kernels.cflags(),
        extra_link_args=kernels.LDFLAGS,
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**kernel_build())
