"""Build and load the C++ CPU kernels (selective scan, causal conv) on first use.

The extension is compiled with ``torch.utils.cpp_extension.load`` into torch's extensions cache
(``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``) and registers its ops as
``torch.ops.mambatr.*``. It is compiled for the host CPU (-march=native), so the build name carries a
hash of the CPU's feature flags: a cache shared between different machines never loads a binary
built for another instruction set. ``$MAMBATR_CPU_MARCH`` (e.g. ``haswell`` for AVX2 without AVX-512)
builds for another target under its own name: a portable build, or a test of the AVX2 code path on an
AVX-512 machine. It is compiled with OpenMP, linked against the runtime torch already loaded, so
``at::parallel_for`` spreads the kernels over torch's intra-op threads.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("scan.cpp", "conv.cpp", "parallel.cpp")
MARCH_ENV = "MAMBATR_CPU_MARCH"
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded: str | None = None


def _cpu_tag() -> str:
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


def extension_name() -> str:
    target = march()
    suffix = "" if target == "native" else "_" + "".join(c if c.isalnum() else "_" for c in target)
    return f"mambatr_cpu_{_cpu_tag()}{suffix}"


def build_dir() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(extension_name(), verbose=False))


def _missing_tools() -> list[str]:
    compilers = [c for c in (os.environ.get("CXX"), "c++", "g++") if c]
    missing = [] if any(shutil.which(c) for c in compilers) else ["a C++ compiler (g++)"]
    try:
        import ninja  # noqa: F401
    except ImportError:
        if shutil.which("ninja") is None:
            missing.append("ninja (pip install ninja)")
    return missing


def load(verbose: bool = False) -> str:
    """Compile (once per source/flag version, cached) and load the kernels; return the library path.

    Raises RuntimeError with the cause and the fixes when the build fails; never falls back silently.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        missing = _missing_tools()
        if missing:
            raise RuntimeError(_failure(f"missing build tools: {', '.join(missing)}"))
        try:
            from torch.utils import cpp_extension

            path = cpp_extension.load(
                name=extension_name(),
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=cflags(),
                extra_ldflags=LDFLAGS,
                extra_include_paths=[str(CSRC)],
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as err:  # compiler errors surface as several exception types
            raise RuntimeError(_failure(f"{type(err).__name__}: {err}")) from err
        _loaded = str(path) if path else str(build_dir() / f"{extension_name()}.so")
        return _loaded


def is_loaded() -> bool:
    return _loaded is not None


def parallel_threads(tasks: int = 64) -> int:
    """Threads the kernels' parallel loops really use now (1 if built without OpenMP)."""
    load()
    return int(torch.ops.mambatr.parallel_threads(tasks))


def _failure(cause: str) -> str:
    return (
        f"mambatr: building the C++ CPU kernels failed ({cause}).\n"
        "Fix: install a C++ compiler and the Python headers (e.g. `apt-get install g++ python3-dev`) and "
        "`pip install ninja`, then run `python -m mambatr.ops.build` to see the full compiler output; "
        'or use the slower pure-PyTorch ops explicitly: impl="torch" (or MAMBATR_OPS_IMPL=torch). '
        f"Python {sys.version.split()[0]}, torch {torch.__version__}."
    )
