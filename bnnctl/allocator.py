"""Process-wide allocator settings for bnnctl's own commands: the training step and the benches.

Neither is applied on import: ``import bnnctl`` leaves the process as it was. The command line
calls ``use_huge_pages`` as it starts, before anything imports torch, and the training entry point
calls it again for library callers.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Transparent huge pages for torch's large CPU buffers, unless the caller's environment says otherwise.

    The MNIST MLP allocates several 64 MB tensors per step, and 4 KB page faults made that cost more
    than the matrix products. torch reads the variable at its first CPU allocation, so this helps only
    when called before any tensor exists; a later call changes nothing.
    """
    os.environ.setdefault(HUGE_PAGES_ENV, "1")


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
