"""Neural-network layers for tinydiff, named and initialised like ``torch.nn``.

    module.py     Module, Parameter, ModuleList, Sequential (parameter discovery, state dicts)
    helpers.py    PyTorch's default initialisation; inputs as Tensors of the layer's dtype
    layers.py     Linear, Embedding, GroupNorm, SiLU, Dropout, Upsample, timestep_embedding;
                  the fused ops linear and silu (one graph node each, hand-written backward)
    norm_fast.py  GroupNorm (+ SiLU) as one op with a closed-form backward, any memory layout
    conv.py       Conv2d: im2col + one GEMM forward, col2im backward (the plain reference)
    conv_fast.py  the default convolution: channels-last, 1x1 GEMM, Winograd, dx as a convolution
    winograd.py   Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions
    attention.py  SelfAttention2d: single-head attention over pixels (DDPM UNet)
"""
from .attention import SelfAttention2d, attention
from .conv import Conv2d, col2im, conv2d, conv_output_size, im2col
from .layers import (Dropout, Embedding, GroupNorm, Linear, SiLU, SinusoidalEmbedding, linear, silu, Upsample, group_norm,
                     group_norm_silu,
                     timestep_embedding, upsample_nearest)
from .helpers import to_tensor
from .module import Module, ModuleList, Parameter, Sequential

__all__ = [
    "Module", "Parameter", "ModuleList", "Sequential", "to_tensor",
    "Linear", "linear", "Embedding", "GroupNorm", "group_norm", "group_norm_silu", "SiLU", "silu", "Dropout", "Upsample", "upsample_nearest",
    "timestep_embedding", "SinusoidalEmbedding", "Conv2d", "conv2d", "im2col", "col2im", "conv_output_size",
    "SelfAttention2d", "attention",
]
