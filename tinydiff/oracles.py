"""Closed-form Bayes-optimal denoisers for data whose density we know: Gaussian mixtures.

If the data are a mixture of isotropic Gaussians in D dimensions,

    q(x_0) = sum_k w_k N(x_0; m_k, s_k^2 I),                  (K components, a Gaussian is K = 1)

then everything a diffusion model tries to learn has a closed form, so these "oracles"
are perfect models: tests compare samplers and likelihood bounds against them, and
they show what a network would output if training succeeded exactly.

    marginal        q(x_t)          = sum_k w_k N(sqrt(ab_t) m_k, v_k I),  v_k = ab_t s_k^2 + 1 - ab_t
    responsibility  q(k | x_t)      by Bayes' rule (computed with logsumexp)
    score           grad log q(x_t) = sum_k q(k|x_t) (sqrt(ab_t) m_k - x_t) / v_k
    optimal eps     eps*(x_t, t)    = -sqrt(1 - ab_t) grad log q(x_t)
    posterior mean  E[x_0 | x_t]    = (x_t + (1 - ab_t) grad log q(x_t)) / sqrt(ab_t)   (Tweedie)
    reverse step    q(x_{t-1} | x_t) has mean c1 E[x_0|x_t] + c2 x_t and covariance
                    beta~_t I + c1^2 Cov[x_0 | x_t]                           (Analytic-DPM)

Here ab_t = alphas_cumprod[t] with 0-based t (see tinydiff/schedules.py), c1, c2 are the
posterior_mean_coef1/2 of DDPM eq. 7 and beta~_t the posterior_variance.

The oracles compute in float64 (they are references, not a hot path) and return arrays
in the dtype of x_t. Model objects follow the model interface: model(x_t, t) with x_t
[B, *S] (flattened to D = prod(S) dimensions), t an int array [B], output [B, C, ...].

References
    Ho, Jain & Abbeel (2020), Denoising Diffusion Probabilistic Models, eq. 4, 6-7.
    Vincent (2011), A Connection Between Score Matching and Denoising Autoencoders.
    Efron (2011), Tweedie's Formula and Selection Bias, JASA 106(496) (Tweedie's formula).
    Bao, Li, Zhu & Zhang (2022), Analytic-DPM, ICLR, section 3 (optimal reverse variance).
    Nichol & Dhariwal (2021), Improved DDPM, eq. 15 (the learned-range interpolation).
"""
from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log sum exp along ``axis`` with the max subtracted first (finite for any finite a)."""
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _check_mixture(means, stds, weights):
    """Validate and broadcast mixture parameters to means [K, D], stds [K], log-weights [K]."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim == 1:
        means = means[None, :]                                  # a single Gaussian: K = 1
    if means.ndim != 2 or not np.all(np.isfinite(means)):
        raise ValueError(f"means: expected finite values of shape [K, D], got shape {means.shape}")
    K = means.shape[0]
    s = np.asarray(stds, dtype=np.float64)
    if s.shape not in ((), (K,)) or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"stds: expected a positive scalar or [K={K}] array, got {s!r}")
    stds = np.broadcast_to(s, (K,))
    w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (K,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights: expected K={K} non-negative values summing to 1, got {w!r}")
    with np.errstate(divide="ignore"):                          # a zero weight gives log 0 = -inf
        return means, stds.copy(), np.log(w)


def mixture_log_prob(x, means, stds, weights=None) -> np.ndarray:
    """log q(x) for q = sum_k w_k N(m_k, s_k^2 I), in nats; x: [B, D] -> [B].

        log q(x) = logsumexp_k [ log w_k - D/2 log(2 pi s_k^2) - |x - m_k|^2 / (2 s_k^2) ]

    The definition of a mixture density, evaluated stably with logsumexp.
    means: [K, D]; stds: scalar or [K]; weights: [K] summing to 1 (None: equal).

    >>> round(float(td.oracles.mixture_log_prob(np.zeros((1, 2)), np.zeros((1, 2)), 1.0)[0]), 6)   # log N(0; 0, I)
    -1.837877
    """
    means, stds, log_w = _check_mixture(means, stds, weights)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x: expected shape [B, {means.shape[1]}], got {x.shape}")
    D = means.shape[1]
    sq = np.sum((x[:, None, :] - means[None]) ** 2, axis=-1)                   # [B, K]
    log_comp = log_w - 0.5 * D * (LOG_2PI + 2 * np.log(stds)) - sq / (2 * stds ** 2)
    return _logsumexp(log_comp, axis=1)


def mixture_sample(n: int, means, stds, weights=None, rng=None) -> np.ndarray:
    """n draws x_0 ~ sum_k w_k N(m_k, s_k^2 I): pick k ~ Categorical(w), then m_k + s_k z.

    rng: numpy.random.Generator (required). Returns float64 [n, D].

    >>> td.oracles.mixture_sample(5, *td.oracles.eight_gaussians(), rng=np.random.default_rng(0)).shape
    (5, 2)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    means, stds, log_w = _check_mixture(means, stds, weights)
    k = rng.choice(len(stds), size=int(n), p=np.exp(log_w))
    return means[k] + stds[k, None] * rng.standard_normal((int(n), means.shape[1]))


def noisy_mixture(means, stds, alpha_bar):
    """Components of q(x_t) = sum_k w_k N(sqrt(ab) m_k, v_k I), v_k = ab s_k^2 + (1 - ab).

    x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps (DDPM eq. 4) with x_0 from component k is a sum
    of independent Gaussians, so its mean and variance add. The weights do not change.
    means: [K, D]; stds: [K]; alpha_bar: [B]. Returns centres [B, K, D], variances [B, K].

    >>> centres, v = td.oracles.noisy_mixture(np.array([[2.0, 0.0]]), np.array([0.1]), np.array([0.25]))
    >>> centres.tolist(), v.round(4).tolist()                 # sqrt(ab) m and ab s^2 + 1 - ab
    ([[[1.0, 0.0]]], [[0.7525]])
    """
    ab = alpha_bar[:, None]                                                    # [B, 1]
    return np.sqrt(ab)[..., None] * means[None], ab * stds ** 2 + (1.0 - ab)


def component_posterior(x_t, means, stds, alpha_bar):
    """q(x_0 | x_t, k): the Gaussian posterior of x_0 within component k.

    Prior N(m_k, s_k^2 I) times likelihood N(x_t; sqrt(ab) x_0, (1 - ab) I) (DDPM eq. 4):

        mean_k = m_k + (sqrt(ab) s_k^2 / v_k) (x_t - sqrt(ab) m_k)
        var_k  = s_k^2 (1 - ab) / v_k,         v_k = ab s_k^2 + 1 - ab

    (product of two Gaussians; the gain sqrt(ab) s_k^2 / v_k is a Kalman gain).
    x_t: [B, D]; alpha_bar: [B]. Returns mean_k [B, K, D] and var_k [B, K].

    >>> mean_k, var_k = td.oracles.component_posterior(np.zeros((1, 1)), np.array([[1.0]]), np.array([1.0]), np.array([0.5]))
    >>> mean_k.round(4).tolist(), var_k.round(4).tolist()    # prior N(1, 1) meets x_t = 0 at ab = 1/2
    ([[[0.5]]], [[0.5]])
    """
    centres, v = noisy_mixture(means, stds, alpha_bar)
    ab = alpha_bar[:, None]
    gain = np.sqrt(ab) * stds ** 2 / v                                         # [B, K]
    return means[None] + gain[..., None] * (x_t[:, None, :] - centres), stds ** 2 * (1.0 - ab) / v


class GaussianMixtureOracle:
    """The exact score, eps, E[x_0|x_t] and reverse moments for mixture data.

    means: [K, D] (or [D] for one Gaussian); stds: scalar or [K]; weights: [K] or None
    (equal); diffusion: an object with float64 buffers ``alphas_cumprod``, ``betas``,
    ``posterior_variance``, ``posterior_log_variance_clipped``, ``posterior_mean_coef1``
    and ``posterior_mean_coef2`` of length T (a GaussianDiffusion).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> oracle = td.oracles.GaussianMixtureOracle(*td.oracles.eight_gaussians(), diffusion=d)
    >>> x_t = np.array([[0.0, 0.0], [1.9, 0.0]])
    >>> oracle.score(x_t, np.array([999, 0])).round(2).tolist()   # pure noise: -x; near a mode: toward it
    [[-0.0, -0.0], [9.89, 0.0]]
    >>> oracle.eps_model()(x_t, np.array([999, 0])).shape          # a perfect eps-network
    (2, 2)
    """

    def __init__(self, means, stds, weights=None, diffusion=None):
        self.means, self.stds, self.log_weights = _check_mixture(means, stds, weights)
        for name in ("alphas_cumprod", "betas", "posterior_variance", "posterior_mean_coef1",
                     "posterior_mean_coef2", "posterior_log_variance_clipped"):
            if not hasattr(diffusion, name):
                raise TypeError(f"diffusion: expected an object with a '{name}' buffer "
                                f"(a GaussianDiffusion), got {type(diffusion).__name__}")
        self.diffusion = diffusion
        self.dim = self.means.shape[1]

    # ---- shapes and schedule lookups -------------------------------------------------
    def _flat(self, x_t, t):
        """x_t [B, *S] -> float64 [B, D]; t int [B] (a scalar is broadcast) -> [B]."""
        x = np.asarray(x_t)                                     # Tensors convert via __array__
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != self.dim:
            raise ValueError(f"x_t: expected shape [B, *S] with prod(S) = {self.dim}, got {x.shape}")
        t = np.broadcast_to(np.asarray(t), (x.shape[0],)) if np.ndim(t) == 0 else np.asarray(t)
        T = len(self.diffusion.alphas_cumprod)
        if t.shape != (x.shape[0],) or t.dtype.kind not in "iu" or t.min() < 0 or t.max() >= T:
            raise ValueError(f"t: expected an int array [B={x.shape[0]}] in 0..{T - 1}, got {t!r}")
        return x.reshape(x.shape[0], self.dim).astype(np.float64), t

    def _chain_index(self, t):
        """A model is called with the trained timesteps (diffusion.timestep_map[t]); on a
        respaced chain map them back to the chain's own 0..K-1 indices."""
        steps = getattr(self.diffusion, "timestep_map", None)
        t = np.asarray(t)
        if steps is None or np.array_equal(steps, np.arange(len(steps))):
            return t
        idx = np.clip(np.searchsorted(steps, t), 0, len(steps) - 1)
        if not np.array_equal(steps[idx], t):
            raise ValueError(f"t: expected timesteps of the respaced chain {steps.tolist()[:8]}..., got {t!r}")
        return idx

    def _out(self, value, x_t):
        """float64 [B, D] back to the shape and dtype of x_t."""
        x = np.asarray(x_t)
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        return value.reshape(x.shape).astype(dtype)

    # ---- Bayes' rule --------------------------------------------------------------------
    def log_responsibilities(self, x_t, t) -> np.ndarray:
        """log q(k | x_t) = log w_k + log N(x_t; sqrt(ab) m_k, v_k I) - log q(x_t).

        Bayes' rule over the components of `noisy_mixture`. Returns float64 [B, K].
        """
        x, t = self._flat(x_t, t)
        log_joint = self._log_joint(x, self.diffusion.alphas_cumprod[t])
        return log_joint - _logsumexp(log_joint, axis=1)[:, None]

    def _log_joint(self, x, ab):
        """log w_k + log N(x; sqrt(ab) m_k, v_k I): [B, D], [B] -> [B, K]."""
        centres, v = noisy_mixture(self.means, self.stds, ab)
        sq = np.sum((x[:, None, :] - centres) ** 2, axis=-1)                   # [B, K]
        return self.log_weights - 0.5 * self.dim * (LOG_2PI + np.log(v)) - sq / (2 * v)

    def log_prob(self, x_t, t) -> np.ndarray:
        """log q(x_t) = logsumexp_k [log w_k + log N(x_t; sqrt(ab) m_k, v_k I)], float64 [B]."""
        x, t = self._flat(x_t, t)
        return _logsumexp(self._log_joint(x, self.diffusion.alphas_cumprod[t]), axis=1)

    # ---- score, eps, E[x_0 | x_t] -------------------------------------------------------------
    def score(self, x_t, t) -> np.ndarray:
        """grad_x log q(x_t) = sum_k q(k | x_t) (sqrt(ab_t) m_k - x_t) / v_k.

        The gradient of a mixture's log density is the responsibility-weighted average of
        the components' scores. Shape of x_t.
        """
        x, tt = self._flat(x_t, t)
        ab = self.diffusion.alphas_cumprod[tt]
        centres, v = noisy_mixture(self.means, self.stds, ab)
        r = np.exp(self.log_responsibilities(x_t, t))                           # [B, K]
        s = np.sum((r / v)[..., None] * (centres - x[:, None, :]), axis=1)        # [B, D]
        return self._out(s, x_t)

    def score_at(self, x, alpha_bar) -> np.ndarray:
        """grad log q(x) at any real ab (not only a step of the chain; tinydiff/sde.py's
        continuous time): the same sum as `score`. x: [B, *S]; alpha_bar: a float or [B]."""
        v_x = np.asarray(x, dtype=np.float64).reshape(len(x), self.dim)
        ab = np.broadcast_to(np.asarray(alpha_bar, dtype=np.float64), (len(v_x),))
        log_joint = self._log_joint(v_x, ab)
        r = np.exp(log_joint - _logsumexp(log_joint, axis=1)[:, None])          # q(k | x), [B, K]
        centres, v = noisy_mixture(self.means, self.stds, ab)
        return self._out(np.sum((r / v)[..., None] * (centres - v_x[:, None, :]), axis=1), x)

    def score_divergence_at(self, x, alpha_bar) -> np.ndarray:
        """div score = tr Hessian of log q(x) at a real ab, float64 [B]:

            tr H = sum_k q(k|x) (|u_k|^2 - D / v_k) - |score|^2,    u_k = (sqrt(ab) m_k - x) / v_k

        (the Hessian of log sum_k w_k N_k is E_k[H_k + u_k u_k^T] - score score^T, H_k = -I / v_k).
        The exact divergence the probability-flow ODE of the oracle needs (tinydiff/likelihood.py)."""
        v_x = np.asarray(x, dtype=np.float64).reshape(len(x), self.dim)
        ab = np.broadcast_to(np.asarray(alpha_bar, dtype=np.float64), (len(v_x),))
        log_joint = self._log_joint(v_x, ab)
        r = np.exp(log_joint - _logsumexp(log_joint, axis=1)[:, None])
        centres, v = noisy_mixture(self.means, self.stds, ab)
        u = (centres - v_x[:, None, :]) / v[..., None]                            # [B, K, D]
        score = np.sum(r[..., None] * u, axis=1)
        return np.sum(r * (np.sum(u ** 2, axis=-1) - self.dim / v), axis=1) - np.sum(score ** 2, axis=1)

    def eps(self, x_t, t) -> np.ndarray:
        """The MSE-optimal noise prediction eps*(x_t, t) = E[eps | x_t] = -sqrt(1 - ab_t) score.

        Since x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, E[eps|x_t] = (x_t - sqrt(ab) E[x_0|x_t]) /
        sqrt(1 - ab); with Tweedie's formula this is -sqrt(1 - ab) grad log q(x_t)
        (the denoising-score-matching optimum, Vincent 2011; Ho et al. 2020, section 3.2).
        """
        _, tt = self._flat(x_t, t)
        scale = np.sqrt(1.0 - self.diffusion.alphas_cumprod[tt])
        s = np.asarray(self.score(x_t, t), dtype=np.float64)
        return self._out(-scale.reshape((-1,) + (1,) * (s.ndim - 1)) * s, x_t)

    def x0_posterior(self, x_t, t):
        """E[x_0 | x_t] and the diagonal of Cov[x_0 | x_t], both float64 [B, D].

            E[x_0|x_t]   = sum_k q(k|x_t) mean_k
            Var[x_0|x_t] = sum_k q(k|x_t) (var_k + mean_k^2) - E[x_0|x_t]^2     (per dimension)

        the law of total expectation / variance over the component k, with mean_k, var_k
        from `component_posterior`. E[x_0|x_t] equals Tweedie's formula
        (x_t + (1 - ab) score) / sqrt(ab) (Efron 2011); tests check both agree.
        """
        x, tt = self._flat(x_t, t)
        mean_k, var_k = component_posterior(x, self.means, self.stds, self.diffusion.alphas_cumprod[tt])
        r = np.exp(self.log_responsibilities(x_t, t))[..., None]               # [B, K, 1]
        mean = np.sum(r * mean_k, axis=1)
        second = np.sum(r * (var_k[..., None] + mean_k ** 2), axis=1)
        return mean, np.maximum(second - mean ** 2, 0.0)                        # clip rounding below 0

    def x0_mean(self, x_t, t) -> np.ndarray:
        """E[x_0 | x_t] in the shape and dtype of x_t (see `x0_posterior`)."""
        return self._out(self.x0_posterior(x_t, t)[0], x_t)

    def reverse_moments(self, x_t, t):
        """Mean and per-dimension variance of the true reverse step q(x_{t-1} | x_t).

        q(x_{t-1}|x_t) = integral q(x_{t-1}|x_t, x_0) q(x_0|x_t) dx_0 with
        q(x_{t-1}|x_t, x_0) = N(c1 x_0 + c2 x_t, beta~_t I) (DDPM eq. 6-7), so by the laws of
        total expectation and variance

            mean = c1 E[x_0|x_t] + c2 x_t,      var = beta~_t + c1^2 Var[x_0|x_t]

        A Gaussian p(x_{t-1}|x_t) with these moments minimises KL(q(x_{t-1}|x_t) || p) (moment
        matching; Bao et al. 2022, Analytic-DPM, section 3, whose optimal variance is the
        isotropic average of this one over x_t); here exact and per point. At t = 0, c1 = 1, c2 = 0,
        beta~_0 = 0: the moments of q(x_0 | x_t=0). Returns float64 [B, D], [B, D].
        """
        x, tt = self._flat(x_t, t)
        d = self.diffusion
        mean0, var0 = self.x0_posterior(x_t, t)
        c1, c2 = d.posterior_mean_coef1[tt][:, None], d.posterior_mean_coef2[tt][:, None]
        return c1 * mean0 + c2 * x, d.posterior_variance[tt][:, None] + c1 ** 2 * var0

    # ---- model callables for each parametrisation ---------------------------------------------
    def eps_model(self):
        """model(x_t, t) -> eps*(x_t, t), shape of x_t: a perfect eps-prediction network."""
        def model(x_t, t, **_):
            t = self._chain_index(t)
            return self.eps(x_t, t)
        return model

    def x0_model(self):
        """model(x_t, t) -> E[x_0 | x_t], shape of x_t: a perfect x_0-prediction network."""
        def model(x_t, t, **_):
            t = self._chain_index(t)
            return self.x0_mean(x_t, t)
        return model

    def mean_logvar_model(self):
        """model(x_t, t) -> [mean, log var] of q(x_{t-1}|x_t), concatenated on axis 1.

        For flat data [B, D] the output is [B, 2D]: the exact reverse mean and the log of
        the optimal per-point diagonal variance (`reverse_moments`), i.e. what a network
        with a learned mean and learned log-variance (Sohl-Dickstein et al. 2015) would
        output at its optimum. At t = 0 the variance is Var[x_0|x_t], which is > 0.
        """
        def model(x_t, t, **_):
            t = self._chain_index(t)
            mean, var = self.reverse_moments(x_t, t)
            return np.concatenate([self._out(mean, x_t), self._out(np.log(var), x_t)], axis=1)
        return model

    def learned_range_model(self):
        """model(x_t, t) -> [eps*, v] on axis 1, with v reproducing the optimal variance.

        Improved DDPM eq. 15: log Sigma = f log beta_t + (1 - f) log beta~_t with f = (v + 1)/2
        and the clipped log beta~ of the diffusion. Solving for v with Sigma the optimal
        variance gives v = 2 (log Sigma - log beta~) / (log beta - log beta~) - 1, clipped
        to [-1, 1] (the range a network's v is trained in; the optimum can fall outside it).
        It exceeds beta_t exactly when Var[x_0|x_t] > 1 - ab_t: since beta_t - beta~_t =
        beta_t^2 ab_{t-1} / (1 - ab_t) and c1^2 = beta_t^2 ab_{t-1} / (1 - ab_t)^2,
        beta~ + c1^2 Var <= beta  <=>  Var <= 1 - ab_t. Data with per-dimension variance
        above 1 (e.g. the 8 modes at radius 2) hit the upper end often.
        """
        def model(x_t, t, **_):
            t = self._chain_index(t)
            _, tt = self._flat(x_t, t)
            d = self.diffusion
            _, var = self.reverse_moments(x_t, t)
            lo = d.posterior_log_variance_clipped[tt][:, None]
            hi = np.log(d.betas[tt])[:, None]
            v = np.clip(2.0 * (np.log(var) - lo) / (hi - lo) - 1.0, -1.0, 1.0)
            return np.concatenate([self.eps(x_t, t), self._out(v, x_t)], axis=1)
        return model


def eight_gaussians(radius: float = 2.0, std: float = 0.1):
    """The 2-D toy mixture: 8 equal-weight modes at radius * (cos k pi/4, sin k pi/4), k = 0..7.

    Returns (means [8, 2], stds [8], weights [8]) for `GaussianMixtureOracle` or
    `mixture_log_prob`.

    >>> means, stds, weights = td.oracles.eight_gaussians()
    >>> means.shape, float(np.linalg.norm(means[3])), float(weights.sum())
    ((8, 2), 2.0, 1.0)
    """
    angles = np.arange(8) * np.pi / 4
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return means, np.full(8, float(std)), np.full(8, 1.0 / 8)
