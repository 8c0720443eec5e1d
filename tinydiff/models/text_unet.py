"""TextUNet: eps_theta(z_t, t, tau_theta(y)), the UNet of Stable Diffusion in miniature.

Rombach et al. (2022), sec. 3.3 and Fig. 3: the denoising UNet of a latent diffusion model is
conditioned on a prompt y through a text encoder tau_theta and cross-attention layers,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
    Q = W_Q phi_i(z_t),   K = W_K tau_theta(y),   V = W_V tau_theta(y)

where phi_i(z_t) are the UNet's features at one block. ``TextUNet`` is ``td.models.UNet``
(unconditional: it has no class labels) with three additions, and no layer copied:

1. ``text_encoder``: tau_theta (``td.models.TextEncoder``), token ids [B, L] -> token states
   c [B, L, D] and the padding mask; it trains with the UNet (no CLIP).
2. every attention block of the UNet (the middle, and ``attention_levels``) becomes a
   ``TransformerBlock2d``: the UNet's own self-attention over pixels, then a
   ``nn.CrossAttention2d`` from the pixels to the tokens (Stable Diffusion's SpatialTransformer,
   without its feed-forward layer);
3. ``pooled=True``: the start token's final state (it attends to every word of the prompt)
   is projected and added to the time embedding, so the prompt reaches every residual
   block's scale and shift too, as SDXL and Imagen add a pooled text embedding. A 7 x 7
   latent allows the UNet one level, so cross-attention sits in one place only.

The condition is ``y`` = token ids [B, L] (``td.text.Tokenizer``); y=None is the empty prompt.
``null_labels`` is the empty prompt's ids, so ``td.ClassifierFreeGuidance`` guides a TextUNet
as it guides labels (and a negative prompt replaces the empty one: ``negative=``).
``attention_maps(x, t, y)`` returns the cross-attention weights for a picture.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..engine import Tensor, no_grad
from ..text import PAD_ID, START_ID
from .text_encoder import TextEncoder
from .unet import UNet


class TransformerBlock2d(nn.Module):
    """h [B, C, H, W] -> cross(self_attn(h), context, mask): pixels attend to pixels, then to words.

    >>> block = td.models.TransformerBlock2d(td.nn.SelfAttention2d(8, 4), td.nn.CrossAttention2d(8, 6, 4))
    >>> block(np.zeros((1, 8, 2, 2), np.float32), np.ones((1, 3, 6), np.float32), np.ones((1, 3), bool)).shape
    (1, 8, 2, 2)
    """

    def __init__(self, self_attn: nn.SelfAttention2d, cross_attn: nn.CrossAttention2d):
        super().__init__()
        self.self_attn, self.cross_attn = self_attn, cross_attn

    def forward(self, h, context, mask) -> Tensor:
        return self.cross_attn(self.self_attn(h), context, mask)


class TextUNet(UNet):
    """eps_theta(z_t, t, y) for prompts y as token ids: [B, in_channels, H, W] -> same shape.

    Args:
        vocab_size, context_length: the tokenizer's (``td.text.Tokenizer``).
        text_dim, text_layers: the text encoder's width D and depth.
        pooled: also add the projected start-token state to the time embedding (point 3 above).
        in_channels, base_channels, channel_mults, attention_levels, num_groups, dropout,
        scale_shift, zero_init_out, rng, dtype: as ``td.models.UNet`` (no num_classes).

    >>> net = td.models.TextUNet(40, 8, in_channels=4, base_channels=16, channel_mults=(1,), text_dim=16,
    ...                          rng=np.random.default_rng(0))
    >>> ids = td.text.Tokenizer()(["a red seven", "7"])
    >>> net(np.zeros((2, 4, 7, 7), np.float32), np.array([10, 500]), y=ids).shape
    (2, 4, 7, 7)
    >>> [a.shape for a in net.attention_maps(np.zeros((2, 4, 7, 7), np.float32), np.array([10, 500]), ids)]
    [(2, 49, 8)]
    """

    def __init__(self, vocab_size: int, context_length: int, in_channels: int = 4, base_channels: int = 64,
                 channel_mults=(1,), text_dim: int = 64, text_layers: int = 2, pooled: bool = True,
                 attention_levels=(), num_groups: int = 8, *, rng=None, dtype=np.float32, **unet_options):
        super().__init__(in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
                         num_classes=None, attention_levels=attention_levels, num_groups=num_groups, rng=rng,
                         dtype=dtype, **unet_options)
        kw = dict(rng=rng, dtype=dtype)
        self.context_length = int(context_length)
        self.text_encoder = TextEncoder(vocab_size, context_length, text_dim, text_layers, pad_id=PAD_ID, **kw)

        def with_cross(attn):                     # the UNet's self-attention, then attention to the words
            return TransformerBlock2d(attn, nn.CrossAttention2d(attn.channels, text_dim, num_groups, **kw))

        self.down_attn = nn.ModuleList([with_cross(a) for a in self.down_attn])
        self.mid_attn = with_cross(self.mid_attn)
        self.up_attn = nn.ModuleList([with_cross(a) for a in self.up_attn])
        self.pooled = bool(pooled)
        if self.pooled:
            self.pool_proj = nn.Linear(text_dim, self.time_embed[-1].out_features, **kw)

    @property
    def null_labels(self) -> tuple:
        """The ids of the empty prompt (the start token, then padding): the null condition."""
        return (START_ID,) + (PAD_ID,) * (self.context_length - 1)

    def forward(self, x, t, y=None) -> Tensor:
        x, t = self.check_input(x, t)
        ids = np.tile(np.asarray(self.null_labels), (x.shape[0], 1)) if y is None else np.asarray(
            y.data if isinstance(y, Tensor) else y)
        if ids.shape != (x.shape[0], self.context_length):
            raise ValueError(f"y: expected token ids [{x.shape[0]}, {self.context_length}] (td.text.Tokenizer), "
                             f"got shape {ids.shape}")
        context, mask = self.text_encoder(ids)                              # c = tau(y) [B, L, D], mask [B, L]
        emb = self.embed(t)                                                 # the time embedding [B, E]
        if self.pooled:
            emb = emb + self.pool_proj(context[:, 0])                       # + the start token's state
        return self.denoise(x, nn.silu(emb), (context, mask))              # cross-attention reads c

    def cross_attention_blocks(self) -> list:
        """The CrossAttention2d blocks, encoder to decoder."""
        return [m for m in self.modules() if isinstance(m, nn.CrossAttention2d)]

    def attention_maps(self, x, t, y) -> list:
        """The cross-attention weights of one forward pass, no graph: one ndarray [B, H*W, L] per
        block (row n: how much latent pixel n took from each token; padding gets 0)."""
        blocks = self.cross_attention_blocks()
        try:
            for block in blocks:
                block.keep_weights = True
            with no_grad():
                self(x, t, y=y)
            return [block.weights for block in blocks]
        finally:
            for block in blocks:
                block.keep_weights, block.weights = False, None
