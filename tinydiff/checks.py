"""Argument checks shared by the whole package: each names the argument, the value it got
and what it expected, so a wrong call fails at the door in the user's own words.

    check_rng(rng)                 a numpy.random.Generator (every random draw goes through one)
    check_dtype(dtype)             a floating dtype (float32 by default, float64 for gradient checks)
    check_positive_int(value)      an int >= 1 (sizes, counts)
    check_count(n)                 an int >= 0 (how many samples to draw)
    check_data(x, name)            data [B, *D]: float32/float64, a batch axis, finite values
    check_timesteps(t, batch)      int timesteps [B], none negative (what a model is called with)

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


def check_data(x, name: str = "x"):
    """``x`` checked as data [B, *D]: a float32 or float64 ndarray (or Tensor) with a batch
    axis and, for an ndarray, only finite values. Returns ``x``.

    A Tensor's values are not scanned: Tensors carry a model's outputs during training,
    where the Trainer checks the loss and names what went wrong (tinydiff/train.py).

    >>> td.checks.check_data(np.zeros((2, 3), np.float32)).shape
    (2, 3)
    >>> td.checks.check_data(np.array([[0.0, np.nan]]), "x0")
    Traceback (most recent call last):
    ...
    ValueError: x0: ...
    """
    arr = x if isinstance(x, np.ndarray) else getattr(x, "data", None)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a float32 or float64 numpy array [B, *D], got {type(x).__name__}")
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array [B, *D], got dtype {arr.dtype}"
                        + (" (scale integer images to floats in [-1, 1] first)" if arr.dtype.kind in "iub" else ""))
    if arr.ndim < 1:
        raise ValueError(f"{name}: expected an array [B, *D] with a batch axis, got a 0-d array {arr!r}")
    if 0 in arr.shape[1:]:
        raise ValueError(f"{name}: expected examples with at least one value each, got shape {arr.shape}")
    if isinstance(x, np.ndarray) and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name}: holds {bad:,} NaN or inf values (of {arr.size:,}); expected finite numbers")
    return x


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
    """A ValueError unless ``a`` and ``b`` have one shape (no silent broadcasting).

    >>> td.checks.check_same_shape(np.zeros((2, 3)), np.zeros((2, 1)), "x0", "noise")
    Traceback (most recent call last):
    ...
    ValueError: ...
    """
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_b}: expected the shape of {name_a}, {tuple(a.shape)}, got {tuple(b.shape)}")


def check_timesteps(t, batch: int, name: str = "t") -> np.ndarray:
    """``t`` as an int array [batch] of timesteps >= 0, else a ValueError naming what it got.
    (The upper end, T - 1, belongs to the diffusion, which checks it in ``extract``.)

    >>> td.checks.check_timesteps([0, 5], batch=2).tolist()
    [0, 5]
    """
    t = np.asarray(t.data if hasattr(t, "data") and not isinstance(t, np.ndarray) else t)
    if t.ndim != 1 or t.dtype.kind not in "iu" or len(t) != batch:
        raise ValueError(f"{name}: expected int timesteps of shape [{batch}] (one per example), got shape "
                         f"{t.shape} dtype {t.dtype}")
    if t.size and t.min() < 0:
        raise ValueError(f"{name}: timesteps must be >= 0, got {int(t.min())}")
    return t
