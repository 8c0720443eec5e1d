"""tinydiff's models written in plain PyTorch, to read side by side with tinydiff/models/.

Each class here is the tinydiff model of the same name, layer for layer: the same
constructor arguments, the same attribute names (so a state dict moves between the two
unchanged: ``conv_in.weight``, ``down_blocks.0.norm1.bias``, ...) and the same call
(``unet(x, t, y=y)``, ``vae.encode(x)``). Nothing here imports tinydiff: this file, a
``config.json`` and a ``.safetensors`` file are all a PyTorch user needs (``build(spec)``
makes a model from the "model" entry of the exported config).

Where tinydiff fuses a pair of layers for speed the twin writes the pair: tinydiff's
``GroupNormSiLU`` is ``F.silu(nn.GroupNorm(...)(x))`` here and its ``UpsampleConv`` is
``F.interpolate(x, scale_factor=2)`` then the convolution. The sinusoidal embedding forms
its angles in float64, as tinydiff's does, then casts to the model's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """[B] timesteps -> [B, dim] float64: sines of t * f_i, then cosines, f_i = max_period^(-i / (dim/2))
    (Vaswani et al. 2017 sec. 3.5; Ho et al. 2020 appendix B). tinydiff.nn.timestep_embedding.

    >>> import torch
    >>> from tinydiff.export.torch_models import timestep_embedding
    >>> timestep_embedding(torch.tensor([0, 10]), 8)[0].tolist()              # t = 0: sin 0 = 0, cos 0 = 1
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)   # [dim/2]
    angles = t.to(torch.float64)[:, None] * freqs[None, :]                                     # [B, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class UpsampleConv(nn.Conv2d):
    """Nearest-neighbour upsampling by 2, then the convolution (tinydiff.nn.UpsampleConv).

    >>> import torch
    >>> from tinydiff.export.torch_models import UpsampleConv
    >>> UpsampleConv(4, 8, 3, padding=1)(torch.zeros(2, 4, 7, 7)).shape
    torch.Size([2, 8, 14, 14])
    """

    def forward(self, x):
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


# ---------------------------------------------------------------------- ToyMLP
class ToyMLP(nn.Module):
    """[B, D] points and t [B] -> [B, D * heads]: an MLP on [x, sinusoidal(t)] (tinydiff/models/toy_mlp.py).

    >>> import torch
    >>> from tinydiff.export.torch_models import ToyMLP
    >>> ToyMLP(heads=2, hidden=16)(torch.zeros(5, 2), torch.arange(5)).shape
    torch.Size([5, 4])
    """

    def __init__(self, data_dim=2, heads=1, hidden=256, emb_dim=64):
        super().__init__()
        self.emb_dim = emb_dim
        self.net = nn.Sequential(nn.Linear(data_dim + emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, data_dim * heads))

    def forward(self, x, t):
        emb = timestep_embedding(t, self.emb_dim).to(x.dtype)                # [B, emb_dim]
        return self.net(torch.cat([x, emb], dim=1))                          # [B, D * heads]


