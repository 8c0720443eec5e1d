"""The text-conditioned models in plain PyTorch, to read beside tinydiff/models/text_encoder.py
and tinydiff/models/text_unet.py (Stable Diffusion in miniature, docs/text-to-image.md).

Same constructor arguments, attribute names and calls as tinydiff's: ``TextEncoder(ids) ->
(token states [B, L, D], mask [B, L])``, ``TextUNet(z_t, t, y=ids)``. LayerNorm is written as
tinydiff writes it, ``GroupNorm(1, D)`` on each token, so the state dicts are the same. A
masked key gets the score -1e30 added (exp of it is exactly 0), as in ``tinydiff.nn.attention``.
Nothing here imports tinydiff.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .torch_models import UNet

MASKED = -1e30


def attention(q, k, v, key_mask=None):
    """q [B, C, Nq], k and v [B, C, Nk], key_mask bool [B, Nk] -> [B, C, Nq] (tinydiff.nn.attention):
    softmax(q^T k / sqrt(C) + M) over the keys, M = -1e30 where key_mask is False.

    >>> import torch
    >>> from tinydiff.export.torch_text import attention
    >>> q, k, v = torch.zeros(1, 2, 1), torch.zeros(1, 2, 3), torch.arange(6.0).reshape(1, 2, 3)
    >>> attention(q, k, v, torch.tensor([[True, True, False]])).flatten().tolist()   # the mean of the first two
    [0.5, 3.5]
    """
    scores = (q * q.shape[1] ** -0.5).transpose(1, 2) @ k                   # [B, Nq, Nk]
    if key_mask is not None:
        scores = scores + torch.where(key_mask, 0.0, MASKED).to(scores.dtype)[:, None, :]
    return v @ torch.softmax(scores, dim=-1).transpose(1, 2)                # [B, C, Nq]


def layer_norm(norm, h):
    """LayerNorm over the last axis of h [B, L, D], as GroupNorm(1, D) on each token.

    >>> import torch
    >>> from tinydiff.export.torch_text import layer_norm
    >>> y = layer_norm(torch.nn.GroupNorm(1, 4), torch.arange(12.0).reshape(1, 3, 4))
    >>> [round(v, 6) + 0.0 for v in y.mean(dim=-1).flatten().tolist()]    # each token: mean 0
    [0.0, 0.0, 0.0]
    """
    B, L, D = h.shape
    return norm(h.reshape(B * L, D)).reshape(B, L, D)


class TokenSelfAttention(nn.Module):
    """h [B, L, D], mask [B, L] -> Linear_o(attention(q, k, v, mask)) [B, L, D], one head.

    >>> import torch
    >>> from tinydiff.export.torch_text import TokenSelfAttention
    >>> TokenSelfAttention(4)(torch.ones(2, 3, 4), torch.tensor([[True, True, False]] * 2)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h, mask):
        q, k, v = self.qkv(h).transpose(1, 2).chunk(3, dim=1)                # each [B, D, L]
        return self.out(attention(q, k, v, mask).transpose(1, 2))            # [B, L, D]


