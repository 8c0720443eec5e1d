"""TextEncoder: tau_theta, a prompt's token ids -> one state per token for cross-attention to read.

Stable Diffusion reads a prompt with CLIP's frozen text transformer (Rombach et al. 2022,
sec. 3.3: "a domain specific encoder tau_theta that projects y to an intermediate
representation tau_theta(y) in R^{M x d_tau}"). tinydiff's is a small transformer encoder
(Vaswani et al. 2017) trained jointly with the diffusion model, from the library's layers:

    h = TokenEmbedding(ids) + PositionEmbedding(0..L-1)                    [B, L, D]
    each layer (pre-norm, Xiong et al. 2020):
        h = h + Linear_o(attention(Linear_qkv(LayerNorm(h)), mask))       tokens attend to tokens
        h = h + Linear(4D -> D)(SiLU(Linear(D -> 4D)(LayerNorm(h))))      each token on its own
    c = LayerNorm(h)                                                      [B, L, D]

Two things make it a prompt encoder rather than a bag of words: the position embedding (so "7
in red" and "red 7" can be told apart) and self-attention (so the state of "seven" can depend
on the words around it). The mask (``ids != PAD_ID``) keeps padding out of every attention:
a padding token is never a key, so it changes no real token's state, and its own state is
never read by the UNet's cross-attention either.

LayerNorm here is ``nn.GroupNorm`` with one group applied to each token ([B * L, D]): the same
equation (Ba et al. 2016), one layer fewer for an exporter to know.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..checks import check_positive_int, check_rng
from ..engine import Tensor


def layer_norm(norm: nn.GroupNorm, h: Tensor) -> Tensor:
    """LayerNorm over the last axis of h [B, L, D]: ``norm`` = GroupNorm(1, D) on each token.

    >>> h = td.Tensor(np.arange(12.0).reshape(1, 3, 4))
    >>> y = td.models.text_encoder.layer_norm(td.nn.GroupNorm(1, 4, dtype=np.float64), h).data
    >>> y.mean(axis=-1).round(6).tolist(), y.std(axis=-1).round(3).tolist()     # each token: mean 0, std 1
    ([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]])
    """
    B, L, D = h.shape
    return norm(h.reshape(B * L, D)).reshape(B, L, D)


class TokenSelfAttention(nn.Module):
    """h [B, L, D], mask bool [B, L] -> Linear_o(attention(q, k, v, mask)) [B, L, D], one head.

    >>> attn = td.models.TokenSelfAttention(4, rng=np.random.default_rng(0))
    >>> attn(np.ones((2, 3, 4), np.float32), np.array([[True, True, False]] * 2)).shape
    (2, 3, 4)
    """

    def __init__(self, dim: int, *, rng=None, dtype=np.float32):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.qkv = nn.Linear(dim, 3 * dim, rng=rng, dtype=dtype)
        self.out = nn.Linear(dim, dim, rng=rng, dtype=dtype)

    def forward(self, h, mask) -> Tensor:
        h = nn.to_tensor(h, self.qkv.weight.dtype)
        D = self.dim
        qkv = self.qkv(h).transpose(0, 2, 1)                             # [B, 3D, L], channels first
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]            # each [B, D, L]
        return self.out(nn.attention(q, k, v, mask).transpose(0, 2, 1))  # [B, L, D]


class EncoderLayer(nn.Module):
    """One pre-norm transformer layer: h [B, L, D], mask [B, L] -> [B, L, D] (formulas above).

    >>> layer = td.models.EncoderLayer(8, rng=np.random.default_rng(0))
    >>> layer(td.Tensor(np.ones((2, 3, 8), np.float32)), np.array([[True, False, False]] * 2)).shape
    (2, 3, 8)
    """

    def __init__(self, dim: int, *, rng=None, dtype=np.float32):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim, dtype=dtype)
        self.attn = TokenSelfAttention(dim, rng=rng, dtype=dtype)
        self.norm2 = nn.GroupNorm(1, dim, dtype=dtype)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim, rng=rng, dtype=dtype), nn.SiLU(),
                                 nn.Linear(4 * dim, dim, rng=rng, dtype=dtype))

    def forward(self, h, mask) -> Tensor:
        h = h + self.attn(layer_norm(self.norm1, h), mask)                  # tokens read each other
        return h + self.mlp(layer_norm(self.norm2, h))                      # each token on its own


class TextEncoder(nn.Module):
    """tau_theta(y): token ids int [B, L] -> (token states c [B, L, D], mask bool [B, L]).

    Args:
        vocab_size: the tokenizer's number of ids (``td.text.Tokenizer().vocab_size``).
        length: its context length L. dim: D. layers: transformer layers.
        pad_id: the padding id (masked). rng, dtype: as every layer.

    >>> enc = td.models.TextEncoder(vocab_size=40, length=8, dim=16, rng=np.random.default_rng(0))
    >>> c, mask = enc(td.text.Tokenizer()(["a red seven", ""]))
    >>> c.shape, mask.sum(axis=1).tolist()
    ((2, 8, 16), [4, 1])
    """

    def __init__(self, vocab_size: int, length: int, dim: int = 64, layers: int = 2, pad_id: int = 0, *,
                 rng=None, dtype=np.float32):
        super().__init__()
        rng = check_rng(rng, allow_none=True)
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.length = check_positive_int(length, "length")
        self.dim = check_positive_int(dim, "dim")
        self.pad_id = int(pad_id)
        kw = dict(rng=rng, dtype=dtype)
        self.token_emb = nn.Embedding(vocab_size, dim, **kw)
        self.pos_emb = nn.Embedding(length, dim, **kw)
        self.layers = nn.ModuleList([EncoderLayer(dim, **kw) for _ in range(check_positive_int(layers, "layers"))])
        self.norm = nn.GroupNorm(1, dim, dtype=dtype)

    def forward(self, ids):
        ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim != 2 or ids.shape[1] != self.length or ids.dtype.kind not in "iu":
            raise ValueError(f"ids: expected token ids int [B, {self.length}] (td.text.Tokenizer), got "
                             f"{ids.dtype} with shape {ids.shape}")
        mask = ids != self.pad_id                                           # [B, L], True = a real token
        if not mask.any(axis=1).all():
            raise ValueError("ids: every prompt needs at least one token that is not padding (the start token)")
        h = self.token_emb(ids) + self.pos_emb(np.arange(self.length))      # [B, L, D]
        for layer in self.layers:
            h = layer(h, mask)
        return layer_norm(self.norm, h), mask
