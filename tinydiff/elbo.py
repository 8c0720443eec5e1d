"""The evidence lower bound of a VAE, one function per equation (Kingma & Welling 2014).

Equation numbers are those of arXiv:1312.6114 (v10). For a latent variable model
p(x) = integral p(x | z) p(z) dz and any encoder q(z | x):

    log p(x) >= L(x) = E_q(z|x)[ log p(x | z) ] - KL( q(z|x) || p(z) )          eq. 3

the gap being KL(q(z|x) || p(z|x)) >= 0. With q(z|x) = N(mu, diag sigma^2) and p(z) = N(0, I)
the KL is closed form (appendix B, ``kl_to_standard_normal``, computed by the same
``gaussian.normal_kl`` as every term of the diffusion bound) and only the reconstruction
term needs a sample. Drawing it as z = mu + sigma * eps (``reparameterize``) makes the
estimate differentiable in mu and sigma:

    L(x) ~= -KL( q(z|x) || p(z) ) + log p(x | z),   z = mu + sigma * eps           eq. 7, 10
          ("SGVB estimator B", one sample: ``elbo_terms``)
    L(x) ~= log p(x | z) + log p(z) - log q(z | x)                                  eq. 6
          ("estimator A": no closed form needed; ``elbo_monte_carlo``)

Both are unbiased for L(x); B has the smaller variance. The reconstruction term is the
decoder's log-likelihood of the image:

    discretized Gaussian over 8-bit bins  DDPM eq. 13, ``gaussian.discretized_gaussian_log_likelihood``
                                          (the diffusion bound's L_0): -log2 P(x) / 784 is bits/dim
                                          of the 8-bit digit, comparable with any published number
    Bernoulli on grey values in [0, 1]    appendix C.1, ``bernoulli_log_likelihood``: the classic
                                          VAE loss, but MNIST's grey values are not coin flips, so
                                          this number is not a likelihood of 8-bit digits

Everything is in nats per example unless it says bits/dim (nats / (D log 2), D = 784).
The math functions are pure NumPy and broadcast; they run on engine Tensors too (NumPy
dispatches np.exp, np.log, ... to Tensor), which is how ``ELBOLoss`` trains a VAE.
"""
from __future__ import annotations

import math

import numpy as np

from .engine import unwrap
from .gaussian import decoder_nll, gaussian_log_likelihood, normal_kl, standard_normal_noise
from .objectives import split_batch

LOG2 = math.log(2.0)


# ---------------------------------------------------------------- pure math
def reparameterize(mean, log_variance, noise=None, rng=None):
    """z = mu + sigma * eps, sigma = exp(log_variance / 2), eps ~ N(0, I): a draw from
    q(z | x) = N(mu, diag sigma^2) written as a differentiable function of mu and sigma
    (Kingma & Welling 2014, sec. 2.4 and eq. 10). mean, log_variance: [B, *L] (arrays or
    Tensors); noise: eps [B, *L] (tests inject it), else drawn from rng. Returns z [B, *L].

    >>> td.elbo.reparameterize(np.array([1.0, -2.0]), np.array([0.0, np.log(4.0)]), noise=np.array([0.5, 0.5]))
    array([ 1.5, -1. ])
    """
    eps = standard_normal_noise(mean.shape, mean.dtype, noise, rng)
    return mean + np.exp(0.5 * log_variance) * eps


def kl_to_standard_normal(mean, log_variance):
    """KL( N(mu, sigma^2) || N(0, 1) ) per latent value, in nats (Kingma & Welling appendix B):

        KL = -1/2 (1 + log sigma^2 - mu^2 - sigma^2)

    which is ``gaussian.normal_kl`` with the second Gaussian N(0, 1); sum it over the latent
    dimensions for the KL of the diagonal Gaussian. Shapes broadcast; works on Tensors.

    >>> td.elbo.kl_to_standard_normal(np.array([0.0, 1.0]), np.array([0.0, 0.0]))   # N(0,1) itself; mean 1
    array([0. , 0.5])
    """
    zero = np.zeros((), dtype=np.result_type(np.asarray(unwrap(mean)).dtype, np.float32))
    return normal_kl(mean, log_variance, zero, zero)


