"""Single-head self-attention over the pixels of a feature map, as in the DDPM UNet.

Every pixel (a C-vector) attends to every pixel of the same image:

    h = GroupNorm(x);  q, k, v = split(Conv1x1_qkv(h))          each [B, C, N], N = H*W
    A = softmax(q^T k / sqrt(C))   over the keys                [B, N, N]
    y = x + Conv1x1_proj(v A^T)                                 [B, C, H, W]

(Ho et al. 2020, Appendix B, attention at 16x16; Vaswani et al. 2017, Eq. 1; the
qkv-in-one-convolution layout follows Nichol & Dhariwal 2021's improved-diffusion.)
Composed from primitives, so it needs no backward of its own.
"""
from __future__ import annotations

import numpy as np

from ..engine import Tensor
from ..functional import softmax
from .conv import Conv2d
from .layers import GroupNorm
from ..checks import check_dtype, check_positive_int, check_rng
from .helpers import to_tensor
from .module import Module


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) with channels first.

    q, k, v: [B, C, N]  ->  out[b, :, i] = sum_j A[b, i, j] v[b, :, j],
    A[b, i, :] = softmax_j( q[b, :, i] . k[b, :, j] / sqrt(C) ).   Returns [B, C, N].

    >>> q = k = td.Tensor(np.zeros((1, 4, 3)))                # [B, C, N]: equal scores everywhere
    >>> v = td.Tensor(np.arange(12.0).reshape(1, 4, 3))
    >>> td.nn.attention(q, k, v).data[0, 0].tolist()          # uniform weights: the mean of v over the N positions
    [1.0, 1.0, 1.0]
    """
    C = q.shape[1]
    scores = (q * C ** -0.5).transpose(0, 2, 1) @ k              # [B, N, N]; scale q (smaller than scores)
    weights = softmax(scores, axis=-1)                            # [B, N(query), N(key)]
    return v @ weights.transpose(0, 2, 1)                         # [B, C, N]


class SelfAttention2d(Module):
    """x [B, C, H, W] -> x + proj(attention(qkv(norm(x)))), same shape.

    Parameters: norm (GroupNorm(num_groups, C)), qkv (Conv2d(C, 3C, 1): channels
    [0, C) are q, [C, 2C) k, [2C, 3C) v), proj (Conv2d(C, C, 1)). PyTorch default
    initialisation; ``zero_init_proj=True`` zeroes proj as DDPM and improved-diffusion
    do, so that the block starts as the identity.

    >>> attn = td.nn.SelfAttention2d(8, num_groups=4, rng=np.random.default_rng(0))
    >>> attn(np.zeros((2, 8, 4, 4), np.float32)).shape
    (2, 8, 4, 4)
    """

    def __init__(self, channels: int, num_groups: int = 32, zero_init_proj: bool = False, *,
                 rng=None, dtype=np.float32):
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        rng, dtype = check_rng(rng, allow_none=True), check_dtype(dtype)
        self.norm = GroupNorm(num_groups, channels, dtype=dtype)
        self.qkv = Conv2d(channels, 3 * channels, 1, rng=rng, dtype=dtype)
        self.proj = Conv2d(channels, channels, 1, rng=rng, dtype=dtype)
        if zero_init_proj:
            self.proj.weight.data[...] = 0
            self.proj.bias.data[...] = 0

    def forward(self, x) -> Tensor:
        x = to_tensor(x, self.qkv.weight.dtype)
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SelfAttention2d expected input [B, {self.channels}, H, W], got shape {x.shape}")
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3 * C, H * W)       # [B, 3C, N]
        q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]        # each [B, C, N]
        h = attention(q, k, v).reshape(B, C, H, W)
        return x + self.proj(h)

    def extra_repr(self):
        return f"channels={self.channels}"
