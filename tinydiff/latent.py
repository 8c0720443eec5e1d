"""Latent diffusion (Rombach et al. 2022): a diffusion model in a frozen autoencoder's latent space.

A pixel-space diffusion model runs its whole chain on 784 values per digit, most of them
background. Latent diffusion splits the work in two:

1. an autoencoder (here ``models.VAE`` with a 4 x 7 x 7 latent) compresses each digit into z,
   is trained once and then frozen;
2. a diffusion model learns the distribution of z (the same GaussianDiffusion, UNet, samplers
   and guidance as in pixel space, on a grid 16 times smaller), and sampling runs the chain on
   z and decodes once at the end.

Seen from the VAE: its prior N(0, I) only approximates the codes the encoder actually uses
(the aggregate posterior q(z) = E_x q(z | x)); the diffusion model *learns* that distribution,
so decoding its samples gives better digits than decoding N(0, I) (docs/vae-and-latent.md measures both).

**The scale factor.** The diffusion's schedule assumes data of about unit scale: it ends at
q(x_T) ~ N(0, I) and its first steps add noise of a fixed size. The VAE's codes have whatever
scale training gave them, so they are multiplied by one number s = 1 / std(z), the standard
deviation of posterior samples z ~ q(z | x) over all values of all training digits (Rombach
et al.'s released code does the same with the first batch, ``scale_by_std``):

    z_diffusion = s * z          (encode)        z = z_diffusion / s          (decode)

``LatentSpace`` holds the frozen VAE and s; the diffusion never sees anything else.
``LatentBatches`` feeds a Trainer fresh scaled posterior draws of the training digits.
"""
from __future__ import annotations

import numpy as np

from .checks import check_rng
from .data.arrays import EpochSampler
from .engine import no_grad
from .gaussian import standard_normal_noise


class LatentSpace:
    """A frozen autoencoder and the scale of its latents: encode images to unit-scale codes for a
    diffusion model, decode its samples back to images.

    Args:
        vae: a trained ``models.VAE`` (only encode and generate are used; it is put in eval mode).
        scale_factor: s; ``LatentSpace.fit(vae, x, rng)`` measures it as 1 / std(z).

    >>> vae = td.models.VAE((4, 7, 7), channels=(8, 8), rng=np.random.default_rng(0))
    >>> x = np.zeros((3, 1, 28, 28), np.float32)
    >>> space = td.latent.LatentSpace.fit(vae, x, np.random.default_rng(0))
    >>> codes = space.encode(x, rng=np.random.default_rng(1))      # s * z, z ~ q(z | x)
    >>> codes.shape, space.decode(codes).shape
    ((3, 4, 7, 7), (3, 1, 28, 28))
    >>> bool(np.allclose(space.unscale(space.scale(codes)), codes))
    True
    """

    def __init__(self, vae, scale_factor: float):
        if not (np.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"scale_factor: expected a positive finite number (1 / std of the latents), "
                             f"got {scale_factor!r}")
        self.vae = vae.eval()
        self.scale_factor = float(scale_factor)

    @property
    def shape(self) -> tuple:
        """The latent shape the diffusion model works on, e.g. (4, 7, 7)."""
        return self.vae.latent_shape

    def posterior(self, x, batch_size: int = 250):
        """mu and log sigma^2 of q(z | x) for images x [N, 1, 28, 28] in [-1, 1], as ndarrays
        [N, *latent] (unscaled), computed batch by batch without a graph."""
        means, log_variances = [], []
        with no_grad():
            for i in range(0, len(x), batch_size):
                mean, log_variance = self.vae.encode(x[i:i + batch_size])
                means.append(mean.data)
                log_variances.append(log_variance.data)
        return np.concatenate(means), np.concatenate(log_variances)

    @classmethod
    def fit(cls, vae, x, rng, batch_size: int = 250) -> "LatentSpace":
        """Measure s = 1 / std(z) on posterior samples z = mu + sigma * eps of the images x
        [N, 1, 28, 28] (one draw per image, every latent value pooled, as Rombach et al.'s code)."""
        space = cls(vae, 1.0)
        mean, log_variance = space.posterior(x, batch_size)
        z = mean + np.exp(0.5 * log_variance) * check_rng(rng).standard_normal(mean.shape, dtype=mean.dtype)
        space.scale_factor = float(1.0 / z.std())
        return space

    def scale(self, z):
        """Unscaled latents z -> the diffusion's data s * z."""
        return (z * np.asarray(self.scale_factor, dtype=z.dtype)).astype(z.dtype, copy=False)

    def unscale(self, z_scaled):
        """The diffusion's data -> the VAE's latents z = z_scaled / s."""
        return (z_scaled / np.asarray(self.scale_factor, dtype=z_scaled.dtype)).astype(z_scaled.dtype, copy=False)

    def sample_codes(self, mean, log_variance, noise=None, rng=None):
        """Scaled posterior samples s * (mu + sigma * eps) from precomputed ``posterior`` arrays:
        a fresh draw each time, so the diffusion sees the codes the decoder was trained on."""
        eps = standard_normal_noise(mean.shape, mean.dtype, noise, rng)
        return self.scale(mean + np.exp(0.5 * log_variance) * eps)

    def encode(self, x, rng=None, noise=None, sample: bool = True):
        """Images x [N, 1, 28, 28] in [-1, 1] -> scaled codes [N, *latent]: s * z with z ~ q(z | x)
        (sample=False: s * mu(x), the posterior mean)."""
        mean, log_variance = self.posterior(x)
        return self.sample_codes(mean, log_variance, noise, rng) if sample else self.scale(mean)

    def decode(self, z_scaled, batch_size: int = 250) -> np.ndarray:
        """Scaled codes [N, *latent] -> images [N, 1, 28, 28] in [-1, 1], the decoder's mean at z / s."""
        z = self.unscale(np.asarray(z_scaled, dtype=np.float32))
        return np.concatenate([self.vae.generate(z[i:i + batch_size]) for i in range(0, len(z), batch_size)])


class LatentBatches(EpochSampler):
    """A Trainer's data for latent diffusion: batches (s * z, {"y": labels}) with the images in
    epochs (an ``EpochSampler`` over their posterior means and log-variances, computed once by
    ``space.posterior``) and a fresh draw z = mu + sigma * eps at every visit, so the diffusion
    learns the codes the decoder was trained on, not only their means.

    mean, log_variance: [N, *latent] (unscaled); labels: [N] or None.

    >>> vae = td.models.VAE((4, 7, 7), channels=(8, 8), rng=np.random.default_rng(0))
    >>> space = td.latent.LatentSpace(vae, 2.0)
    >>> mean, log_variance = space.posterior(np.zeros((6, 1, 28, 28), np.float32))
    >>> z, kwargs = td.latent.LatentBatches(space, mean, log_variance, np.arange(6))(np.random.default_rng(0), 4)
    >>> z.shape, kwargs["y"].shape
    ((4, 4, 7, 7), (4,))
    """

    def __init__(self, space: LatentSpace, mean, log_variance, labels=None):
        super().__init__(np.stack([mean, log_variance], axis=1), labels)          # [N, 2, *latent]
        self.space = space

    def __call__(self, rng, n):
        params, kwargs = super().__call__(rng, n)
        return self.space.sample_codes(params[:, 0], params[:, 1], rng=rng), kwargs

    def peek(self, n):
        params, kwargs = super().peek(n)
        return self.space.scale(params[:, 0]), kwargs
