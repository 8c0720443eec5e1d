"""The layers of a diffusion UNet or MLP, each composed from the engine's primitives.

    Linear     y = x W^T + b                               weight (out, in), bias (out,)
    Embedding  y = W[labels]                               weight (num_embeddings, dim)
    GroupNorm  y = (x - mean_g) / sqrt(var_g + eps) * gamma + beta     weight, bias (C,)
    GroupNormSiLU  y = silu(GroupNorm(x)), the pair every UNet block starts with
    SiLU       y = x * sigmoid(x)
    Dropout    y = x * mask / (1 - p),  mask ~ Bernoulli(1 - p), only while training
    Upsample   nearest neighbour, each pixel copied into an s x s block
    timestep_embedding(t, dim): sinusoidal features of the diffusion step t

Parameter names, shapes and default initialisation are PyTorch's, so a state dict
moves between the two unchanged. Layers with parameters take ``rng`` (a
``numpy.random.Generator``; ``None`` means a fresh, unseeded ``np.random.default_rng()``)
and ``dtype`` (float32 by default). Inputs may be ndarrays or Tensors; they are cast
to the layer's dtype (see ``to_tensor``).

Each function here is the math, composed from the engine's primitives, so it needs no
backward of its own. Where a faster kernel exists (``linear``, ``silu``, ``group_norm``,
``group_norm_silu``), one line hands off to it unless ``td.plain()`` is on:
``if fast.enabled(): return fast.linear(x, weight, bias)``. The kernels live in
tinydiff/fast/ and are tested against these functions.

References: Wu & He 2018, "Group Normalization" (Eq. 1-3); Elfwing et al. 2018 (SiLU);
Srivastava et al. 2014 (dropout); Vaswani et al. 2017 Sec. 3.5 and Ho et al. 2020
Appendix B (sinusoidal timestep embedding).
"""
from __future__ import annotations

import numpy as np

from .. import fast
from ..engine import Tensor
from ..checks import check_dtype, check_positive_int, check_rng
from .helpers import to_tensor, uniform_parameter
from .module import Module, Parameter


