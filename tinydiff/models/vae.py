"""VAE: a convolutional variational autoencoder, the one-step latent model diffusion grows from.

A VAE (Kingma & Welling 2014) has two networks and one prior:

    encoder   q_phi(z | x)   = N(z; mu(x), diag sigma^2(x))      "inference": image -> latent
    decoder   p_theta(x | z)                                     "generation": latent -> image
    prior     p(z)           = N(0, I)

and is trained on the evidence lower bound, log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))
(the functions are in ``tinydiff/elbo.py``). Three ideas make it work:

1. *The encoder outputs a distribution, not a point*: a mean and a log-variance per latent
   value. The KL term pulls every q(z|x) toward N(0, I), so the latent space has no gaps
   and decoding z ~ N(0, I) gives digits.
2. *The reparameterisation* z = mu + sigma * eps, eps ~ N(0, I): the randomness is an
   input, so gradients reach mu and sigma (``tinydiff.elbo.reparameterize``).
3. *The decoder is a distribution over pixels too.* ``decoder="discretized"`` outputs a
   mean and a log-variance per pixel and scores the 8-bit digit with the same discretized
   Gaussian as the diffusion bound's L_0 (DDPM eq. 13), so its bits/dim sit beside the
   diffusion model's; ``decoder="bernoulli"`` outputs one logit per pixel (Kingma & Welling
   appendix C.1), the classic choice, whose number is not a likelihood of 8-bit digits.

Seen from diffusion (Ho et al. 2020, sec. 2): a VAE is a hierarchical latent model with ONE
step whose encoder is learned; a diffusion model fixes its encoder to the forward process
q(x_t | x_{t-1}) and takes a thousand small steps, each decoded by the same network.

Layers (c0, c1 = ``channels``; k latent channels or d latent values; C = ``in_channels``,
1 for MNIST, 3 for coloured digits):

    encoder   x [B, C, 28, 28]
              Conv3x3(C -> c0), GroupNorm, SiLU                   [B, c0, 28, 28]
              Conv3x3 stride 2 (c0 -> c1), GroupNorm, SiLU        [B, c1, 14, 14]
              Conv3x3 stride 2 (c1 -> c1), GroupNorm, SiLU        [B, c1, 7, 7]
              Conv3x3 (c1 -> c1), GroupNorm, SiLU                 [B, c1, 7, 7]
      head    spatial (k, 7, 7): Conv1x1(c1 -> 2k)                [B, 2k, 7, 7]   = mu, log sigma^2
              flat (d,):         Linear(c1 * 49 -> 2d)            [B, 2d]         = mu, log sigma^2
    decoder   spatial: Conv3x3(k -> c1)  | flat: Linear(d -> c1 * 49), reshape   [B, c1, 7, 7]
              GroupNorm, SiLU, Conv3x3 (c1 -> c1), GroupNorm, SiLU                [B, c1, 7, 7]
              Upsample x2, Conv3x3 (c1 -> c0), GroupNorm, SiLU                    [B, c0, 14, 14]
              Upsample x2, Conv3x3 (c0 -> c0), GroupNorm, SiLU                    [B, c0, 28, 28]
              Conv3x3 (c0 -> C or 2C)      logits, or mean and log sigma^2        [B, C|2C, 28, 28]

Images are in model space, x in [-1, 1] (``tinydiff.data.to_model_space``), as for the
diffusion models. The same layers as the UNet (``tinydiff.nn``); no new derivative.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..checks import check_positive_int, check_rng
from ..engine import Tensor, no_grad

DECODERS = ("discretized", "bernoulli")


class VAE(nn.Module):
    """q_phi(z | x) and p_theta(x | z) for C x 28 x 28 digits (C = in_channels: 1, or 3 for colour).

    Args:
        latent_shape: (d,) for a flat latent (2 for a map of the latent space, 16 for
            samples) or (k, 7, 7) for a spatial one (latent diffusion works on it).
        channels: (c0, c1), the widths at 28 x 28 and at 14 x 14 / 7 x 7.
        decoder: "discretized" (a Gaussian over each pixel's 8-bit bin: a likelihood of the
            digit, bits/dim comparable with diffusion) or "bernoulli" (one logit per pixel).
        num_groups: GroupNorm groups. in_channels: image channels (1 for MNIST, 3 for
            ``td.data.ColoredMNIST``; every channel gets its own mean and variance). rng: Generator for the initial weights; dtype: float32
            (float64 for gradient checks).

    ``encode(x) -> (mu, log sigma^2)``, ``decode(z) -> decoder output``,
    ``decoder_params(output)`` names its channels, ``generate(z)`` is the mean image.

    >>> vae = td.models.VAE((16,), rng=np.random.default_rng(0))
    >>> mu, log_variance = vae.encode(np.zeros((2, 1, 28, 28), np.float32))
    >>> mu.shape, vae.decode(mu).shape, sorted(vae.decoder_params(vae.decode(mu)))
    ((2, 16), (2, 2, 28, 28), ['log_variance', 'mean'])
    >>> vae.generate(np.zeros((5, 16), np.float32)).shape         # decoder means of 5 latents
    (5, 1, 28, 28)
    """

    def __init__(self, latent_shape=(16,), channels=(32, 64), decoder: str = "discretized",
                 num_groups: int = 8, in_channels: int = 1, *, rng=None, dtype=np.float32):
        super().__init__()
        rng = check_rng(rng, allow_none=True)
        self.latent_shape = tuple(check_positive_int(n, "latent_shape entry") for n in latent_shape)
        if len(self.latent_shape) == 3 and self.latent_shape[1:] != (7, 7) or len(self.latent_shape) not in (1, 3):
            raise ValueError(f"latent_shape: expected (d,) for a flat latent or (k, 7, 7) for a spatial one, "
                             f"got {latent_shape!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder: expected one of {DECODERS}, got {decoder!r}")
        c0, c1 = (check_positive_int(c, "channels entry") for c in channels)
        if c0 % num_groups or c1 % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide both channels {tuple(channels)}")
        self.decoder, self.channels, self.num_groups = decoder, (c0, c1), num_groups
        self.in_channels = C = check_positive_int(in_channels, "in_channels")
        self.spatial = len(self.latent_shape) == 3
        kw = dict(rng=rng, dtype=dtype)

        # encoder: four 3x3 convolutions, each followed by GroupNorm and SiLU
        self.enc_convs = nn.ModuleList([nn.Conv2d(C, c0, 3, padding=1, **kw),                  # 28
                                        nn.Conv2d(c0, c1, 3, stride=2, padding=1, **kw),       # 28 -> 14
                                        nn.Conv2d(c1, c1, 3, stride=2, padding=1, **kw),       # 14 -> 7
                                        nn.Conv2d(c1, c1, 3, padding=1, **kw)])                # 7
        self.enc_norms = nn.ModuleList([nn.GroupNormSiLU(num_groups, c, dtype=dtype) for c in (c0, c1, c1, c1)])
        if self.spatial:
            k = self.latent_shape[0]
            self.enc_head = nn.Conv2d(c1, 2 * k, 1, **kw)
            self.dec_in = nn.Conv2d(k, c1, 3, padding=1, **kw)
        else:
            d = self.latent_shape[0]
            self.enc_head = nn.Linear(c1 * 49, 2 * d, **kw)
            self.dec_in = nn.Linear(d, c1 * 49, **kw)
        # decoder: the mirror image, doubling the grid (nearest x2, then the conv: UpsampleConv)
        self.dec_norm_in = nn.GroupNormSiLU(num_groups, c1, dtype=dtype)
        self.dec_convs = nn.ModuleList([nn.Conv2d(c1, c1, 3, padding=1, **kw),                 # 7
                                        nn.UpsampleConv(c1, c0, 3, padding=1, **kw),           # 7 -> 14
                                        nn.UpsampleConv(c0, c0, 3, padding=1, **kw)])          # 14 -> 28
        self.dec_norms = nn.ModuleList([nn.GroupNormSiLU(num_groups, c, dtype=dtype) for c in (c1, c0, c0)])
        self.dec_out = nn.Conv2d(c0, 2 * C if decoder == "discretized" else C, 3, padding=1, **kw)

    # ------------------------------------------------------------------ q(z | x)
    def encode(self, x):
        """q_phi(z | x) = N(mu, diag exp(log_variance)): x [B, C, 28, 28] in [-1, 1] ->
        (mu, log_variance), each [B, *latent_shape] (Tensors)."""
        x = nn.to_tensor(x, self.dec_out.weight.dtype)
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, 28, 28):
            raise ValueError(f"x: expected digits [B, {self.in_channels}, 28, 28] in [-1, 1], got shape {x.shape}")
        h = x
        for conv, norm in zip(self.enc_convs, self.enc_norms):
            h = norm(conv(h))                                                 # ends at [B, c1, 7, 7]
        if not self.spatial:
            h = h.reshape(h.shape[0], -1)                                     # [B, c1 * 49]
        out = self.enc_head(h)                                                # [B, 2k, 7, 7] or [B, 2d]
        n = self.latent_shape[0]
        return out[:, :n], out[:, n:]

    # ------------------------------------------------------------------ p(x | z)
    def decode(self, z) -> Tensor:
        """The decoder's output for z [B, *latent_shape]: [B, C, 28, 28] Bernoulli logits, or
        [B, 2C, 28, 28] = (mean, log_variance) of the discretized Gaussian. See decoder_params."""
        z = nn.to_tensor(z, self.dec_out.weight.dtype)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"z: expected latents [B, {', '.join(map(str, self.latent_shape))}], got shape {z.shape}")
        h = self.dec_in(z)
        if not self.spatial:
            h = h.reshape(h.shape[0], self.channels[1], 7, 7)                 # [B, c1, 7, 7]
        h = self.dec_norm_in(h)
        for conv, norm in zip(self.dec_convs, self.dec_norms):
            h = norm(conv(h))                                                 # 7, 14, 28
        return self.dec_out(h)                                                # [B, C or 2C, 28, 28]

    def decoder_params(self, output) -> dict:
        """Name the decoder output's channels: {"logits": [B, C, 28, 28]} (Bernoulli), or
        {"mean", "log_variance"}, each [B, C, 28, 28] (discretized Gaussian, data space [-1, 1])."""
        if self.decoder == "bernoulli":
            return {"logits": output}
        C = self.in_channels
        return {"mean": output[:, :C], "log_variance": output[:, C:]}

    def generate(self, z) -> np.ndarray:
        """The mean of p(x | z) as an image in [-1, 1], ndarray [B, C, 28, 28]: what the figures
        show for prior samples and reconstructions (a draw from p(x | z) adds independent pixel
        noise, which no reader wants to see). Bernoulli: 2 sigmoid(logits) - 1."""
        with no_grad():
            params = self.decoder_params(self.decode(z))
        if self.decoder == "bernoulli":
            return (2.0 * params["logits"].sigmoid().data - 1.0).astype(params["logits"].dtype)
        return np.clip(params["mean"].data, -1.0, 1.0)

    @property
    def config(self) -> dict:
        """The constructor arguments (JSON-able): VAE(**vae.config) rebuilds the architecture."""
        return {"latent_shape": list(self.latent_shape), "channels": list(self.channels),
                "decoder": self.decoder, "num_groups": self.num_groups, "in_channels": self.in_channels}

    def forward(self, x):
        """(mu, log_variance) of q(z | x); the ELBO (tinydiff.elbo) draws z and decodes."""
        return self.encode(x)

    def extra_repr(self):
        return f"latent_shape={self.latent_shape}, channels={self.channels}, decoder={self.decoder!r}"