# ---------------------------------------------------------------------- UNet
class ResBlock(nn.Module):
    """x [B, cin, H, W], emb_act = SiLU(temb) [B, E] -> [B, cout, H, W] (tinydiff.models.ResBlock).

    >>> import torch
    >>> from tinydiff.export.torch_models import ResBlock
    >>> ResBlock(8, 16, emb_dim=32, scale_shift=True)(torch.zeros(2, 8, 4, 4), torch.zeros(2, 32)).shape
    torch.Size([2, 16, 4, 4])
    """

    def __init__(self, cin, cout, emb_dim, num_groups=8, dropout=0.0, scale_shift=False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(num_groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, (2 if scale_shift else 1) * cout)
        self.norm2 = nn.GroupNorm(num_groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb_act):
        h = self.conv1(F.silu(self.norm1(x)))                                # [B, cout, H, W]
        e = self.emb_proj(emb_act)[:, :, None, None]                         # [B, cout or 2 cout, 1, 1]
        if self.scale_shift:                                                 # AdaGN: a gain and a bias per channel
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(self.norm2(h) * (scale + 1.0) + shift)
        else:
            h = F.silu(self.norm2(h + e))                                    # the timestep, per channel
        h = self.conv2(self.dropout(h))
        return h + (x if self.skip is None else self.skip(x))


class SelfAttention2d(nn.Module):
    """x + proj(attention(qkv(norm(x)))) over the H*W pixels (tinydiff.nn.SelfAttention2d).

    >>> import torch
    >>> from tinydiff.export.torch_models import SelfAttention2d
    >>> SelfAttention2d(8, num_groups=4)(torch.zeros(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels, num_groups=32):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3 * C, H * W).chunk(3, dim=1)   # each [B, C, N]
        weights = torch.softmax((q * C ** -0.5).transpose(1, 2) @ k, dim=-1)        # [B, N, N]
        return x + self.proj((v @ weights.transpose(1, 2)).reshape(B, C, H, W))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): [B, in_channels, H, W] -> [B, out_channels, H, W] (tinydiff/models/unet.py).
    y: int [B] or [B, n_attributes]; None means every attribute's null label.

    >>> import torch
    >>> from tinydiff.export.torch_models import UNet
    >>> unet = UNet(base_channels=8, channel_mults=(1, 2), num_classes=10)
    >>> unet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999]), y=torch.tensor([3, 10])).shape   # 10: the null label
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_classes=None,
                 learned_variance=False, attention_levels=(), time_dim=None, emb_dim=None, num_groups=8,
                 dropout=0.0, scale_shift=False):
        super().__init__()
        chans = [base_channels * m for m in channel_mults]                   # channels per level
        self.levels, self.attention_levels = len(chans), tuple(sorted(set(attention_levels)))
        self.time_dim = time_dim or base_channels
        emb_dim = emb_dim or 4 * base_channels
        classes = () if num_classes is None else tuple(num_classes) if isinstance(num_classes, (tuple, list)) \
            else (num_classes,)
        self.num_classes = classes
        block = dict(emb_dim=emb_dim, num_groups=num_groups, dropout=dropout, scale_shift=scale_shift)

        self.time_embed = nn.Sequential(nn.Linear(self.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.ModuleList([nn.Embedding(k + 1, emb_dim) for k in classes])   # + the null label
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down_blocks, self.downsamples, self.down_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        prev = base_channels
        for i in range(self.levels - 1):
            self.down_blocks.append(ResBlock(prev, chans[i], **block))
            if i in self.attention_levels:
                self.down_attn.append(SelfAttention2d(chans[i], num_groups))
            self.downsamples.append(nn.Conv2d(chans[i], chans[i], 3, stride=2, padding=1))
            prev = chans[i]
        self.mid_block1 = ResBlock(prev, chans[-1], **block)
        self.mid_attn = SelfAttention2d(chans[-1], num_groups)
        self.mid_block2 = ResBlock(chans[-1], chans[-1], **block)
        self.upsamples, self.up_blocks, self.up_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(self.levels - 1)):                           # coarse to fine
            self.upsamples.append(UpsampleConv(chans[i + 1], chans[i + 1], 3, padding=1))
            self.up_blocks.append(ResBlock(chans[i + 1] + chans[i], chans[i], **block))
            if i in self.attention_levels:
                self.up_attn.append(SelfAttention2d(chans[i], num_groups))
        self.out_norm = nn.GroupNorm(num_groups, chans[0] if self.levels > 1 else chans[-1])
        self.out_conv = nn.Conv2d(self.out_norm.num_channels, in_channels * (2 if learned_variance else 1), 3,
                                  padding=1)

    def embed(self, t, y=None):
        """temb [B, emb_dim] = MLP(sinusoidal(t)) + sum over attributes of label_emb_a(y[:, a])."""
        emb = self.time_embed(timestep_embedding(t, self.time_dim).to(self.conv_in.weight.dtype))
        if self.num_classes:
            if y is None:                                                    # the null label of every attribute
                y = torch.tensor(self.num_classes, device=t.device).expand(len(t), -1)
            y = y[:, None] if y.ndim == 1 else y                             # [B, n_attributes]
            for a, table in enumerate(self.label_emb):
                emb = emb + table(y[:, a])
        return emb

    def forward(self, x, t, y=None):
        return self.denoise(x, F.silu(self.embed(t, y)))                    # SiLU(temb) [B, E], shared by every block

    def denoise(self, x, emb_act, context=()):
        """The encoder, the middle and the decoder; ``context`` goes to every attention block
        (a prompt's token states and mask for torch_text.TextUNet)."""
        h, skips, attn = self.conv_in(x), [], iter(self.down_attn)
        for i in range(self.levels - 1):                                     # encoder
            h = self.down_blocks[i](h, emb_act)
            if i in self.attention_levels:
                h = next(attn)(h, *context)
            skips.append(h)
            h = self.downsamples[i](h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb_act), *context), emb_act)
        attn = iter(self.up_attn)
        for k, i in enumerate(reversed(range(self.levels - 1))):             # decoder, coarse to fine
            h = self.upsamples[k](h)
            h = self.up_blocks[k](torch.cat([h, skips.pop()], dim=1), emb_act)   # the skip connection
            if i in self.attention_levels:
                h = next(attn)(h, *context)
        return self.out_conv(F.silu(self.out_norm(h)))                       # [B, out_channels, H, W]


