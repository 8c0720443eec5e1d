"""Argument checks shared by the whole package: each names the argument, the value it got
and what it expected, so a wrong call fails at the door in the user's own words.

    check_rng(rng)                 a numpy.random.Generator (every random draw goes through one)
    check_dtype(dtype)             a floating dtype (float32 by default, float64 for gradient checks)
    check_positive_int(value)      an int >= 1 (sizes, counts)
    check_count(n)                 an int >= 0 (how many samples to draw)

Imports only NumPy.
"""
from __future__ import annotations

import numpy as np


def check_rng(rng, name: str = "rng", allow_none: bool = False) -> np.random.Generator:
    """``rng`` if it is a ``numpy.random.Generator``, else a TypeError.

    allow_none: ``None`` then gives a fresh, unseeded ``np.random.default_rng()`` (the
    layers' default, like PyTorch's global seed-less initialisation).

    >>> td.checks.check_rng(np.random.default_rng(0)) is not None
    True
    >>> td.checks.check_rng(0)
    Traceback (most recent call last):
    ...
    TypeError: rng must be a numpy.random.Generator ..., got int
    """
    if rng is None and allow_none:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (e.g. np.random.default_rng(0))"
                        f"{' or None' if allow_none else ''}, got {type(rng).__name__}")
    return rng


def check_dtype(dtype) -> np.dtype:
    """``np.dtype(dtype)`` if it is a floating type (float32 or float64), else a TypeError.

    >>> td.checks.check_dtype("float64")
    dtype('float64')
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(f"dtype must be a floating dtype such as np.float32, got {dtype!r}")
    return dt


def check_positive_int(value, name: str) -> int:
    """``int(value)`` if it is an integer >= 1 (bools refused), else a ValueError.

    >>> td.checks.check_positive_int(np.int64(3), "batch_size")
    3
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_count(n, name: str = "n") -> int:
    """``int(n)`` if it is an integer >= 0 (bools refused), else a ValueError.

    >>> td.checks.check_count(0)
    0
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    return int(n)
