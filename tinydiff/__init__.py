"""tinydiff: diffusion models from scratch in NumPy, written to be read."""
from . import interop  # noqa: F401  (installs NumPy's dispatch hooks on Tensor)
from .engine import Tensor, concat, no_grad, stack, tensor, where

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "no_grad", "concat", "stack", "where"]
