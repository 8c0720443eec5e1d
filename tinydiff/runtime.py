"""Process-level settings that make NumPy training faster, in one place: ``tune_process()``.

The Trainer calls ``tune_process()`` when it is built, so a script or a notebook that
trains gets these settings without knowing about them. Two of them:

1. **OpenBLAS on one thread; tinydiff's own threads own the cores** (for models with
   convolutions; a model of Linear layers keeps OpenBLAS's threads, see ``tune_process``). The fast kernels
   (``tinydiff/fast/``) cut a convolution into batch slices and give whole slices to the
   threads of ``tinydiff.parallel``, each running its small GEMMs on one core. If
   OpenBLAS also split every one of those GEMMs over its own threads, the two kinds of
   threads would fight for the same cores, and a small GEMM spends much of its time waking
   and joining threads; when another process holds a core, a GEMM waits for a thread that
   is not running (measured: a 32-channel 28x28 Winograd forward took 4.3 s instead of
   40 ms on a busy machine). ``OPENBLAS_NUM_THREADS=1`` does the same, but only if it is
   set before NumPy is imported; here the thread count is set at run time, through the
   ``openblas_set_num_threads`` function of the OpenBLAS library that NumPy's wheel ships
   (found with ctypes next to NumPy), so it works whenever it is called.
2. **Freed memory stays mapped** (``reuse_freed_memory``). Every step allocates the same
   large temporaries (activations, gradients, [B, 256] float32 = 1 MiB at batch 1024) and
   frees them again. glibc's ``malloc`` serves blocks this large with ``mmap`` and gives
   them back to the kernel on ``free``, so the next step touches brand-new pages and takes
   a page fault for every 4 KiB: about 3,000 faults a step for ``ToyMLP``, a third of the
   step's time in a VM. Telling ``malloc`` to keep freed memory in its heap makes the pages
   stay mapped and be reused. (PyTorch avoids the same cost with its own caching allocator.)
   The cost: the process keeps its peak memory instead of returning it to the system.

Only glibc (Linux) has ``mallopt``, and only a NumPy built with OpenBLAS has the thread
setter; elsewhere each setting does nothing and says so in its return value.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import os

import numpy as np

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_applied = None
_tuned = None


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


# ---------------------------------------------------------------------- NumPy's OpenBLAS threads
def _find_blas_threads():
    """(set, get) of the OpenBLAS that NumPy uses, or None if it cannot be found."""
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(folder, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                    return setter, getter
    return None


_blas = _find_blas_threads()


def get_blas_threads() -> int | None:
    """How many threads NumPy's OpenBLAS uses for one matrix product (None: no OpenBLAS found).

    >>> n = td.runtime.get_blas_threads()
    >>> n is None or n >= 1
    True
    """
    return None if _blas is None else _blas[1]()


def set_blas_threads(n: int) -> int | None:
    """Let NumPy's OpenBLAS use ``n`` threads from now on (works after NumPy is loaded, unlike
    ``OPENBLAS_NUM_THREADS``); returns the previous count, or None if no OpenBLAS was found.

    >>> previous = td.runtime.set_blas_threads(1)
    >>> td.runtime.get_blas_threads() in (1, None)
    True
    >>> _ = td.runtime.set_blas_threads(previous or 1)          # back as it was
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_blas_threads needs an int >= 1, got {n!r}")
    if _blas is None:
        return None
    previous = _blas[1]()
    _blas[0](n)
    return previous


@contextlib.contextmanager
def single_threaded_blas():
    """Inside: NumPy's OpenBLAS on one thread; afterwards as before (nothing if no OpenBLAS).

    >>> with td.runtime.single_threaded_blas():
    ...     td.runtime.get_blas_threads() in (1, None)
    True
    """
    previous = set_blas_threads(1)
    try:
        yield
    finally:
        if previous is not None:
            set_blas_threads(previous)


# ---------------------------------------------------------------------- all of it, once
def tune_process(convolutions: bool = True) -> dict:
    """Apply the settings of this module's docstring to the running process, each once.

    Freed memory is always kept mapped. OpenBLAS goes to one thread only when
    ``convolutions`` is true, i.e. the process runs the fast convolution kernels (a UNet, a
    VAE), whose own thread pool owns the cores. A model of Linear layers only (``ToyMLP``)
    spends its step in a few large GEMMs that OpenBLAS's own threads split best, so its
    thread count is left alone (measured on 2 cores, ``bench/bench_step.py``: a ToyMLP step
    at batch 1024 took 1.3x PyTorch's time with OpenBLAS's default threads and 1.9x with one).

    Idempotent: a setting once applied is not applied again (so a thread count set by hand
    afterwards stays). ``Trainer`` calls it with ``convolutions`` true when its model holds a
    ``Conv2d``. Returns {"blas_threads": "previous -> 1", or None if not applied or no
    OpenBLAS, "reuse_freed_memory": bool}.

    >>> report = td.runtime.tune_process(convolutions=False)
    >>> sorted(report), td.runtime.tune_process(convolutions=False) == report   # again: no change
    (['blas_threads', 'reuse_freed_memory'], True)
    """
    global _tuned
    if _tuned is None:
        _tuned = {"blas_threads": None, "reuse_freed_memory": reuse_freed_memory()}
    if convolutions and _tuned["blas_threads"] is None:
        previous = set_blas_threads(1)
        _tuned["blas_threads"] = None if previous is None else f"{previous} -> 1"
    return dict(_tuned)
