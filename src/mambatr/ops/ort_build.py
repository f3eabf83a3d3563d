"""mambatr's onnxruntime custom-op library (``ops/ort/ort_ops.cpp``): what an ONNX file exported with
``onnx_ops="custom"`` needs, registered with ``SessionOptions.register_custom_ops_library(path)``.

Built on first use with the C++ compiler alone (no torch, no onnxruntime headers: ``ort_abi.h``
declares the C ABI it uses), from the CPU kernels' own torch-free forward (``ops/csrc/scan_forward.h``,
``conv_forward.h`` and the SIMD helpers they use), for this
CPU (``$MAMBATR_CPU_MARCH`` as for the kernels), cached per source, flags and compiler beside the
kernels' first-use builds (``$MAMBATR_KERNELS_DIR``). The library itself runs without mambatr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mambatr.ops._cpu_kernels import build_dir
from mambatr.ops.kernel_build import CSRC, cflags

SOURCE = Path(__file__).resolve().parent / "ort" / "ort_ops.cpp"
SHARED_HEADERS = ("simd.h", "rows.h", "scan_forward.h", "conv_forward.h")  # the kernels' torch-free forward
HEADERS = (SOURCE.parent / "ort_abi.h", *(CSRC / name for name in SHARED_HEADERS))
DOMAIN = "mambatr"


def compiler() -> str:
    """$CXX, else c++ or g++ (the first on PATH); RuntimeError when there is none."""
    for candidate in (os.environ.get("CXX"), "c++", "g++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError("the onnxruntime custom-op library needs a C++ compiler (g++ or $CXX)")


def flags() -> list[str]:
    """The kernels' code-generation flags (without OpenMP: the ops run on onnxruntime's thread), for a
    shared library exporting only RegisterCustomOps."""
    kernels = [flag for flag in cflags() if flag != "-fopenmp"]
    return [
        *kernels,
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fvisibility=hidden",
        "-fno-strict-aliasing",  # simd.h reinterprets vector registers between int and float
    ]


def library_path() -> Path:
    """Where the library for these sources, flags and compiler is (or will be) built."""
    digest = hashlib.sha1(compiler().encode() + " ".join(flags()).encode())
    for path in (SOURCE, *HEADERS):
        digest.update(path.name.encode() + path.read_bytes())
    return build_dir().parent / f"libmambatr_ort-{digest.hexdigest()[:12]}.so"


def build() -> Path:
    """The library's path, compiling it first if needed (atomically: a concurrent build is harmless)."""
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        temporary = Path(folder) / path.name
        command = [compiler(), *flags(), str(SOURCE), "-o", str(temporary)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the onnxruntime custom-op library failed:\n{' '.join(command)}\n"
                               f"{result.stderr[-4000:]}")  # fmt: skip
        os.replace(temporary, path)
    return path