def softplus(x):
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large |x|.

    >>> td.elbo.softplus(np.array([-1000.0, 0.0, 1000.0]))
    array([0.00000000e+00, 6.93147181e-01, 1.00000000e+03])
    """
    return np.maximum(x, 0.0) + np.log(1.0 + np.exp(-np.abs(x)))


def bernoulli_log_likelihood(x, logits):
    """log Bernoulli(x; p), p = sigmoid(logits), elementwise, in nats (Kingma & Welling appendix C.1):

        log p(x | z) = x log p + (1 - x) log(1 - p) = x * logits - softplus(logits)

    x: targets in [0, 1] (grey values are allowed, as in the VAE paper; then this is the
    cross-entropy, not the log-probability of any 8-bit image). Shapes broadcast.

    >>> td.elbo.bernoulli_log_likelihood(np.array([1.0, 0.0]), np.array([0.0, 0.0]))    # p = 1/2: log 1/2
    array([-0.69314718, -0.69314718])
    """
    return x * logits - softplus(logits)


def reconstruction_nll(x, params: dict, decoder: str):
    """-log p(x | z) per example, in nats: [B]. x: [B, 1, 28, 28] in [-1, 1] (model space).

    decoder "discretized": params {"mean", "log_variance"}: minus the sum over pixels of the
        discretized Gaussian log-probability (DDPM eq. 13, ``gaussian.decoder_nll``);
    decoder "bernoulli": params {"logits"}: minus the sum of ``bernoulli_log_likelihood``
        with targets (x + 1) / 2 in [0, 1].

    >>> x = -np.ones((1, 1, 28, 28))                          # a blank digit
    >>> td.elbo.reconstruction_nll(x, {"logits": np.full(x.shape, -10.0)}, "bernoulli").round(4)
    array([0.0356])
    >>> params = {"mean": np.full(x.shape, -2.0), "log_variance": np.full(x.shape, -4.0)}
    >>> td.elbo.reconstruction_nll(x, params, "discretized").round(6)   # all mass in the bottom bin
    array([0.])
    """
    x = np.asarray(unwrap(x))
    if decoder == "discretized":
        per_pixel = decoder_nll(x, params["mean"], params["log_variance"], kind="discretized")
    elif decoder == "bernoulli":
        per_pixel = -bernoulli_log_likelihood((x + 1.0) / 2.0, params["logits"])
    else:
        raise ValueError(f"decoder: expected 'discretized' or 'bernoulli', got {decoder!r}")
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=1)


def bits_per_dim(nats, dims: int):
    """nats per example -> bits per dimension: nats / (dims * log 2).

    >>> float(td.elbo.bits_per_dim(784 * np.log(2), 784))
    1.0
    """
    return nats / (dims * LOG2)


# ---------------------------------------------------------------- the bound of a model
def elbo_terms(vae, x, noise=None, rng=None) -> dict:
    """The negative ELBO of each digit by SGVB estimator B with one sample (Kingma & Welling
    eq. 7 and 10): -L(x) ~= -log p(x | z) + KL(q(z|x) || N(0, I)), z = mu + sigma * eps.

    vae: a ``models.VAE``; x: [B, 1, 28, 28] in [-1, 1]; noise: eps [B, *latent] or rng.
    Returns [B] values in nats (Tensors when the model records a graph):
      "reconstruction"  -log p(x | z)                     (the decoder's term, L_0 of a 1-step chain)
      "kl"              KL(q(z|x) || p(z)), summed over the latent values  (the prior term, L_T)
      "nelbo"           their sum: in expectation over eps an upper bound on -log p(x)
      "bpd"             nelbo in bits per dimension (D = 784)
    and "z" [B, *latent], the sample used.

    >>> vae = td.models.VAE((2,), channels=(8, 8), rng=np.random.default_rng(0))
    >>> terms = td.elbo.elbo_terms(vae, np.zeros((3, 1, 28, 28), np.float32), rng=np.random.default_rng(0))
    >>> sorted(terms), terms["nelbo"].shape, terms["z"].shape
    (['bpd', 'kl', 'nelbo', 'reconstruction', 'z'], (3,), (3, 2))
    """
    mean, log_variance = vae.encode(x)
    z = reparameterize(mean, log_variance, noise=noise, rng=rng)
    params = vae.decoder_params(vae.decode(z))
    recon = reconstruction_nll(x, params, vae.decoder)
    kl = kl_to_standard_normal(mean, log_variance)
    kl = kl.reshape(kl.shape[0], -1).sum(axis=1)
    nelbo = recon + kl
    dims = int(np.prod(np.shape(unwrap(x))[1:]))
    return {"reconstruction": recon, "kl": kl, "nelbo": nelbo, "bpd": bits_per_dim(nelbo, dims), "z": z}


def elbo_monte_carlo(vae, x, noise=None, rng=None):
    """The negative ELBO by SGVB estimator A (Kingma & Welling eq. 6), one sample per digit:

        -L(x) ~= -( log p(x | z) + log p(z) - log q(z | x) ),   z = mu + sigma * eps

    the KL estimated by the same sample instead of in closed form; [B] nats. Its mean over
    eps equals ``elbo_terms``' "nelbo" (the tests check it); its variance is larger.

    >>> vae = td.models.VAE((2,), channels=(8, 8), rng=np.random.default_rng(0))
    >>> td.elbo.elbo_monte_carlo(vae, np.zeros((3, 1, 28, 28), np.float32), rng=np.random.default_rng(0)).shape
    (3,)
    """
    mean, log_variance = vae.encode(x)
    z = reparameterize(mean, log_variance, noise=noise, rng=rng)
    recon = reconstruction_nll(x, vae.decoder_params(vae.decode(z)), vae.decoder)
    log_q = gaussian_log_likelihood(z, mean, 0.5 * log_variance)
    log_p = gaussian_log_likelihood(z, 0.0, 0.0)
    log_ratio = (log_q - log_p).reshape(log_q.shape[0], -1).sum(axis=1)     # log q(z|x) - log p(z)
    return recon + log_ratio


class ELBOLoss:
    """loss_fn(model, batch, rng) -> (loss Tensor, logged terms) for a Trainer: the negative
    ELBO (``elbo_terms``), averaged over the batch and divided by D = 784 (nats per pixel:
    the same optimum, gradients of a size that grad_clip = 1 suits).

    kl_weight: 1 trains on the ELBO itself. A smaller weight (a beta-VAE; Rombach et al. 2022
        use ~1e-6 for their "KL-regularised" autoencoders) trades a worse bound and prior
        samples for sharper reconstructions; the bound a model is evaluated with always uses 1.
    A batch may carry labels ((x, {"y": ...})); the VAE ignores them. Logs, in nats per digit:
    "nelbo", "reconstruction", "kl", and "bpd".

    >>> vae = td.models.VAE((2,), channels=(8, 8), rng=np.random.default_rng(0))
    >>> trainer = td.Trainer(vae, td.elbo.ELBOLoss(), np.zeros((8, 1, 28, 28), np.float32), batch_size=4,
    ...                      log_every=0)
    >>> len(trainer.train(2)), sorted(trainer.last_logs)
    (2, ['bpd', 'kl', 'nelbo', 'reconstruction'])
    """

    def __init__(self, kl_weight: float = 1.0):
        if not (isinstance(kl_weight, (int, float)) and math.isfinite(kl_weight) and kl_weight >= 0):
            raise ValueError(f"kl_weight: expected a finite weight >= 0 (1 = the ELBO), got {kl_weight!r}")
        self.kl_weight = float(kl_weight)

    def __call__(self, model, batch, rng):
        x, _ = split_batch(batch)
        terms = elbo_terms(model, x, rng=rng)
        dims = int(np.prod(x.shape[1:]))
        loss = (terms["reconstruction"] + self.kl_weight * terms["kl"]).mean() / dims
        logs = {k: float(np.mean(unwrap(terms[k]))) for k in ("nelbo", "reconstruction", "kl", "bpd")}
        return loss, logs
