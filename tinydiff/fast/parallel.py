"""Both cores for copies and elementwise work: a small process-wide thread pool (``td.parallel``).

The fast kernels of this package use it; the plain path (``td.plain()``) never does.

NumPy runs a ufunc or a copy on one thread, but it releases the GIL inside the loop,
so two Python threads that each transform half of a batch really run on two cores.
Two ways to use them:

    parallel_for(fn, n, work)      fn(lo, hi) on consecutive chunks of range(n): copies
                                   and elementwise passes (padding, layout changes, silu)
    parallel_slices(fn, slices)    fn(lo, hi) on given batch slices, one whole slice per
                                   thread, OpenBLAS on one thread meanwhile: convolutions
                                   (transforms and GEMMs) and GroupNorm, slice by slice

which splits ``range(n)`` (usually the batch) into chunks that the calling thread and the
pool's threads take one by one, and returns when all are done.
Each chunk computes exactly what the whole call would have computed for its rows, so
the result is bit-identical to ``fn(0, n)`` on one thread, as long as ``fn`` writes only
its own rows (tests/test_parallel.py checks every threaded op against one thread).

Threads are used only when the work is large: ``work`` is the number of array elements
the call touches, and below ``MIN_WORK`` (a few hundred microseconds of NumPy time) the
cost of waking a thread (~30 us) is not worth paying.

Both hand the pieces out from a shared counter, so a thread that another process delays
does not hold the others up. The pool size is ``os.cpu_count()``; set the environment variable
``TINYDIFF_NUM_THREADS`` (e.g. to 1) before importing tinydiff to override it, or call
``set_num_threads(k)`` at run time.
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..runtime import get_blas_threads, single_threaded_blas

MIN_WORK = 1 << 18          # elements; smaller calls run inline on the calling thread


def _default_threads() -> int:
    value = os.environ.get("TINYDIFF_NUM_THREADS")
    if value is None:
        return max(1, os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"TINYDIFF_NUM_THREADS must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"TINYDIFF_NUM_THREADS must be a positive integer, got {value!r}")
    return n


_num_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None
_local = threading.local()                              # .inside: this thread runs a chunk already


def get_num_threads() -> int:
    """How many threads ``parallel_for`` splits work over (1 means no threading).

    >>> td.parallel.get_num_threads() >= 1
    True
    """
    return _num_threads


def set_num_threads(n: int) -> int:
    """Use ``n`` threads from now on; returns the previous count. ``n = 1`` turns threading off.

    >>> previous = td.parallel.set_num_threads(1)              # e.g. to time one core
    >>> td.parallel.get_num_threads()
    1
    >>> td.parallel.set_num_threads(previous)                  # back as it was; returns the 1
    1
    """
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads needs an int >= 1, got {n!r}")
    previous, _num_threads = _num_threads, n
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    return previous


def chunks(n: int, parts: int) -> list:
    """``range(n)`` cut into ``parts`` consecutive (lo, hi) pieces of near-equal size.

    >>> td.parallel.chunks(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def parallel_for(fn, n: int, work: int | None = None) -> None:
    """Call ``fn(lo, hi)`` for chunks of ``range(n)``, on several threads when worth it.

    ``work``: elements touched by the whole call (defaults to large). The range is cut
    into twice as many chunks as threads, and every thread, the caller included, takes
    the next undone chunk until none is left: if another process holds a core and one
    thread stalls, the others finish its share instead of waiting for it. Exceptions
    raised by any chunk propagate to the caller.

    >>> out = np.empty(8)
    >>> def square(lo, hi): out[lo:hi] = np.arange(lo, hi) ** 2     # writes only its own rows
    >>> td.parallel.parallel_for(square, 8)
    >>> out.tolist()
    [0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0, 49.0]
    """
    if getattr(_local, "inside", False):                # nested in a chunk: that chunk is one thread's
        fn(0, n)
        return
    threads = _num_threads if (work is None or work >= MIN_WORK) else 1
    pieces = chunks(n, 2 * threads if threads > 1 else 1)
    if len(pieces) <= 1:
        fn(0, n)
        return
    _run(fn, pieces, threads)


def _run(fn, pieces: list, threads: int) -> None:
    """Every thread, the caller included, calls fn on the next undone piece until none is left."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="tinydiff")
    todo = itertools.count()                            # next(todo) is atomic under the GIL

    def drain():
        _local.inside = True
        try:
            for i in iter(lambda: next(todo), None):
                if i >= len(pieces):
                    return
                fn(*pieces[i])
        finally:
            _local.inside = False

    futures = [_pool.submit(drain) for _ in range(min(threads, len(pieces)) - 1)]
    try:
        drain()                                         # the caller works too, not just waits
    finally:                                            # never return while a chunk still runs
        for future in futures:
            future.exception()
    for future in futures:
        future.result()                                 # re-raises a chunk's exception


# ---------------------------------------------------------------------- whole slices per thread
# A convolution in batch slices (winograd.py) calls many small GEMMs. OpenBLAS would split
# each of them over its own threads, and a small GEMM spends much of its time waking and
# joining them; when another process holds a core, a GEMM waits for a thread that is not
# running. Giving each thread whole slices (transforms and GEMMs) with OpenBLAS set to one
# thread avoids both (tinydiff/runtime.py says more and sets it for a whole training run).


def batch_slices(n: int, bytes_per_item: int, budget: int) -> list:
    """Consecutive (lo, hi) slices of range(n) holding at most ``budget`` bytes each (at least one item).

    NumPy makes one pass over memory per operation, so a kernel of several operations runs
    at the speed of the cache its working set fits in: slicing the batch keeps it there.

    >>> td.parallel.batch_slices(10, bytes_per_item=100, budget=400)
    [(0, 4), (4, 8), (8, 10)]
    """
    per = max(1, budget // max(1, bytes_per_item))
    return [(lo, min(n, lo + per)) for lo in range(0, n, per)]


def column_sums(a: np.ndarray, budget: int = 1 << 20) -> np.ndarray:
    """sum(a, axis=0) of a [N, K] array, as BLAS products with a vector of ones over row slices
    of ~``budget`` bytes, whole slices per thread, the partial sums added in slice order (the
    same result on any thread count). A bias gradient: dL/db = sum over pixels of dL/dy.

    >>> td.parallel.column_sums(np.arange(12.0).reshape(4, 3)).tolist()
    [18.0, 22.0, 26.0]
    """
    N, K = a.shape
    slices = batch_slices(N, K * a.itemsize, budget)
    partial = {}

    def work(lo, hi):
        partial[lo] = np.ones(hi - lo, a.dtype) @ a[lo:hi]

    parallel_slices(work, slices)
    total = partial[slices[0][0]].copy() if slices else np.zeros(K, a.dtype)
    for lo, _ in slices[1:]:
        total += partial[lo]
    return total


def parallel_slices(fn, slices: list) -> None:
    """Call ``fn(lo, hi)`` for every (lo, hi) in ``slices``, whole slices on different threads.

    Inside a slice everything runs on its thread: nested ``parallel_for`` calls run inline
    and OpenBLAS uses one thread. ``fn`` must write only its own slice's rows (or its own
    entry of a list of partial results, summed afterwards in slice order). Without several
    threads, or if NumPy's OpenBLAS cannot be found, the slices run one after another and
    their inner work is threaded as usual.

    >>> x = np.arange(10.0)
    >>> totals = {}                                            # one entry per slice, summed in order
    >>> def partial_sum(lo, hi): totals[lo] = float(x[lo:hi].sum())
    >>> slices = td.parallel.batch_slices(10, x.itemsize, 4 * x.itemsize)
    >>> td.parallel.parallel_slices(partial_sum, slices)
    >>> [totals[lo] for lo, _ in slices], sum(totals[lo] for lo, _ in slices)
    ([6.0, 22.0, 17.0], 45.0)
    """
    if _num_threads == 1 or len(slices) == 1 or get_blas_threads() is None or getattr(_local, "inside", False):
        for lo, hi in slices:
            fn(lo, hi)
        return
    with single_threaded_blas():
        _run(fn, slices, _num_threads)