# ---------------------------------------------------------------------- Linear
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b.  x: [..., in], weight: [out, in], bias: [out] or None -> y: [..., out].

    >>> x, w, b = td.Tensor(np.ones((2, 3))), td.Tensor(np.full((4, 3), 0.5)), td.Tensor(np.zeros(4))
    >>> td.nn.linear(x, w, b).data.tolist()[0]                # x W^T + b: 3 * 0.5
    [1.5, 1.5, 1.5, 1.5]
    """
    if fast.enabled():
        return fast.linear(x, weight, bias)          # one graph node: tinydiff/fast/fused.py
    y = x @ weight.T                                 # [..., out]
    return y if bias is None else y + bias


class Linear(Module):
    """y = x W^T + b for x: [..., in_features] -> y: [..., out_features].

    weight: (out_features, in_features), bias: (out_features,), both U(-1/sqrt(in), 1/sqrt(in)).

    >>> layer = td.nn.Linear(3, 5, rng=np.random.default_rng(0))
    >>> layer.weight.shape, layer(np.zeros((2, 3), np.float32)).shape   # PyTorch's layout: [out, in]
    ((5, 3), (2, 5))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        rng, dtype = check_rng(rng, allow_none=True), check_dtype(dtype)
        self.weight = uniform_parameter((out_features, in_features), in_features, rng, dtype)
        self.bias = uniform_parameter((out_features,), in_features, rng, dtype) if bias else None

    def forward(self, x) -> Tensor:
        x = to_tensor(x, self.weight.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expected input [..., {self.in_features}], got shape {x.shape}")
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------------- Embedding
class Embedding(Module):
    """y = W[labels]: labels int [*S] -> y [*S, embedding_dim]. weight ~ N(0, 1) like PyTorch.

    >>> emb = td.nn.Embedding(11, 4, rng=np.random.default_rng(0))      # 10 digits and a null label
    >>> emb(np.array([3, 10])).shape
    (2, 4)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, rng=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        rng, dtype = check_rng(rng, allow_none=True), check_dtype(dtype)
        self.weight = Parameter(rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype))

    def forward(self, labels) -> Tensor:
        labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"Embedding labels must be an integer array, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_embeddings):
            raise ValueError(f"Embedding labels must lie in [0, {self.num_embeddings}), "
                             f"got values in [{labels.min()}, {labels.max()}]")
        return self.weight[labels]      # integer-array indexing; backward scatters with np.add.at

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


# ---------------------------------------------------------------------- GroupNorm
def group_norm(x: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Group Normalization (Wu & He 2018, Eq. 1-3), composed from primitives.

    x: [B, C, *S] is split into ``num_groups`` groups of C/G channels; over each group
    (its channels and all positions S):  x_hat = (x - mu) / sqrt(sigma^2 + eps), with the
    biased variance sigma^2 = mean((x - mu)^2) as in PyTorch. Then y = x_hat * gamma_c + beta_c
    with weight = gamma: (C,), bias = beta: (C,). Returns [B, C, *S].

    >>> x = td.Tensor(np.arange(16.0).reshape(1, 4, 2, 2))
    >>> y = td.nn.group_norm(x, num_groups=2).data
    >>> y.reshape(2, -1).mean(axis=1).round(6).tolist()                 # each group: mean 0 (and variance 1)
    [0.0, 0.0]
    """
    x = to_tensor(x)
    if fast.enabled():
        return fast.group_norm(x, num_groups, weight, bias, eps)        # one op: tinydiff/fast/norm.py
    B, C = x.shape[:2]
    g = x.reshape(B, num_groups, -1)                            # [B, G, C/G * prod(S)]
    mu = g.mean(axis=-1, keepdims=True)                         # [B, G, 1]
    centred = g - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)     # [B, G, 1]
    y = (centred * (var + eps) ** -0.5).reshape(x.shape)        # x_hat: [B, C, *S]
    per_channel = (1, C) + (1,) * (x.ndim - 2)                  # gamma, beta broadcast over B and S
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return y


