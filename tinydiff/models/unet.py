"""UNet: the time- and class-conditioned image denoiser eps_theta(x_t, t, y).

A UNet (Ronneberger et al. 2015) as DDPM uses it (Ho et al. 2020, Appendix B): an
encoder halves the resolution level by level, a decoder doubles it back, and each
decoder level also sees the encoder's features at its resolution (the skip
connections), so fine detail never has to squeeze through the coarsest grid.
Three ideas make it a diffusion denoiser:

1. *Every block knows the timestep.* t goes through a sinusoidal embedding and a small
   MLP once per call; each residual block adds a learned projection of it to its
   features, so one network denoises at every noise level.
2. *Labels are added to the same embedding.* With ``num_classes`` set, a learned
   embedding of the class is added to the time embedding. Each attribute has one extra
   "null" class (index ``num_classes``) that stands for "no label": trained with labels
   randomly dropped to null, one network predicts both eps(x, t, y) and eps(x, t, null),
   which is all classifier-free guidance needs (Ho & Salimans 2022; ``tinydiff.guidance``).
   Several attributes (a digit and a colour) are several embeddings, summed.
3. *Residual blocks with normalisation* (GroupNorm, SiLU) keep a deep stack trainable.

The default, ``UNet()``, is MNIST-UNET (583,713 parameters), for [B, 1, 28, 28] input:

    time embedding  sinusoidal(t, 32) -> Linear(32, 128) -> SiLU -> Linear(128, 128) = temb
    conv_in         Conv3x3(1 -> 32)                                      [B, 32, 28, 28]
    level 0 (28)    ResBlock(32 -> 32) = h0;  Conv3x3 stride 2 (32 -> 32) [B, 32, 14, 14]
    level 1 (14)    ResBlock(32 -> 64) = h1;  Conv3x3 stride 2 (64 -> 64) [B, 64, 7, 7]
    middle (7)      ResBlock(64 -> 64), Attention(64), ResBlock(64 -> 64)
    up to 14        upsample x2, Conv3x3(64 -> 64), concat h1 -> ResBlock(128 -> 64)
    up to 28        upsample x2, Conv3x3(64 -> 64), concat h0 -> ResBlock(96 -> 32)
    out             GroupNorm(8, 32) -> SiLU -> Conv3x3(32 -> 1)          [B, 1, 28, 28]

    ResBlock(cin, cout)(x, temb):
        h = Conv3x3(cin, cout)(SiLU(GroupNorm(8, cin)(x)))
        h = h + Linear(128, cout)(SiLU(temb))        broadcast over H x W
        h = Conv3x3(cout, cout)(Dropout(SiLU(GroupNorm(8, cout)(h))))
        return h + skip(x)                           skip = Conv1x1 if cin != cout, else x

    With ``scale_shift=True`` the embedding scales as well as shifts (AdaGN, Dhariwal &
    Nichol 2021, section 3; improved-diffusion's use_scale_shift_norm):

        s, b = split(Linear(128, 2 cout)(SiLU(temb)))
        h = Conv3x3(cout, cout)(Dropout(SiLU(GroupNorm(8, cout)(h) * (1 + s) + b)))

In the code each "SiLU(GroupNorm(.))" is one ``nn.GroupNormSiLU`` and each "upsample x2,
Conv3x3" one ``nn.UpsampleConv``: layers whose plain forward is exactly that composition and
whose fast path fuses it (tinydiff/fast/). ``with td.plain():`` runs the whole network on the
plain layers, to step through it in a debugger; the numbers are the same (tests/test_plain.py).

Other sizes come from the arguments: ``channel_mults`` gives one level per entry (the
last is the middle), ``in_channels=3`` draws colour images, a small latent grid works
as long as each side divides by 2^(levels - 1). Parameter names match the PyTorch twin
in ``bench/bench_unet.py``, so a state dict moves between the two unchanged.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..checks import check_positive_int, check_rng, check_timesteps
from ..engine import Tensor, concat


class ResBlock(nn.Module):
    """The residual block above: x [B, cin, H, W], emb_act = SiLU(temb) [B, E] -> [B, cout, H, W].
    scale_shift: the embedding scales and shifts the second GroupNorm's output (AdaGN) instead
    of only shifting the features.

    >>> block = td.models.ResBlock(8, 16, emb_dim=32, rng=np.random.default_rng(0))
    >>> block(td.Tensor(np.zeros((2, 8, 4, 4), np.float32)), td.Tensor(np.zeros((2, 32), np.float32))).shape
    (2, 16, 4, 4)
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, num_groups: int = 8, dropout: float = 0.0,
                 scale_shift: bool = False, *, rng=None, dtype=np.float32):
        super().__init__()
        self.scale_shift = bool(scale_shift)
        self.norm1 = nn.GroupNormSiLU(num_groups, cin, dtype=dtype)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, rng=rng, dtype=dtype)
        self.emb_proj = nn.Linear(emb_dim, (2 if self.scale_shift else 1) * cout, rng=rng, dtype=dtype)
        # AdaGN scales and shifts between the norm and the SiLU; otherwise they come as one pair
        self.norm2 = (nn.GroupNorm if self.scale_shift else nn.GroupNormSiLU)(num_groups, cout, dtype=dtype)
        self.dropout = nn.Dropout(dropout, rng=rng)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, rng=rng, dtype=dtype)
        self.skip = nn.Conv2d(cin, cout, 1, rng=rng, dtype=dtype) if cin != cout else None

    def forward(self, x: Tensor, emb_act: Tensor) -> Tensor:
        h = self.conv1(self.norm1(x))                                       # [B, cout, H, W]
        B, C = h.shape[0], h.shape[1]
        if self.scale_shift:                                                # AdaGN: a gain and a bias per channel
            e = self.emb_proj(emb_act).reshape(B, 2 * C, 1, 1)
            h = nn.silu(self.norm2(h) * (e[:, :C] + 1.0) + e[:, C:])
        else:
            h = h + self.emb_proj(emb_act).reshape(B, C, 1, 1)              # the timestep, per channel
            h = self.norm2(h)                                               # SiLU(GroupNorm(h))
        h = self.conv2(self.dropout(h))
        return h + (x if self.skip is None else self.skip(x))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): [B, in_channels, H, W] -> [B, out_channels, H, W].

    Args:
        in_channels: image channels (1 for MNIST, 3 for colour).
        base_channels: channels of level 0; level i has base_channels * channel_mults[i].
        channel_mults: one entry per resolution level; the last level is the middle.
        num_classes: None (unconditional), an int K (labels 0..K-1, K = null), or a tuple
            (K1, K2, ...) for several attributes, each with its own null label.
        learned_variance: output 2 * in_channels: the prediction and the variance
            interpolation v of Nichol & Dhariwal (2021) eq. 15 ("hybrid" objective).
        attention_levels: levels (0 = full resolution) with an attention block after each
            of their residual blocks; the middle always has one.
        time_dim: size of the sinusoidal embedding (default base_channels);
            emb_dim: width of the time/label embedding (default 4 * base_channels).
        num_groups: GroupNorm groups; dropout: inside each residual block.
        scale_shift: condition each residual block by a scale and a shift of its second
            GroupNorm (AdaGN, Dhariwal & Nichol 2021) instead of a shift alone (the default,
            MNIST-UNET).
        zero_init_out: start the output convolution at zero, so the untrained network
            predicts eps = 0 (improved-diffusion's zero_module): the first loss is exactly 1.
        rng: Generator for the initial weights; dtype: float32 (or float64 for gradient checks).

    ``forward(x, t, y=None)``: t int [B]; y int [B] (one attribute) or [B, n_attributes];
    y=None on a conditional model means "no label" (the null class). ``null_labels``
    gives the null index of each attribute.

    >>> unet = td.models.UNet(base_channels=8, channel_mults=(1, 2), num_classes=10, rng=np.random.default_rng(0))
    >>> x = np.zeros((2, 1, 8, 8), np.float32)
    >>> unet(x, np.array([0, 999]), y=np.array([3, 10])).shape          # label 10 = the null class
    (2, 1, 8, 8)
    >>> unet.null_labels
    (10,)
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults=(1, 2, 2),
                 num_classes=None, learned_variance: bool = False, attention_levels=(),
                 time_dim: int | None = None, emb_dim: int | None = None, num_groups: int = 8,
                 dropout: float = 0.0, zero_init_out: bool = True, scale_shift: bool = False, *, rng=None,
                 dtype=np.float32):
        super().__init__()
        rng = check_rng(rng, allow_none=True)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        base = check_positive_int(base_channels, "base_channels")
        mults = tuple(check_positive_int(m, "channel_mults entry") for m in channel_mults)
        if len(mults) < 1:
            raise ValueError(f"channel_mults: expected at least one level, got {channel_mults!r}")
        chans = [base * m for m in mults]                                   # channels per level
        bad = [c for c in [base] + chans if c % num_groups]
        if bad:
            raise ValueError(f"num_groups={num_groups} must divide every level's channels {[base] + chans}")
        self.levels = len(chans)
        self.attention_levels = tuple(sorted(set(attention_levels)))
        if any(not 0 <= a < self.levels - 1 for a in self.attention_levels):
            raise ValueError(f"attention_levels: expected levels in 0..{self.levels - 2} (the middle "
                             f"always has attention), got {attention_levels!r}")
        self.out_channels = self.in_channels * (2 if learned_variance else 1)
        self.learned_variance = bool(learned_variance)
        time_dim = base if time_dim is None else time_dim
        emb_dim = 4 * base if emb_dim is None else emb_dim
        if num_classes is None:
            self.num_classes = ()
        else:
            classes = num_classes if isinstance(num_classes, (tuple, list)) else (num_classes,)
            self.num_classes = tuple(check_positive_int(k, "num_classes") for k in classes)
        kw = dict(rng=rng, dtype=dtype)

        self.time_pos = nn.SinusoidalEmbedding(time_dim, dtype=dtype)
        self.time_embed = nn.Sequential(nn.Linear(time_dim, emb_dim, **kw), nn.SiLU(), nn.Linear(emb_dim, emb_dim, **kw))
        self.label_emb = nn.ModuleList([nn.Embedding(k + 1, emb_dim, **kw) for k in self.num_classes])
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1, **kw)

        self.scale_shift = bool(scale_shift)
        block = dict(emb_dim=emb_dim, num_groups=num_groups, dropout=dropout, scale_shift=self.scale_shift, **kw)
        self.down_blocks, self.downsamples, self.down_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        prev = base
        for i in range(self.levels - 1):
            self.down_blocks.append(ResBlock(prev, chans[i], **block))
            if i in self.attention_levels:
                self.down_attn.append(nn.SelfAttention2d(chans[i], num_groups, **kw))
            self.downsamples.append(nn.Conv2d(chans[i], chans[i], 3, stride=2, padding=1, **kw))
            prev = chans[i]
        self.mid_block1 = ResBlock(prev, chans[-1], **block)
        self.mid_attn = nn.SelfAttention2d(chans[-1], num_groups, **kw)
        self.mid_block2 = ResBlock(chans[-1], chans[-1], **block)
        self.upsamples, self.up_blocks, self.up_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(self.levels - 1)):                         # coarse to fine
            self.upsamples.append(nn.UpsampleConv(chans[i + 1], chans[i + 1], 3, padding=1, **kw))
            self.up_blocks.append(ResBlock(chans[i + 1] + chans[i], chans[i], **block))
            if i in self.attention_levels:
                self.up_attn.append(nn.SelfAttention2d(chans[i], num_groups, **kw))
        self.out_norm = nn.GroupNormSiLU(num_groups, chans[0] if self.levels > 1 else chans[-1], dtype=dtype)
        self.out_conv = nn.Conv2d(self.out_norm.num_channels, self.out_channels, 3, padding=1, **kw)
        if zero_init_out:
            self.out_conv.weight.data[...] = 0
            self.out_conv.bias.data[...] = 0

    @property
    def null_labels(self) -> tuple:
        """The "no label" index of each attribute (its number of classes)."""
        return self.num_classes

    def embed(self, t, y=None) -> Tensor:
        """temb [B, emb_dim] = MLP(sinusoidal(t)) + sum over attributes of label_emb_a(y[:, a])."""
        t = np.asarray(t.data if isinstance(t, Tensor) else t)
        emb = self.time_embed(self.time_pos(t))
        if self.num_classes:
            y = self.check_labels(y, len(t))
            for a, table in enumerate(self.label_emb):
                emb = emb + table(y[:, a])
        elif y is not None:
            raise ValueError("y: this UNet is unconditional (num_classes=None); build it with "
                             "num_classes=... to condition on labels")
        return emb

    def check_labels(self, y, batch: int) -> np.ndarray:
        """Labels as int [B, n_attributes]; None means every attribute's null label."""
        n = len(self.num_classes)
        if y is None:
            return np.tile(np.asarray(self.num_classes, dtype=np.int64), (batch, 1))
        y = np.asarray(y.data if isinstance(y, Tensor) else y)
        if y.dtype.kind not in "iu":
            raise TypeError(f"y: expected integer labels, got dtype {y.dtype}")
        if y.ndim == 1 and n == 1:
            y = y[:, None]
        if y.shape != (batch, n):
            raise ValueError(f"y: expected labels of shape [{batch}]" + (f" or [{batch}, 1]" if n == 1 else "")
                             + f" for {n} attribute(s), got shape {y.shape}")
        high = np.asarray(self.num_classes)
        if y.size and ((y < 0).any() or (y > high).any()):
            raise ValueError(f"y: labels must lie in 0..K per attribute (K = {list(self.num_classes)} is the "
                             f"null label), got values in [{y.min()}, {y.max()}]")
        return y.astype(np.int64, copy=False)

    def check_input(self, x, t):
        """(x as a Tensor of the model's dtype [B, in_channels, H, W], t as int [B]), or a clear error."""
        if np.asarray(x.data if isinstance(x, Tensor) else x).dtype.kind != "f":
            raise TypeError(f"x: expected float images in [-1, 1], got dtype {np.asarray(x).dtype} "
                            "(data.to_model_space scales 8-bit digits)")
        x = nn.to_tensor(x, self.conv_in.weight.dtype)
        t = np.asarray(t.data if isinstance(t, Tensor) else t)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected images [B, {self.in_channels}, H, W], got shape {x.shape}")
        factor = 2 ** (self.levels - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x: height and width must divide by {factor} for {self.levels} levels, "
                             f"got {x.shape[2]} x {x.shape[3]}")
        check_timesteps(t, x.shape[0])
        return x, t

    def forward(self, x, t, y=None) -> Tensor:
        x, t = self.check_input(x, t)
        return self.denoise(x, nn.silu(self.embed(t, y)))                 # SiLU(temb) [B, E], shared by every block

    def denoise(self, x: Tensor, emb_act: Tensor, context=()) -> Tensor:
        """The encoder, the middle and the decoder on x [B, in_channels, H, W], every residual
        block given emb_act [B, E]. ``context`` (e.g. a prompt's token states and mask) goes to
        every attention block: ``block(h, *context)`` (td.models.TextUNet's cross-attention)."""
        h = self.conv_in(x)
        skips, attn = [], iter(self.down_attn)
        for i in range(self.levels - 1):                                    # encoder
            h = self.down_blocks[i](h, emb_act)
            if i in self.attention_levels:
                h = next(attn)(h, *context)
            skips.append(h)
            h = self.downsamples[i](h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb_act), *context), emb_act)
        attn = iter(self.up_attn)
        for k, i in enumerate(reversed(range(self.levels - 1))):            # decoder, coarse to fine
            h = self.upsamples[k](h)                                        # nearest x2, then the conv
            h = self.up_blocks[k](concat([h, skips.pop()], axis=1), emb_act)   # the skip connection
            if i in self.attention_levels:
                h = next(attn)(h, *context)
        return self.out_conv(self.out_norm(h))                              # [B, out_channels, H, W]
