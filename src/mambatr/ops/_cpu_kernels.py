"""Build and load the C++ CPU kernels (selective scan, causal conv); they register ``torch.ops.mambatr.*``.

Two ways in, from the same sources and flags (``kernel_build.py``, which setup.py reads too):

* **Installed** (what ``scripts/setup.sh`` does): ``pip install --no-build-isolation [-e] .`` compiles them
  with setup.py's ``CppExtension`` into the package, as ``src/mambatr/ops/_kernels*.so`` plus
  ``_kernels.json`` (the -march target, the CPU, the torch version and a hash of the sources it was
  built for). ``load()`` uses that library when it fits this machine, this torch, these sources and
  ``$MAMBATR_CPU_MARCH``: nothing compiles at run time (edited sources are compiled on first use).
* **Built on first use** otherwise, with ``torch.utils.cpp_extension.load``, into a folder unique to
  this installation (``$MAMBATR_KERNELS_DIR`` or ``~/.cache/mambatr/kernels``, then a hash of the
  package folder, the Python environment, torch and the target), so two virtual environments or two
  clones never share a build, never rebuild each other's, and never wait on each other's lock.

The default target is the host CPU (-march=native), and the name carries a hash of the CPU's feature
flags, so a binary built for another instruction set is never loaded. ``$MAMBATR_CPU_MARCH`` (e.g.
``haswell`` for AVX2 without AVX-512) builds for another target under its own name: a portable build, or
a test of the AVX2 code path on an AVX-512 machine. The kernels are compiled with OpenMP, linked against
the runtime torch already loaded, so ``at::parallel_for`` spreads them over torch's intra-op threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

from mambatr.ops import registration
from mambatr.ops.kernel_build import CSRC, LDFLAGS, MARCH_ENV, SOURCES, build_info, cflags, cpu_tag, march

HERE = Path(__file__).resolve().parent
INSTALLED_INFO = HERE / "_kernels.json"
KERNELS_DIR_ENV = "MAMBATR_KERNELS_DIR"

_lock = threading.Lock()
_loaded: str | None = None


def extension_name() -> str:
    target = march()
    suffix = "" if target == "native" else "_" + "".join(c if c.isalnum() else "_" for c in target)
    return f"mambatr_cpu_{cpu_tag()}{suffix}"


def installed_library() -> Path | None:
    """The library compiled at install time, if it fits this machine, torch and $MAMBATR_CPU_MARCH."""
    try:
        built = json.loads(INSTALLED_INFO.read_text())
    except (OSError, ValueError):
        return None
    wanted = build_info()
    portable_ok = not os.environ.get(MARCH_ENV) and built.get("march") != "native"  # a portable install
    stale = any(built.get(key) != wanted[key] for key in ("torch", "sources"))
    if stale or (built != wanted and not portable_ok):
        return None
    return next(iter(sorted(HERE.glob("_kernels*.so"))), None)


def build_dir() -> Path:
    """Where this installation builds the kernels on first use (never shared with another one)."""
    root = Path(os.environ.get(KERNELS_DIR_ENV) or Path.home() / ".cache" / "mambatr" / "kernels")
    key = "|".join((str(HERE), sys.prefix, torch.__version__, march()))
    return root / f"{extension_name()}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _missing_tools() -> list[str]:
    compilers = [c for c in (os.environ.get("CXX"), "c++", "g++") if c]
    missing = [] if any(shutil.which(c) for c in compilers) else ["a C++ compiler (g++)"]
    try:
        import ninja  # noqa: F401
    except ImportError:
        if shutil.which("ninja") is None:
            missing.append("ninja (pip install ninja)")
    return missing


def _registered(library: str) -> str:
    """Adds the fake kernels and autograd formulas to the ops ``library`` just registered; returns it."""
    registration.register()
    return library


def load(verbose: bool = False) -> str:
    """Load the installed kernels, or compile them once (cached per installation); return the library path.

    Raises RuntimeError with the cause and the fixes when the build fails; never falls back silently.
    """
    global _loaded
    if _loaded is not None:  # lock-free once loaded: torch.compile traces through this call
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        installed = installed_library()
        if installed is not None:
            torch.ops.load_library(str(installed))
            _loaded = _registered(str(installed))
            return _loaded
        missing = _missing_tools()
        if missing:
            raise RuntimeError(_failure(f"missing build tools: {', '.join(missing)}"))
        try:
            from torch.utils import cpp_extension

            directory = build_dir()
            directory.mkdir(parents=True, exist_ok=True)
            path = cpp_extension.load(
                name=extension_name(),
                build_directory=str(directory),
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=cflags(),
                extra_ldflags=LDFLAGS,
                extra_include_paths=[str(CSRC)],
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as err:  # compiler errors surface as several exception types
            raise RuntimeError(_failure(f"{type(err).__name__}: {err}")) from err
        _loaded = _registered(str(path) if path else str(directory / f"{extension_name()}.so"))
        return _loaded


def load_installed() -> None:
    """Load the installed kernels if they fit (nothing is compiled): ``import mambatr`` registers the
    operators, so ``torch.compile`` / ``torch.export`` / ``torch.export.load`` find them."""
    if _loaded is None and installed_library() is not None:
        load()


def is_loaded() -> bool:
    return _loaded is not None


def loaded_from() -> str:
    """'installed', 'built on first use' or 'not loaded yet'."""
    if _loaded is None:
        return "not loaded yet"
    return "installed" if Path(_loaded).parent == HERE else "built on first use"


def parallel_threads(tasks: int = 64) -> int:
    """Threads the kernels' parallel loops really use now (1 if built without OpenMP)."""
    load()
    return int(torch.ops.mambatr.parallel_threads(tasks))


def _failure(cause: str) -> str:
    return (
        f"mambatr: building the C++ CPU kernels failed ({cause}).\n"
        "Fix: install a C++ compiler and the Python headers (e.g. `apt-get install g++ python3-dev`) and "
        "`pip install ninja`, then run `python -m mambatr.ops.build --verbose` to see the compiler output; "
        'or use the slower pure-PyTorch ops explicitly: impl="torch" (or MAMBATR_OPS_IMPL=torch). '
        f"Python {sys.version.split()[0]}, torch {torch.__version__}."
    )
