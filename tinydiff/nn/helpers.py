"""Helpers every layer uses: PyTorch's default initialisation, and inputs as Tensors."""
from __future__ import annotations

import numpy as np

from ..engine import Tensor
from .module import Parameter


def uniform_parameter(shape, fan_in: int, rng: np.random.Generator, dtype) -> Parameter:
    """PyTorch's default for Linear and Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (``kaiming_uniform_(w, a=sqrt(5))`` has bound gain*sqrt(3/fan_in) with
    gain = sqrt(2/(1+a^2)) = sqrt(1/3), which is exactly 1/sqrt(fan_in).)

    >>> w = td.nn.helpers.uniform_parameter((64, 16), fan_in=16, rng=np.random.default_rng(0), dtype=np.float32)
    >>> bool(np.abs(w.data).max() <= 0.25), w.requires_grad                  # bound 1 / sqrt(16)
    (True, True)
    """
    bound = 1.0 / np.sqrt(fan_in)
    return Parameter(rng.uniform(-bound, bound, size=shape).astype(dtype))


def to_tensor(x, dtype=None) -> Tensor:
    """A Tensor view of ``x`` (Tensor, ndarray or list), cast to ``dtype`` if given.

    Layers pass their parameter dtype, so a float64 array fed to a float32 model is
    cast at the door instead of silently turning every later op into float64
    (PyTorch raises in that case). A Tensor is cast with ``astype``, which keeps its
    gradient path; an array of the right dtype is used as is, without a copy.

    >>> td.nn.to_tensor(np.zeros(3), dtype=np.float32).dtype                  # cast at the layer's door
    dtype('float32')
    """
    if isinstance(x, Tensor):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    if np.asarray(x).dtype.kind not in "biuf":        # complex, strings, objects: no silent cast
        raise TypeError(f"x: expected a real-valued array, got dtype {np.asarray(x).dtype}")
    if isinstance(x, np.ndarray):
        return Tensor(x if dtype is None or x.dtype == dtype else x.astype(dtype))
    return Tensor(np.asarray(x, dtype=np.float32 if dtype is None else dtype))
