"""What the C++ CPU kernels are built from and for: sources, compiler flags, the -march target.

setup.py executes this file on its own while mambatr is being installed, so it imports only the
standard library and torch. ``_kernels.json`` beside an installed library records ``build_info()``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("scan.cpp", "conv.cpp", "parallel.cpp")
MARCH_ENV = "MAMBATR_CPU_MARCH"
LDFLAGS = ["-fopenmp"]


@functools.cache
def cpu_tag() -> str:
    """Short hash of the CPU model and feature flags (the -march=native target)."""
    text = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def march() -> str:
    """The -march target: $MAMBATR_CPU_MARCH, else native."""
    value = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"${MARCH_ENV}={value!r} is not a -march name (e.g. native, haswell, x86-64-v3)")
    return value


def cflags() -> list[str]:
    return ["-O3", f"-march={march()}", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall"]


@functools.cache
def sources_tag() -> str:
    """Short hash of the kernel sources: an installed library built from other sources is stale."""
    digest = hashlib.sha1()
    for path in sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def build_info() -> dict[str, str]:
    """What a build is for; written beside the installed library, compared before loading it."""
    target = march()
    return {
        "march": target,
        "cpu": cpu_tag() if target == "native" else "any",
        "torch": torch.__version__,
        "sources": sources_tag(),
    }
