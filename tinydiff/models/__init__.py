"""Models: each is a Module whose forward is ``model(x_t, t, **kwargs)``, channels on axis 1
(the VAE, a pair of networks, has ``encode`` and ``decode`` instead)."""
from .forward_residual import ForwardResidual
from .toy_mlp import ToyMLP
from .text_encoder import EncoderLayer, TextEncoder, TokenSelfAttention
from .text_unet import TextUNet, TransformerBlock2d
from .unet import ResBlock, UNet
from .vae import VAE

__all__ = ["ForwardResidual", "ResBlock", "ToyMLP", "UNet", "VAE", "TextEncoder", "TextUNet", "TransformerBlock2d",
           "TokenSelfAttention", "EncoderLayer"]
