"""Keep freed memory in the process for the next large tensor (glibc's malloc), as jemalloc or
tcmalloc would.

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MB by default) with
fresh pages from the OS and unmaps them on free, so each large activation tensor page-faults on every
4 KB it first writes. A batch of 256 Fashion-MNIST images through `vim_fmnist_p2` makes such tensors
in every block: `mambatr demo` ran 225 s with 110 s of system time, 164 s with 2 s once the freed
memory was kept (same results; docs/performance.md).
Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse; the figures computed are
unchanged. The command line does it for its own process; a library import never changes the
process's allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
THRESHOLD = 1 << 30


def keep_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes. False, changing nothing, where
    the C library is not glibc (musl, macOS) or refuses the values."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
