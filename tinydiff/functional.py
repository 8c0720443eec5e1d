"""Composite functions built from the engine's primitives (no backward of their own).

Each one is written the numerically stable way: subtract the maximum before
exponentiating, so that inputs of +-1e4 give finite results. The maximum is a
constant shift (detached): softmax(x) = softmax(x - c) for any c, so its gradient
contributes nothing and leaving it out of the graph is exact, not an approximation.
"""
from __future__ import annotations

import numpy as np

from .engine import Tensor


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


def logsumexp(x, axis: int = -1, keepdims: bool = False) -> Tensor:
    """log sum_i exp(x_i) = m + log sum_i exp(x_i - m), with m = max_i x_i.

    >>> round(float(td.functional.logsumexp(np.array([1000.0, 1000.0])).data), 4)   # no overflow: 1000 + log 2
    1000.6931
    """
    x = _as_tensor(x)
    m = x.data.max(axis=axis, keepdims=True)
    out = (x - m).exp().sum(axis=axis, keepdims=True).log() + m
    return out if keepdims else out.reshape(np.squeeze(out.data, axis=axis).shape)


def log_softmax(x, axis: int = -1) -> Tensor:
    """log softmax(x)_i = x_i - logsumexp(x).

    >>> td.functional.log_softmax(np.array([0.0, 0.0])).data.round(4).tolist()
    [-0.6931, -0.6931]
    """
    x = _as_tensor(x)
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x, axis: int = -1) -> Tensor:
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m).

    >>> td.functional.softmax(np.array([[1.0, 1.0, 1.0, 1.0]])).data.tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    x = _as_tensor(x)
    e = (x - x.data.max(axis=axis, keepdims=True)).exp()
    return e / e.sum(axis=axis, keepdims=True)


def mse(prediction, target, axis=None) -> Tensor:
    """Mean squared error, mean over ``axis`` (all axes by default).

    >>> float(td.functional.mse(np.array([1.0, 3.0]), np.array([0.0, 0.0])).data)   # (1 + 9) / 2
    5.0
    """
    diff = _as_tensor(prediction) - target
    return (diff * diff).mean(axis=axis)
