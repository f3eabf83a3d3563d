"""Where the C++ kernels come from: the library compiled at install time when it fits, else a build
folder unique to this installation (two environments or clones never share or rebuild one)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mambatr.ops import _cpu_kernels, kernel_build


@pytest.fixture
def fake_install(tmp_path, monkeypatch):
    """A package folder holding an installed library built for this machine and torch."""
    monkeypatch.delenv(_cpu_kernels.MARCH_ENV, raising=False)
    monkeypatch.setattr(_cpu_kernels, "HERE", tmp_path)
    monkeypatch.setattr(_cpu_kernels, "INSTALLED_INFO", tmp_path / "_kernels.json")
    (tmp_path / "_kernels.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "_kernels.json").write_text(json.dumps(_cpu_kernels.build_info()))
    return tmp_path


def test_installed_library_is_used_when_it_fits(fake_install):
    assert _cpu_kernels.installed_library() == fake_install / "_kernels.cpython-311-x86_64-linux-gnu.so"


def test_installed_library_for_another_torch_cpu_or_target_is_not_used(fake_install, monkeypatch):
    info = _cpu_kernels.build_info()
    for other in ({**info, "torch": "1.0"}, {**info, "cpu": "deadbeef"}, {**info, "sources": "edited"}):
        (fake_install / "_kernels.json").write_text(json.dumps(other))
        assert _cpu_kernels.installed_library() is None
    (fake_install / "_kernels.json").write_text(json.dumps(info))
    monkeypatch.setenv(_cpu_kernels.MARCH_ENV, "haswell")  # asks for another target than the install's
    assert _cpu_kernels.installed_library() is None


def test_portable_install_is_used_unless_another_target_is_asked(fake_install, monkeypatch):
    portable = {**_cpu_kernels.build_info(), "march": "x86-64-v3", "cpu": "any"}
    (fake_install / "_kernels.json").write_text(json.dumps(portable))
    assert _cpu_kernels.installed_library() is not None
    monkeypatch.setenv(_cpu_kernels.MARCH_ENV, "haswell")
    assert _cpu_kernels.installed_library() is None


def test_no_installed_library_without_its_record(fake_install):
    (fake_install / "_kernels.json").unlink()
    assert _cpu_kernels.installed_library() is None


def test_first_use_build_folder_is_unique_per_installation(tmp_path, monkeypatch):
    monkeypatch.setenv(_cpu_kernels.KERNELS_DIR_ENV, str(tmp_path))
    one = _cpu_kernels.build_dir()
    monkeypatch.setattr(_cpu_kernels, "HERE", tmp_path / "another_clone" / "mambatr" / "ops")
    two = _cpu_kernels.build_dir()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another_venv"))
    three = _cpu_kernels.build_dir()
    assert len({one, two, three}) == 3 and all(p.parent == tmp_path for p in (one, two, three))


@pytest.mark.skipif(not _cpu_kernels.INSTALLED_INFO.exists(), reason="not installed by scripts/setup.sh")
def test_setup_compiled_the_kernels_into_the_package():
    """After scripts/setup.sh nothing compiles at run time: the installed library is the one loaded."""
    _cpu_kernels.load()
    assert _cpu_kernels.loaded_from() == "installed"


STANDALONE = """
import importlib.abc, importlib.util, sys

class NoMambatr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mambatr":
            raise ImportError(f"{name} is not installed yet")

sys.meta_path.insert(0, NoMambatr())
spec = importlib.util.spec_from_file_location("mambatr_kernel_build", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.build_info()["sources"], module.cflags()[0], *module.SOURCES)
"""


def test_setup_py_reads_the_build_flags_before_mambatr_is_importable():
    """setup.py executes kernel_build.py by path while mambatr is being installed: it may import only
    torch and the standard library (an import of mambatr there broke a fresh install)."""
    done = subprocess.run(
        [sys.executable, "-c", STANDALONE, kernel_build.__file__], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [_cpu_kernels.build_info()["sources"], "-O3", *_cpu_kernels.SOURCES]
