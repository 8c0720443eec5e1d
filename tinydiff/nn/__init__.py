"""Neural-network layers for tinydiff, named and initialised like ``torch.nn``.

    module.py     Module, Parameter, ModuleList, Sequential (parameter discovery, state dicts)
    helpers.py    PyTorch's default initialisation; inputs as Tensors of the layer's dtype
    layers.py     Linear, Embedding, GroupNorm, GroupNormSiLU, SiLU, Dropout, Upsample,
                  timestep_embedding, and their functions (linear, group_norm, silu, ...)
    conv.py       Conv2d and UpsampleConv: im2col + one GEMM forward, col2im backward
    attention.py  SelfAttention2d: single-head attention over pixels (DDPM UNet);
                  CrossAttention2d: pixels attending to a prompt's tokens (Stable Diffusion)

Every forward here is the plain math, composed from the engine's primitives or written
as one GEMM. Where a faster kernel exists, one line hands off to it (``if fast.enabled():
return fast.conv2d(...)``); the kernels live in ``tinydiff/fast/``, and ``td.plain()``
(or ``TINYDIFF_PLAIN=1``) keeps every layer on its plain path.
"""
from .attention import CrossAttention2d, SelfAttention2d, attention, attention_weights
from .conv import Conv2d, UpsampleConv, col2im, conv2d, conv_output_size, im2col
from .layers import (Dropout, Embedding, GroupNorm, GroupNormSiLU, Linear, SiLU, SinusoidalEmbedding, Upsample,
                     group_norm, group_norm_silu, linear, silu, timestep_embedding, upsample_nearest)
from .helpers import to_tensor
from .module import Module, ModuleList, Parameter, Sequential

__all__ = [
    "Module", "Parameter", "ModuleList", "Sequential", "to_tensor",
    "Linear", "linear", "Embedding", "GroupNorm", "GroupNormSiLU", "group_norm", "group_norm_silu",
    "SiLU", "silu", "Dropout", "Upsample", "upsample_nearest", "timestep_embedding", "SinusoidalEmbedding",
    "Conv2d", "UpsampleConv", "conv2d", "im2col", "col2im", "conv_output_size",
    "SelfAttention2d", "attention", "CrossAttention2d", "attention_weights",
]
