"""mambatr.heap: the command line keeps freed memory for reuse (glibc)."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from mambatr import cli, heap

GLIBC = hasattr(ctypes.CDLL(ctypes.util.find_library("c") or None), "gnu_get_libc_version")


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_glibc_takes_the_thresholds() -> None:
    assert heap.keep_freed_memory() is True


def test_the_command_line_sets_it(monkeypatch, capsys) -> None:
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(True) or True)
    cli.main(["flops", "--model", "vim_tiny"])
    assert calls == [True] and "vim_tiny" in capsys.readouterr().out
