"""Process-level settings that make NumPy training faster.

Why training needs this: every step allocates the same large temporaries (activations,
gradients, [B, 256] float32 = 1 MiB at batch 1024) and frees them again. glibc's
``malloc`` serves blocks this large with ``mmap`` and gives them back to the kernel on
``free``, so the next step touches brand-new pages and takes a page fault for every
4 KiB: about 3,000 faults a step for TOY-MLP, a third of the step's time in a VM.
Telling ``malloc`` to keep freed memory in its heap makes the pages stay mapped and be
reused. (PyTorch avoids the same cost with its own caching allocator.)

The cost: the process keeps its peak memory instead of returning it to the system.
Only glibc (Linux) has ``mallopt``; elsewhere this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_applied = None


def reuse_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                       top_pad: int = 64 << 20) -> bool:
    """Ask glibc malloc to keep freed blocks for reuse instead of unmapping them.

    mmap_threshold: blocks below this size come from the heap, not from mmap (32 MiB is
    glibc's maximum on 64-bit); trim_threshold: free heap memory kept before returning
    it to the kernel; top_pad: extra heap grown at once. Returns True if applied
    (glibc found), False otherwise. Safe to call more than once.

    >>> td.runtime.reuse_freed_memory() in (True, False)     # True where glibc's mallopt is available
    True
    """
    global _applied
    if _applied is not None:
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _applied = False
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, top_pad)))
    return _applied
