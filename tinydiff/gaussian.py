"""Pure Gaussian math: KL divergence and log-likelihoods of diagonal Gaussians.

Every function is elementwise and broadcasts like NumPy; reduce over the data axes
yourself. Results are in nats (divide by log 2 for bits).

Only np.exp / np.log / np.tanh / np.sqrt / np.where / np.maximum and arithmetic touch
the inputs, so the same code runs on engine Tensors (NumPy dispatches these to
``Tensor``) and gradients flow through it during training. No Tensor import here.

An array result that holds NaN or inf is a ValueError naming the inputs (``finite``): a KL
of inf is an overflow, not an answer. Tensor results pass unscanned; during training the
Trainer checks the loss and names the term (tinydiff/train.py).
"""
from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


def finite(result, where: str, **inputs):
    """``result`` if it is a Tensor or holds only finite numbers, else a ValueError saying which
    input holds NaN or inf, or how large the inputs got.

    >>> td.gaussian.finite(np.ones(2), "normal_kl").tolist()
    [1.0, 1.0]
    """
    if not isinstance(result, (np.ndarray, np.generic)) or np.isfinite(result).all():
        return result
    details = []
    for name, value in inputs.items():
        value = np.asarray(value)
        if value.dtype.kind not in "fc" or value.size == 0:
            continue
        if not np.isfinite(value).all():
            details.append(f"{name} holds NaN or inf")
        else:
            details.append(f"|{name}| reaches {float(np.abs(value).max()):.3g}")
    raise ValueError(f"{where}: the result holds NaN or inf ({'; '.join(details)}); expected finite inputs "
                     "(log-variances of a few tens at most, data of moderate size)")


def mean_flat(x):
    """Mean over every axis but the batch axis: [B, *D] -> [B]. Works on Tensors.

    >>> td.mean_flat(np.arange(8.0).reshape(2, 2, 2)).tolist()
    [1.5, 5.5]
    """
    return x.reshape(x.shape[0], -1).mean(axis=1)


