"""Models: each is a Module whose forward is ``model(x_t, t, **kwargs)``, channels on axis 1."""
from .forward_residual import ForwardResidual
from .toy_mlp import ToyMLP
from .unet import ResBlock, UNet

__all__ = ["ForwardResidual", "ResBlock", "ToyMLP", "UNet"]
