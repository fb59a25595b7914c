"""Process-wide memory settings, for the training step and the benches alike."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process (no mmap for large blocks, no trimming).

    Every training step and every benchmarked call allocates and frees tensors of tens of MB, which
    glibc otherwise returns to the kernel and faults back in page by page. Returns whether it took
    effect (glibc on Linux only). Process-wide and permanent: the process then holds its peak memory
    until it exits.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False
