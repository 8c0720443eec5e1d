"""Models: each is a Module whose forward is ``model(x_t, t, **kwargs)``, channels on axis 1."""
from .forward_residual import ForwardResidual
from .toy_mlp import ToyMLP

__all__ = ["ForwardResidual", "ToyMLP"]
