"""Attention: pixels attending to pixels (the DDPM UNet), and to the words of a prompt.

Self-attention (``SelfAttention2d``): every pixel (a C-vector) attends to every pixel of the
same image:

    h = GroupNorm(x);  q, k, v = split(Conv1x1_qkv(h))          each [B, C, N], N = H*W
    A = softmax(q^T k / sqrt(C))   over the keys                [B, N, N]
    y = x + Conv1x1_proj(v A^T)                                 [B, C, H, W]

(Ho et al. 2020, Appendix B, attention at 16x16; Vaswani et al. 2017, Eq. 1; the
qkv-in-one-convolution layout follows Nichol & Dhariwal 2021's improved-diffusion.)

Cross-attention (``CrossAttention2d``, Rombach et al. 2022, sec. 3.3): the queries come from
the pixels, the keys and values from the L token states of a prompt, c = tau(y) [B, L, D]:

    q = Conv1x1_q(GroupNorm(x)) [B, C, N];  k, v = Linear_k(c), Linear_v(c) [B, C, L]
    A = softmax(q^T k / sqrt(C) + M)   over the tokens, M = -inf on padding   [B, N, L]
    y = x + Conv1x1_proj(v A^T)                                 [B, C, H, W]

so each latent pixel takes a mixture of the words' values; row A[b, n] says which words pixel n
looked at. Both are composed from primitives, so they need no backward of their own.
"""
from __future__ import annotations

import numpy as np

from ..engine import Tensor
from ..functional import softmax
from .conv import Conv2d
from .layers import GroupNorm, Linear
from ..checks import check_dtype, check_positive_int, check_rng
from .helpers import to_tensor
from .module import Module


MASKED = -1e30      # the score of a masked key: exp(MASKED - max) is exactly 0 in float32 and float64


def attention_weights(q: Tensor, k: Tensor, key_mask=None) -> Tensor:
    """A = softmax(q^T k / sqrt(C) + M) (Vaswani et al. 2017, Eq. 1), channels first.

    q: [B, C, Nq], k: [B, C, Nk]; key_mask: None or bool [B, Nk], False = a key no query may
    attend to (M = -inf there: padding tokens). Returns A [B, Nq, Nk], each row summing to 1.

    >>> q, k = td.Tensor(np.zeros((1, 2, 1))), td.Tensor(np.zeros((1, 2, 3)))
    >>> td.nn.attention_weights(q, k, np.array([[True, True, False]])).data.tolist()
    [[[0.5, 0.5, 0.0]]]
    """
    C = q.shape[1]
    scores = (q * C ** -0.5).transpose(0, 2, 1) @ k              # [B, Nq, Nk]; scale q (smaller than scores)
    if key_mask is not None:
        key_mask = np.asarray(key_mask, dtype=bool)
        if key_mask.shape != (k.shape[0], k.shape[2]) or not key_mask.any(axis=1).all():
            raise ValueError(f"key_mask: expected bool [{k.shape[0]}, {k.shape[2]}] with at least one key per "
                             f"row, got shape {key_mask.shape}")
        scores = scores + np.where(key_mask, 0.0, MASKED).astype(scores.dtype)[:, None, :]
    return softmax(scores, axis=-1)                               # [B, Nq(query), Nk(key)]


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask=None) -> Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) with channels first.

    q: [B, C, Nq], k, v: [B, C, Nk]  ->  out[b, :, i] = sum_j A[b, i, j] v[b, :, j], with
    A = ``attention_weights(q, k, key_mask)``. Returns [B, C, Nq].

    >>> q = k = td.Tensor(np.zeros((1, 4, 3)))                # [B, C, N]: equal scores everywhere
    >>> v = td.Tensor(np.arange(12.0).reshape(1, 4, 3))
    >>> td.nn.attention(q, k, v).data[0, 0].tolist()          # uniform weights: the mean of v over the N positions
    [1.0, 1.0, 1.0]
    """
    return v @ attention_weights(q, k, key_mask).transpose(0, 2, 1)     # [B, C, Nq]


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


class CrossAttention2d(Module):
    """x [B, C, H, W] attends to a prompt's token states c [B, L, D] (with mask [B, L]) ->
    x + proj(attention(q(norm(x)), k(c), v(c), mask)), same shape as x.

    Parameters: norm (GroupNorm(num_groups, C)), q (Conv2d(C, C, 1)), k and v (Linear(D, C)),
    proj (Conv2d(C, C, 1), zeroed as in Stable Diffusion's SpatialTransformer: the block starts
    as the identity). With ``keep_weights = True`` each call stores the attention weights
    A [B, H*W, L] as ``self.weights`` (an ndarray), for a picture of which word each pixel used.

    >>> cross = td.nn.CrossAttention2d(8, context_dim=6, num_groups=4, rng=np.random.default_rng(0))
    >>> x, c = np.zeros((2, 8, 3, 3), np.float32), np.ones((2, 5, 6), np.float32)
    >>> mask = np.array([[True, True, False, False, False]] * 2)
    >>> cross.keep_weights = True
    >>> cross(x, c, mask).shape, cross.weights.shape, float(cross.weights[0, 0, 2:].sum())   # padding: weight 0
    ((2, 8, 3, 3), (2, 9, 5), 0.0)
    """

    def __init__(self, channels: int, context_dim: int, num_groups: int = 32, zero_init_proj: bool = True, *,
                 rng=None, dtype=np.float32):
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.context_dim = check_positive_int(context_dim, "context_dim")
        rng, dtype = check_rng(rng, allow_none=True), check_dtype(dtype)
        self.norm = GroupNorm(num_groups, channels, dtype=dtype)
        self.q = Conv2d(channels, channels, 1, rng=rng, dtype=dtype)
        self.k = Linear(context_dim, channels, rng=rng, dtype=dtype)
        self.v = Linear(context_dim, channels, rng=rng, dtype=dtype)
        self.proj = Conv2d(channels, channels, 1, rng=rng, dtype=dtype)
        if zero_init_proj:
            self.proj.weight.data[...] = 0
            self.proj.bias.data[...] = 0
        self.keep_weights, self.weights = False, None

    def forward(self, x, context, mask=None) -> Tensor:
        x = to_tensor(x, self.q.weight.dtype)
        context = to_tensor(context, self.q.weight.dtype)
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"CrossAttention2d expected input [B, {self.channels}, H, W], got shape {x.shape}")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != self.context_dim:
            raise ValueError(f"context: expected token states [{x.shape[0]}, L, {self.context_dim}], "
                             f"got shape {context.shape}")
        B, C, H, W = x.shape
        q = self.q(self.norm(x)).reshape(B, C, H * W)                   # [B, C, N]   from the pixels
        k = self.k(context).transpose(0, 2, 1)                          # [B, C, L]   from the words
        v = self.v(context).transpose(0, 2, 1)                          # [B, C, L]
        weights = attention_weights(q, k, mask)                         # [B, N, L]
        if self.keep_weights:
            self.weights = weights.data.copy()
        h = (v @ weights.transpose(0, 2, 1)).reshape(B, C, H, W)        # each pixel: a mixture of the words
        return x + self.proj(h)

    def extra_repr(self):
        return f"channels={self.channels}, context_dim={self.context_dim}"