def standard_normal_noise(shape, dtype, noise=None, rng=None):
    """epsilon ~ N(0, I) of the given shape and dtype: `noise` itself if given (tests
    inject it; its shape is checked), else drawn from `rng`, a numpy.random.Generator.
    Drawing in `dtype` directly keeps float32 data float32.

    >>> td.gaussian.standard_normal_noise((2, 3), np.float32, rng=np.random.default_rng(0)).dtype
    dtype('float32')
    """
    shape = tuple(shape)
    if noise is not None:
        if tuple(np.shape(noise)) != shape:
            raise ValueError(f"noise: expected shape {shape} (same as the data), got {np.shape(noise)}")
        return noise
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: pass noise= or a numpy.random.Generator as rng=, got rng={rng!r}")
    return rng.standard_normal(shape, dtype=dtype)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ), elementwise, in nats:

        KL = 1/2 [ logvar2 - logvar1 + exp(logvar1 - logvar2)
                   + (mean1 - mean2)^2 exp(-logvar2) - 1 ]

    The textbook KL of two univariate Gaussians (e.g. Kingma & Welling 2014, appendix B),
    per dimension; for diagonal Gaussians sum it over dimensions. Used for the terms
    L_{t-1} of the variational bound (DDPM eq. 5). Log-variances, not variances, are
    the inputs so that tiny variances (beta_1 ~ 1e-4) stay accurate.
    Shapes: any, broadcast together.

    >>> float(td.normal_kl(0.0, 0.0, 0.0, 0.0))               # a distribution against itself
    0.0
    >>> float(td.normal_kl(1.0, 0.0, 0.0, 0.0))               # N(1, 1) vs N(0, 1): (mean difference)^2 / 2
    0.5
    """
    kl = 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * np.exp(-logvar2))
    return finite(kl, "normal_kl", mean1=mean1, logvar1=logvar1, mean2=mean2, logvar2=logvar2)


def gaussian_log_likelihood(x, means, log_scales):
    """log N(x; means, sigma^2) with sigma = exp(log_scales), elementwise, in nats:

        log N = -1/2 log(2 pi) - log sigma - 1/2 ((x - mean) / sigma)^2

    A density, for continuous data (e.g. 2-D toy points); compare with
    `discretized_gaussian_log_likelihood` for 8-bit images. Shapes broadcast together.

    >>> round(float(td.gaussian_log_likelihood(0.0, 0.0, 0.0)), 6)   # log N(0; 0, 1) = -log(2 pi) / 2
    -0.918939
    """
    z = (x - means) * np.exp(-log_scales)
    return finite(-0.5 * LOG_2PI - log_scales - 0.5 * z * z, "gaussian_log_likelihood", x=x, means=means,
                  log_scales=log_scales)


def approx_standard_normal_cdf(x):
    """Phi(x) ~= 1/2 (1 + tanh( sqrt(2/pi) (x + 0.044715 x^3) )).

    Page (1977), "Approximating to the cumulative normal function and its inverse for
    use on a pocket calculator", Applied Statistics 26(1):75-76; the same formula is in
    the GELU paper (Hendrycks & Gimpel 2016) and in the DDPM and improved-diffusion code.
    NumPy has no erf, and tanh runs on Tensors. Its largest error against the exact
    Phi is 1.8e-4 (at |x| ~= 2.6; checked in tests/test_gaussian.py). It is odd
    around 1/2, so 1 - Phi(x) = Phi(-x) holds exactly, which we use for the upper tail.

    >>> td.approx_standard_normal_cdf(np.array([0.0, 1.0, -1.0])).round(4).tolist()  # Phi(1) = 0.8413
    [0.5, 0.8412, 0.1588]
    """
    cdf = 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return finite(cdf, "approx_standard_normal_cdf", x=x)


# Half the width of one of the 256 bins of an 8-bit image mapped to [-1, 1]: 1 / 255.
HALF_BIN = 1.0 / 255.0
# Floor on probabilities before the log: keeps log finite (-27.6 nats) and gradients
# bounded far in the tails where the tanh CDF rounds to exactly 0.
PROB_FLOOR = 1e-12


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) for 8-bit data under a Gaussian integrated over each pixel's bin, in nats.

    DDPM (Ho et al. 2020) section 3.3, eq. 13. Pixel values {0, ..., 255} are scaled to
    x in [-1, 1], so bins are 2/255 wide and centred on the 256 values x_k. For
    N(mean, sigma^2), sigma = exp(log_scales):

        P(x) = Phi((x + 1/255 - mean)/sigma) - Phi((x - 1/255 - mean)/sigma)

    except that the edge bins extend to infinity (the clipping done when quantising):
    x = -1 gets Phi((-1 + 1/255 - mean)/sigma) and x = +1 gets 1 - Phi((1 - 1/255 - mean)/sigma).
    Phi is `approx_standard_normal_cdf`. So the 256 probabilities of one pixel sum to 1.

    x: ndarray, data on the grid (any shape; never needs a gradient);
    means, log_scales: ndarray or Tensor broadcastable to x. Returns log P, shape of x.

    >>> x = np.arange(256) / 127.5 - 1.0                       # every 8-bit value, scaled to [-1, 1]
    >>> p = np.exp(td.discretized_gaussian_log_likelihood(x, 0.1, np.log(0.3)))
    >>> round(float(p.sum()), 6)                               # the 256 bins hold all the probability
    1.0
    """
    x = np.asarray(x)
    centered = x - means
    inv_sigma = np.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_sigma * (centered + HALF_BIN))   # Phi at the bin's top
    cdf_min = approx_standard_normal_cdf(inv_sigma * (centered - HALF_BIN))    # Phi at the bin's bottom
    # 1 - Phi(a) = Phi(-a): no cancellation when Phi(a) is close to 1.
    one_minus_cdf_min = approx_standard_normal_cdf(-inv_sigma * (centered - HALF_BIN))
    log_cdf_plus = np.log(np.maximum(cdf_plus, PROB_FLOOR))                   # bottom edge bin
    log_one_minus_cdf_min = np.log(np.maximum(one_minus_cdf_min, PROB_FLOOR))  # top edge bin
    log_cdf_delta = np.log(np.maximum(cdf_plus - cdf_min, PROB_FLOOR))        # interior bins
    # Thresholds at +-0.999 rather than +-1 so values a rounding error off the grid count too.
    log_p = np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
    return finite(log_p, "discretized_gaussian_log_likelihood", x=x, means=means, log_scales=log_scales)


def decoder_nll(x, mean, log_variance, kind="continuous"):
    """-log p(x | mean, exp(log_variance)) per value, in nats, the shape of x: the decoder
    term L_0 = -log p(x_0 | x_1) of the bound (DDPM eq. 5). kind="continuous" is minus a
    density (real-valued data; it can be negative), kind="discretized" minus the 8-bit bin
    probability of DDPM eq. 13 (always >= 0).

    >>> x = np.array([0.0])
    >>> round(float(td.decoder_nll(x, 0.0, np.log(0.01))[0]), 4)                  # a density: can be < 0
    -1.3836
    >>> round(float(td.decoder_nll(x + 1 / 255, 1 / 255, np.log(0.01), "discretized")[0]), 4)  # -log P >= 0
    3.4647
    """
    log_scales = 0.5 * log_variance                       # log sigma
    if kind == "discretized":
        return -discretized_gaussian_log_likelihood(x, mean, log_scales)
    if kind != "continuous":
        raise ValueError(f"kind: expected 'continuous' or 'discretized', got {kind!r}")
    return -gaussian_log_likelihood(x, mean, log_scales)
