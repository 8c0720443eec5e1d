"""Neural-network layers for tinydiff, named and initialised like ``torch.nn``.

    module.py     Module, Parameter, ModuleList, Sequential (parameter discovery, state dicts)
    layers.py     Linear, Embedding, GroupNorm, SiLU, Dropout, Upsample, timestep_embedding
    conv.py       Conv2d: im2col + one GEMM forward, col2im backward
    attention.py  SelfAttention2d: single-head attention over pixels (DDPM UNet)
"""
from .attention import SelfAttention2d, attention
from .conv import Conv2d, col2im, conv2d, conv_output_size, im2col
from .layers import (Dropout, Embedding, GroupNorm, Linear, SiLU, SinusoidalEmbedding, linear, Upsample, group_norm,
                     timestep_embedding, upsample_nearest)
from .module import Module, ModuleList, Parameter, Sequential, to_tensor

__all__ = [
    "Module", "Parameter", "ModuleList", "Sequential", "to_tensor",
    "Linear", "linear", "Embedding", "GroupNorm", "group_norm", "SiLU", "Dropout", "Upsample", "upsample_nearest",
    "timestep_embedding", "SinusoidalEmbedding", "Conv2d", "conv2d", "im2col", "col2im", "conv_output_size",
    "SelfAttention2d", "attention",
]