class EncoderLayer(nn.Module):
    """One pre-norm transformer layer: h + attn(LN(h)), then + MLP(LN(h)).

    >>> import torch
    >>> from tinydiff.export.torch_text import EncoderLayer
    >>> EncoderLayer(8)(torch.ones(2, 3, 8), torch.tensor([[True, False, False]] * 2)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.GroupNorm(1, dim), TokenSelfAttention(dim)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, h, mask):
        h = h + self.attn(layer_norm(self.norm1, h), mask)                   # tokens read each other
        return h + self.mlp(layer_norm(self.norm2, h))                       # each token on its own


class TextEncoder(nn.Module):
    """tau_theta(y): token ids [B, L] -> (token states [B, L, D], mask [B, L]).

    >>> import torch
    >>> from tinydiff.export.torch_text import TextEncoder
    >>> c, mask = TextEncoder(vocab_size=40, length=8, dim=16)(torch.tensor([[1, 5, 6, 0, 0, 0, 0, 0]]))
    >>> c.shape, mask.sum().item()
    (torch.Size([1, 8, 16]), 3)
    """

    def __init__(self, vocab_size, length, dim=64, layers=2, pad_id=0):
        super().__init__()
        self.length, self.pad_id = length, pad_id
        self.token_emb, self.pos_emb = nn.Embedding(vocab_size, dim), nn.Embedding(length, dim)
        self.layers = nn.ModuleList([EncoderLayer(dim) for _ in range(layers)])
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, ids):
        mask = ids != self.pad_id                                            # [B, L], True = a real token
        h = self.token_emb(ids) + self.pos_emb(torch.arange(self.length, device=ids.device))   # [B, L, D]
        for layer in self.layers:
            h = layer(h, mask)
        return layer_norm(self.norm, h), mask


class CrossAttention2d(nn.Module):
    """x [B, C, H, W] attends to token states c [B, L, D]: x + proj(attention(q(norm x), k(c), v(c), mask)).

    >>> import torch
    >>> from tinydiff.export.torch_text import CrossAttention2d
    >>> CrossAttention2d(8, 6, num_groups=4)(torch.zeros(2, 8, 3, 3), torch.ones(2, 5, 6)).shape
    torch.Size([2, 8, 3, 3])
    """

    def __init__(self, channels, context_dim, num_groups=32):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels)
        self.q, self.proj = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.k, self.v = nn.Linear(context_dim, channels), nn.Linear(context_dim, channels)

    def forward(self, x, context, mask=None):
        B, C, H, W = x.shape
        q = self.q(self.norm(x)).reshape(B, C, H * W)                        # [B, C, N]  from the pixels
        k, v = self.k(context).transpose(1, 2), self.v(context).transpose(1, 2)   # [B, C, L]  from the words
        return x + self.proj(attention(q, k, v, mask).reshape(B, C, H, W))


class TransformerBlock2d(nn.Module):
    """Pixels attend to pixels (the UNet's self-attention), then to the words.

    >>> import torch
    >>> from tinydiff.export.torch_models import SelfAttention2d
    >>> from tinydiff.export.torch_text import CrossAttention2d, TransformerBlock2d
    >>> block = TransformerBlock2d(SelfAttention2d(8, 4), CrossAttention2d(8, 6, 4))
    >>> block(torch.zeros(1, 8, 2, 2), torch.ones(1, 3, 6), torch.ones(1, 3, dtype=torch.bool)).shape
    torch.Size([1, 8, 2, 2])
    """

    def __init__(self, self_attn, cross_attn):
        super().__init__()
        self.self_attn, self.cross_attn = self_attn, cross_attn

    def forward(self, h, context, mask):
        return self.cross_attn(self.self_attn(h), context, mask)


class TextUNet(UNet):
    """eps_theta(z_t, t, y) for prompts y as token ids [B, L]; y=None is the empty prompt
    (``null_ids``: tinydiff.text's START_ID = 1, then PAD_ID = 0).

    >>> import torch
    >>> from tinydiff.export.torch_text import TextUNet
    >>> net = TextUNet(40, 8, in_channels=4, base_channels=16, channel_mults=(1,), text_dim=16)
    >>> net(torch.zeros(2, 4, 7, 7), torch.tensor([10, 500])).shape
    torch.Size([2, 4, 7, 7])
    """

    def __init__(self, vocab_size, context_length, in_channels=4, base_channels=64, channel_mults=(1,), text_dim=64,
                 text_layers=2, pooled=True, attention_levels=(), num_groups=8, pad_id=0, start_id=1, **unet_options):
        super().__init__(in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
                         attention_levels=attention_levels, num_groups=num_groups, **unet_options)
        self.context_length, self.pad_id, self.start_id = context_length, pad_id, start_id
        self.text_encoder = TextEncoder(vocab_size, context_length, text_dim, text_layers, pad_id)

        def with_cross(attn):
            channels = attn.norm.num_channels
            return TransformerBlock2d(attn, CrossAttention2d(channels, text_dim, num_groups))

        self.down_attn = nn.ModuleList([with_cross(a) for a in self.down_attn])
        self.mid_attn = with_cross(self.mid_attn)
        self.up_attn = nn.ModuleList([with_cross(a) for a in self.up_attn])
        self.pooled = pooled
        if pooled:
            self.pool_proj = nn.Linear(text_dim, self.time_embed[-1].out_features)

    def null_ids(self, batch, device=None):
        """The empty prompt's ids [batch, L]: the start token, then padding."""
        ids = torch.full((batch, self.context_length), self.pad_id, dtype=torch.int64, device=device)
        ids[:, 0] = self.start_id
        return ids

    def forward(self, x, t, y=None):
        ids = self.null_ids(len(x), x.device) if y is None else y
        context, mask = self.text_encoder(ids)                               # c = tau(y) [B, L, D], mask [B, L]
        emb = self.embed(t)                                                  # the time embedding [B, E]
        if self.pooled:
            emb = emb + self.pool_proj(context[:, 0])                        # + the start token's state
        return self.denoise(x, F.silu(emb), (context, mask))