# ---------------------------------------------------------------------- VAE
class VAE(nn.Module):
    """q(z | x) and p(x | z) for C x 28 x 28 digits (tinydiff/models/vae.py): ``encode(x) -> (mu,
    log_variance)``, ``decode(z)``, ``decoder_params(output)``, ``generate(z)``.

    >>> import torch
    >>> from tinydiff.export.torch_models import VAE
    >>> vae = VAE((16,), channels=(8, 16))
    >>> mu, log_variance = vae.encode(torch.zeros(2, 1, 28, 28))
    >>> mu.shape, vae.generate(mu).shape
    (torch.Size([2, 16]), torch.Size([2, 1, 28, 28]))
    """

    def __init__(self, latent_shape=(16,), channels=(32, 64), decoder="discretized", num_groups=8, in_channels=1):
        super().__init__()
        (c0, c1), self.latent_shape, self.decoder = channels, tuple(latent_shape), decoder
        self.in_channels = C = in_channels
        self.c1, self.spatial = c1, len(self.latent_shape) == 3
        self.enc_convs = nn.ModuleList([nn.Conv2d(C, c0, 3, padding=1), nn.Conv2d(c0, c1, 3, stride=2, padding=1),
                                        nn.Conv2d(c1, c1, 3, stride=2, padding=1), nn.Conv2d(c1, c1, 3, padding=1)])
        self.enc_norms = nn.ModuleList([nn.GroupNorm(num_groups, c) for c in (c0, c1, c1, c1)])
        n = self.latent_shape[0]
        if self.spatial:
            self.enc_head, self.dec_in = nn.Conv2d(c1, 2 * n, 1), nn.Conv2d(n, c1, 3, padding=1)
        else:
            self.enc_head, self.dec_in = nn.Linear(c1 * 49, 2 * n), nn.Linear(n, c1 * 49)
        self.dec_norm_in = nn.GroupNorm(num_groups, c1)
        self.dec_convs = nn.ModuleList([nn.Conv2d(c1, c1, 3, padding=1), UpsampleConv(c1, c0, 3, padding=1),
                                        UpsampleConv(c0, c0, 3, padding=1)])
        self.dec_norms = nn.ModuleList([nn.GroupNorm(num_groups, c) for c in (c1, c0, c0)])
        self.dec_out = nn.Conv2d(c0, 2 * C if decoder == "discretized" else C, 3, padding=1)

    def encode(self, x):
        h = x                                                                # [B, C, 28, 28]
        for conv, norm in zip(self.enc_convs, self.enc_norms):
            h = F.silu(norm(conv(h)))                                        # ends at [B, c1, 7, 7]
        out = self.enc_head(h if self.spatial else h.flatten(1))             # [B, 2k, 7, 7] or [B, 2d]
        n = self.latent_shape[0]
        return out[:, :n], out[:, n:]

    def decode(self, z):
        h = self.dec_in(z)
        h = F.silu(self.dec_norm_in(h if self.spatial else h.reshape(len(z), self.c1, 7, 7)))
        for conv, norm in zip(self.dec_convs, self.dec_norms):
            h = F.silu(norm(conv(h)))                                        # 7, 14, 28
        return self.dec_out(h)                                               # [B, C or 2C, 28, 28]

    def decoder_params(self, output):
        if self.decoder == "bernoulli":
            return {"logits": output}
        C = self.in_channels
        return {"mean": output[:, :C], "log_variance": output[:, C:]}

    def generate(self, z):
        with torch.no_grad():
            params = self.decoder_params(self.decode(z))
        if self.decoder == "bernoulli":
            return 2.0 * torch.sigmoid(params["logits"]) - 1.0
        return params["mean"].clamp(-1.0, 1.0)

    def forward(self, x):
        return self.encode(x)


