"""Two installations on one machine, commands alternating between them (issue #18): each loads the
kernels compiled into its own package, nothing compiles, and no shared build cache is read or written,
even one that already holds another installation's build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mambatr
from mambatr.ops import _cpu_kernels

COMMAND = """
import torch
from mambatr.ops import _cpu_kernels, selective_scan, selective_scan_reference
args = [torch.randn(1, 5, 4), torch.rand(1, 5, 4), -torch.rand(4, 3), torch.randn(1, 5, 3)]
args.append(torch.randn(1, 5, 3))
assert torch.allclose(selective_scan(*args, impl="cpu"), selective_scan_reference(*args), atol=1e-5)
print(_cpu_kernels.loaded_from(), _cpu_kernels.load())
"""


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.skipif(not _cpu_kernels.INSTALLED_INFO.exists(), reason="not installed by scripts/setup.sh")
def test_alternating_between_two_installations_compiles_nothing(tmp_path):
    first = Path(mambatr.__file__).resolve().parent.parent
    second = tmp_path / "second_clone" / "src"
    # A second clone installed the same way: its package folder with its own compiled library and record.
    shutil.copytree(first / "mambatr", second / "mambatr", ignore=shutil.ignore_patterns("__pycache__"))
    caches = tmp_path / "caches"
    other_build = caches / "torch_extensions" / _cpu_kernels.extension_name()
    other_build.mkdir(parents=True)
    (other_build / "build.ninja").write_text("# another installation's build\n")
    (caches / "mambatr_kernels").mkdir()
    before = tree(caches)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (_cpu_kernels.MARCH_ENV, "PYTHONPATH", "MAMBATR_OPS_IMPL")
    }
    env |= {
        "TORCH_EXTENSIONS_DIR": str(caches / "torch_extensions"),
        _cpu_kernels.KERNELS_DIR_ENV: str(caches / "mambatr_kernels"),
    }
    for src in (first, second, first, second):
        run = subprocess.run(
            [sys.executable, "-c", COMMAND],
            env=env | {"PYTHONPATH": str(src)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        origin, library = run.stdout.split()
        assert origin == "installed"
        assert Path(library).parent == src / "mambatr" / "ops"
    assert tree(caches) == before
