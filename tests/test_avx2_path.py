"""The kernels' AVX2 code path (32-byte vectors, 8 states per register chunk, no AVX-512 instructions),
built with MAMBATR_CPU_MARCH=haswell, passes the scan / conv / thread-count tests. On an AVX-512
machine the default build never runs that path, so it is checked here explicitly."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_avx2() -> bool:
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return False
    return all(f" {flag}" in flags for flag in ("avx2", "fma", "bmi2"))


@pytest.mark.skipif(platform.machine() != "x86_64" or not _has_avx2(), reason="needs an x86-64 CPU with AVX2")
def test_avx2_build_passes_kernel_tests():
    env = {**os.environ, "MAMBATR_CPU_MARCH": "haswell"}
    check = (
        "from mambatr.ops import _cpu_kernels as k; k.load(); assert k.extension_name().endswith('_haswell')"
    )
    subprocess.run([sys.executable, "-c", check], env=env, cwd=ROOT, check=True)
    tests = ["tests/test_scan.py", "tests/test_conv.py", "tests/test_threads.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_march_names_are_checked(monkeypatch):
    from mambatr.ops import _cpu_kernels

    monkeypatch.setenv("MAMBATR_CPU_MARCH", "haswell; rm -rf /")
    with pytest.raises(ValueError, match="MAMBATR_CPU_MARCH"):
        _cpu_kernels.cflags()
    monkeypatch.setenv("MAMBATR_CPU_MARCH", "x86-64-v3")
    assert "-march=x86-64-v3" in _cpu_kernels.cflags()
    assert _cpu_kernels.extension_name().endswith("_x86_64_v3")