# ---------------------------------------------------------------------- ForwardResidual
class ForwardResidual(nn.Module):
    """(mu, log sigma^2) = (sqrt(1 - beta_t) x_t + sqrt(beta_t) f_mu, log beta_t + f_sigma)
    (Sohl-Dickstein et al. 2015; tinydiff/models/forward_residual.py). The tables are float32,
    as tinydiff's, and not part of the state dict (they follow from betas).

    >>> import torch
    >>> from tinydiff.export.torch_models import ForwardResidual, ToyMLP
    >>> model = ForwardResidual(ToyMLP(heads=2, hidden=16), torch.full((40,), 0.01))
    >>> model(torch.zeros(3, 2), torch.tensor([0, 1, 39])).shape, list(model.state_dict())[:1]
    (torch.Size([3, 4]), ['net.net.0.weight'])
    """

    def __init__(self, net, betas):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)                  # [T]
        self.net = net
        self.register_buffer("sqrt_alphas", torch.sqrt(1.0 - betas).float(), persistent=False)
        self.register_buffer("sqrt_betas", torch.sqrt(betas).float(), persistent=False)
        self.register_buffer("log_betas", torch.log(betas).float(), persistent=False)

    def forward(self, x, t):
        out, D = self.net(x, t), x.shape[1]                                  # [B, 2D] = (f_mu, f_sigma)
        # x_t is data here, as in tinydiff: no gradient flows through sqrt(1 - beta_t) x_t
        mean = self.sqrt_alphas[t][:, None] * x.detach() + self.sqrt_betas[t][:, None] * out[:, :D]
        log_variance = self.log_betas[t][:, None] + out[:, D:]
        return torch.cat([mean, log_variance], dim=1)


# ---------------------------------------------------------------------- from the exported config
MODELS = {"ToyMLP": ToyMLP, "UNet": UNet, "VAE": VAE, "ForwardResidual": ForwardResidual}


def _text_models():
    from . import torch_text                     # the text twins subclass UNet above
    return {"TextUNet": torch_text.TextUNet, "TextEncoder": torch_text.TextEncoder}


def build(spec):
    """The module a spec describes: {"class": "UNet", "args": {constructor arguments}}, the "model"
    entry of an exported config. An argument that is itself a spec (ForwardResidual's net) is built first.

    >>> from tinydiff.export.torch_models import build
    >>> type(build({"class": "UNet", "args": {"base_channels": 8, "channel_mults": [1, 2]}})).__name__
    'UNet'
    """
    models = {**MODELS, **_text_models()}
    if spec["class"] not in models:
        raise ValueError(f"model class {spec['class']!r}: expected one of {sorted(models)}")
    args = {k: build(v) if isinstance(v, dict) and "class" in v else v for k, v in spec["args"].items()}
    return models[spec["class"]](**args)