def group_norm_silu(x: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """silu(group_norm(x)): x [B, C, *S] -> [B, C, *S], the pair every UNet block starts with.

    >>> x = td.Tensor(np.random.default_rng(0).standard_normal((2, 4, 3, 3)))
    >>> y = td.nn.group_norm_silu(x, num_groups=2).data
    >>> np.allclose(y, td.nn.silu(td.nn.group_norm(x, num_groups=2)).data)
    True
    """
    x = to_tensor(x)
    if fast.enabled():
        return fast.group_norm_silu(x, num_groups, weight, bias, eps)   # one op: tinydiff/fast/norm.py
    return silu(group_norm(x, num_groups, weight, bias, eps))


class GroupNorm(Module):
    """GroupNorm(num_groups, num_channels): x [B, C, *S] -> same shape; weight 1, bias 0.

    ``rng`` is unused (the initialisation is deterministic); it is accepted so every
    layer with parameters is built the same way.

    >>> norm = td.nn.GroupNorm(2, 4)
    >>> norm(np.random.default_rng(0).normal(size=(3, 4, 5, 5)).astype(np.float32)).shape
    (3, 4, 5, 5)
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 rng=None, dtype=np.float32):
        super().__init__()
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.num_channels = check_positive_int(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        check_rng(rng, allow_none=True)
        self.eps = float(eps)
        dtype = check_dtype(dtype)
        self.weight = Parameter(np.ones(num_channels, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, dtype)) if affine else None

    def check_input(self, x) -> Tensor:
        """x as a Tensor of the layer's dtype, [B, num_channels, *S], or a ValueError naming its shape."""
        x = to_tensor(x, self.weight.dtype if self.weight is not None else None)
        if x.ndim < 2 or x.shape[1] != self.num_channels or 0 in x.shape[2:]:
            raise ValueError(f"{type(self).__name__} expected input [B, {self.num_channels}, ...] with at least "
                             f"one position, got shape {x.shape}")
        return x

    def forward(self, x) -> Tensor:
        return group_norm(self.check_input(x), self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


class GroupNormSiLU(GroupNorm):
    """y = silu(GroupNorm(x)): the normalisation and activation every UNet block starts with.

    Built exactly as ``GroupNorm`` (same arguments, parameters ``weight`` and ``bias``), so a
    state dict moves between the two. Its fast path is one op with a closed-form backward
    (``tinydiff.fast.group_norm_silu``).

    >>> norm = td.nn.GroupNormSiLU(2, 4)
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 5, 5)).astype(np.float32)
    >>> np.allclose(norm(x).data, td.nn.silu(td.nn.GroupNorm(2, 4)(x)).data, atol=1e-6)
    True
    """

    def forward(self, x) -> Tensor:
        return group_norm_silu(self.check_input(x), self.num_groups, self.weight, self.bias, self.eps)


# ---------------------------------------------------------------------- parameter-free layers
def silu(x) -> Tensor:
    """y = x * sigmoid(x) (Elfwing et al. 2018), SiLU, also called swish.

    >>> td.nn.silu(td.Tensor(np.array([0.0, 1.0]))).data.round(4).tolist()   # x sigmoid(x)
    [0.0, 0.7311]
    """
    x = to_tensor(x)
    if fast.enabled():
        return fast.silu(x)                  # one graph node, in place, both cores: tinydiff/fast/fused.py
    return x * x.sigmoid()


class SiLU(Module):
    """y = x * sigmoid(x) (``silu`` above).

    >>> td.nn.SiLU()(np.array([-1.0, 2.0])).data.round(4).tolist()
    [-0.2689, 1.7616]
    """

    def forward(self, x) -> Tensor:
        return silu(x)


class Dropout(Module):
    """While training: y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p) drawn from ``rng``;
    in eval mode (``model.eval()``) y = x. The 1/(1-p) keeps E[y] = x.

    The mask is drawn with ``rng.random(shape, dtype=float32)`` whatever the input dtype,
    so the same seed gives the same mask in float32 and float64.

    >>> drop = td.nn.Dropout(0.5, rng=np.random.default_rng(0))
    >>> sorted(set(drop(np.ones(8, np.float32)).data.tolist()))         # kept values scaled by 1 / (1 - p)
    [0.0, 2.0]
    >>> drop.eval()(np.ones(3, np.float32)).data.tolist()               # evaluation: the identity
    [1.0, 1.0, 1.0]
    """

    def __init__(self, p: float = 0.5, *, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = check_rng(rng, allow_none=True)

    def forward(self, x) -> Tensor:
        x = to_tensor(x)
        if not self.training or self.p == 0.0:
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        return x * (keep * np.asarray(scale, dtype=x.dtype))   # mask already scaled, in x's dtype

    def extra_repr(self):
        return f"p={self.p}"


def upsample_nearest(x: Tensor, scale: int = 2) -> Tensor:
    """Nearest-neighbour upsampling: x [B, C, H, W] -> [B, C, s*H, s*W], y[.., i, j] = x[.., i//s, j//s].

    Composed: adding zeros of shape (1, 1, 1, s, 1, s) to x viewed as [B, C, H, 1, W, 1]
    broadcasts each pixel into an s x s block; in backward the engine's unbroadcast sums
    the block's gradients back onto the pixel, which is the exact adjoint.

    >>> td.nn.upsample_nearest(td.Tensor(np.arange(4.0).reshape(1, 1, 2, 2))).data[0, 0].tolist()
    [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]]
    """
    B, C, H, W = x.shape
    block = np.zeros((1, 1, 1, scale, 1, scale), dtype=x.dtype)
    return (x.reshape(B, C, H, 1, W, 1) + block).reshape(B, C, H * scale, W * scale)


class Upsample(Module):
    """Nearest-neighbour upsampling by an integer ``scale_factor`` (2 in the DDPM UNet).

    >>> td.nn.Upsample(2)(np.zeros((1, 3, 4, 4), np.float32)).shape
    (1, 3, 8, 8)
    """

    def __init__(self, scale_factor: int = 2):
        super().__init__()
        self.scale_factor = check_positive_int(scale_factor, "scale_factor")

    def forward(self, x) -> Tensor:
        x = to_tensor(x)
        if x.ndim != 4:
            raise ValueError(f"Upsample expected input [B, C, H, W], got shape {x.shape}")
        return upsample_nearest(x, self.scale_factor)

    def extra_repr(self):
        return f"scale_factor={self.scale_factor}, mode='nearest'"


# ---------------------------------------------------------------------- timestep embedding
def timestep_embedding(t, dim: int, max_period: float = 10000.0, dtype=np.float32) -> np.ndarray:
    """Sinusoidal embedding of the diffusion step (Vaswani et al. 2017 Sec. 3.5; Ho et al. 2020 App. B).

    t: [B] (integer steps; real values work too) -> [B, dim] laid out as
        emb[:, i]         = sin(t * f_i)      i = 0 .. dim/2 - 1   (first half: sines)
        emb[:, dim/2 + i] = cos(t * f_i)                           (second half: cosines)
    with frequencies f_i = exp(-ln(max_period) * i / (dim/2)), from 1 down to ~1/max_period.

    The angles are formed in float64 (t * f_i reaches ~1000 radians, where float32 has
    lost ~1e-4 of phase) on this small [B, dim] array, and the result cast to ``dtype``.
    Returns an ndarray: there is nothing to differentiate.

    >>> emb = td.nn.timestep_embedding(np.array([0, 10]), dim=8)
    >>> emb.shape, emb[0].tolist()                            # t = 0: sin 0 = 0, cos 0 = 1
    ((2, 8), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    """
    t = np.asarray(t.data if isinstance(t, Tensor) else t)
    if t.ndim != 1 or t.dtype.kind not in "iuf":
        raise ValueError(f"t must be a 1-D array of timesteps [B], got shape {t.shape} dtype {t.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2, got {dim!r}")
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half, dtype=np.float64) / half)   # [dim/2]
    angles = t.astype(np.float64)[:, None] * freqs[None, :]                          # [B, dim/2]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(check_dtype(dtype))


class SinusoidalEmbedding(Module):
    """``timestep_embedding`` as a layer, with a lookup table for integer timesteps.

    Diffusion timesteps are integers 0..T-1, so the embedding of every step can be
    computed once ([T, dim]) and then gathered: emb = table[t]. This takes the sines
    and cosines out of the training step. Real-valued t falls back to the formula.
    No parameters; the table is a cache, not state (it is not in the state dict).

    >>> td.nn.SinusoidalEmbedding(16)(np.array([0, 500, 999])).shape
    (3, 16)
    """

    def __init__(self, dim: int, max_period: float = 10000.0, dtype=np.float32):
        super().__init__()
        timestep_embedding(np.zeros(1, dtype=np.int64), dim, max_period)     # validates dim
        self.dim, self.max_period, self.dtype = dim, max_period, check_dtype(dtype)
        self._table = np.zeros((0, dim), dtype=self.dtype)

    def forward(self, t) -> np.ndarray:
        """t: [B] timesteps -> [B, dim] ndarray."""
        t = np.asarray(t.data if isinstance(t, Tensor) else t)
        if t.ndim != 1 or t.dtype.kind not in "iu" or (t.size and t.min() < 0):
            return timestep_embedding(t, self.dim, self.max_period, self.dtype)
        if t.size and t.max() >= len(self._table):              # grow the cache to cover t
            size = max(int(t.max()) + 1, 2 * len(self._table), 1000)
            self._table = timestep_embedding(np.arange(size), self.dim, self.max_period, self.dtype)
        return self._table[t]

    def cast_cache(self, dtype) -> None:
        """``model.astype(dtype)``: embeddings in the new dtype, the table recomputed."""
        self.dtype = check_dtype(dtype)
        self._table = np.zeros((0, self.dim), dtype=self.dtype)

    def extra_repr(self):
        return f"dim={self.dim}, max_period={self.max_period}"
