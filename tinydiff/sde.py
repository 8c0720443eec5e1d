"""The same model in continuous time: the variance-preserving SDE and its probability-flow ODE.

Song et al. (2021, "Score-Based Generative Modeling through Stochastic Differential
Equations") read DDPM's chain as the discretisation of one SDE on t in [0, 1]:

    forward SDE (eq. 11, VP)    dx = f(x, t) dt + g(t) dw,   f = -1/2 beta(t) x,   g = sqrt(beta(t))
    marginal (eq. 33)           q(x_t | x_0) = N(sqrt(ab(t)) x_0, (1 - ab(t)) I),  ab(t) = exp(-int_0^t beta)
    reverse SDE (eq. 6)         dx = [f - g^2 score(x, t)] dt + g dw-bar,        run from t = 1 down to 0
    probability-flow ODE (eq. 13)  dx/dt = f - 1/2 g^2 score = -1/2 beta(t) (x + score(x, t))

The ODE has the same marginals as the SDE but no noise: a deterministic, invertible map
between data and N(0, I), which is what makes exact likelihoods possible (tinydiff/likelihood.py).

The schedule. ``VPSDE(diffusion)`` turns a GaussianDiffusion's T discrete steps into a
continuous beta(t) that matches it exactly: the paper's step k = 1..T (code index k - 1)
sits at time t_k = k / T, and log ab(t) is the monotone cubic through the points (t_k, log
alphas_cumprod[k - 1]) (PCHIP, Fritsch & Carlson 1980), so

    ab(t_k) = alphas_cumprod[k - 1],   int_{t_{k-1}}^{t_k} beta = -log(1 - beta_k),   beta(t) ~ T beta_k

and beta(t) = -d log ab / dt is continuous (a beta that jumped at every step would make an
adaptive solver crawl from one jump to the next).

(Song et al. eq. 32 give beta(t) = T beta_k in the limit T -> infinity: DDPM's linear
schedule becomes beta(t) = 0.1 + 19.9 t). A network trained on integer steps is asked about
time t at the real-valued step ``model_time(t) = T t - 1``: at t_k it is the integer k - 1 it
was trained on, and between two trained steps the network's outputs at both are interpolated
linearly (so the ODE's drift is continuous in t; one call on a doubled batch).

The score of any trained model (``score_fn``): an eps-network gives score = -eps / sqrt(1 - ab)
(Vincent 2011; Song et al. 2021, sec. 3.3); x0- and v-networks are turned into eps first.

    VPSDE                the schedule: beta, alpha_bar, sigma, drift f, diffusion g, model_time
    score_fn             score(x, t) from an eps-, x0- or v-model (learned-variance heads dropped)
    ode_drift            the probability-flow drift, eq. 13
    sde_sample_loop      the reverse SDE by Euler-Maruyama (sampler call shape of tinydiff/samplers.py)
    ode_sample_loop      the probability-flow ODE by Euler, Heun, RK4 or adaptive RK45 (tinydiff/ode.py)
"""
from __future__ import annotations

import numpy as np

from . import ode
from .diffusion import GaussianDiffusion, check_sample
from .engine import Tensor, concat, no_grad, unwrap
from .gaussian import standard_normal_noise
from .guidance import apply_guidance


class VPSDE:
    """The variance-preserving SDE of a GaussianDiffusion (Song et al. 2021, eq. 11 and 32).

    diffusion: the discrete chain (its betas, T and model_mean_type). t_min: where the
    likelihood ODE starts and the samplers stop (default 1 / T, the first trained step);
    t_max: 1 (the last step). Times are floats or arrays; every method broadcasts.

    >>> sde = td.sde.VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(1000)))
    >>> float(sde.alpha_bar(0.5)) == float(sde.diffusion.alphas_cumprod[499])      # t_k = k / T is step k
    True
    >>> round(float(sde.beta(0.5)), 1)                              # ~ -1000 log(1 - beta_500); eq. 32: 0.1 + 19.9 t = 10.05
    10.1
    """

    def __init__(self, diffusion: GaussianDiffusion, t_min: float | None = None, t_max: float = 1.0):
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(f"diffusion: expected a GaussianDiffusion, got {type(diffusion).__name__}")
        if not np.array_equal(diffusion.timestep_map, np.arange(diffusion.num_timesteps)):
            raise ValueError("diffusion: expected the chain the model was trained on, got a respaced one "
                             f"({diffusion.num_timesteps} kept steps); the SDE is built from all T steps")
        self.diffusion = diffusion
        self.T = diffusion.num_timesteps
        self.t_min = 1.0 / self.T if t_min is None else float(t_min)
        self.t_max = float(t_max)
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ValueError(f"t_min, t_max: expected 0 < t_min < t_max <= 1, got {self.t_min!r}, {self.t_max!r}")
        self.knots = np.arange(self.T + 1) / self.T                                   # t_0 = 0, ..., t_T = 1
        self.log_ab_knots = np.append(0.0, np.log(diffusion.alphas_cumprod))          # log ab(t_k), [T + 1]
        secant = np.diff(self.log_ab_knots) * self.T                                  # = -T log(1 - beta_k) < 0
        inner = 2.0 / (1.0 / secant[:-1] + 1.0 / secant[1:])          # Fritsch-Carlson: harmonic mean of neighbours
        self.slopes = np.concatenate([secant[:1], inner, secant[-1:]])                # d log ab / dt at the knots

    def _piece(self, t):
        """The step k holding t, and s = (t - t_k) T in [0, 1]."""
        u = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * self.T
        k = np.clip(np.floor(u).astype(np.int64), 0, self.T - 1)
        return k, u - k

    def log_alpha_bar(self, t):
        """log ab(t) = -int_0^t beta(s) ds: the cubic Hermite piece between the knots t_k = k / T
        with the PCHIP slopes, exact at the knots."""
        k, s = self._piece(t)
        y0, y1, d0, d1 = self.log_ab_knots[k], self.log_ab_knots[k + 1], self.slopes[k] / self.T, self.slopes[k + 1] / self.T
        return ((2 * s ** 3 - 3 * s ** 2 + 1) * y0 + (s ** 3 - 2 * s ** 2 + s) * d0
                + (-2 * s ** 3 + 3 * s ** 2) * y1 + (s ** 3 - s ** 2) * d1)

    def alpha_bar(self, t):
        """ab(t), the signal fraction of x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps (Song et al. eq. 33)."""
        return np.exp(self.log_alpha_bar(t))

    def sigma(self, t):
        """sqrt(1 - ab(t)), the std of the noise in x_t (computed as sqrt(-expm1(log ab)) for small t)."""
        return np.sqrt(-np.expm1(self.log_alpha_bar(t)))

    def beta(self, t):
        """beta(t) = -d log ab / dt, the derivative of the Hermite piece: continuous, > 0."""
        k, s = self._piece(t)
        y0, y1, d0, d1 = self.log_ab_knots[k], self.log_ab_knots[k + 1], self.slopes[k] / self.T, self.slopes[k + 1] / self.T
        return -self.T * ((6 * s ** 2 - 6 * s) * (y0 - y1) + (3 * s ** 2 - 4 * s + 1) * d0 + (3 * s ** 2 - 2 * s) * d1)

    def drift(self, x, t):
        """f(x, t) = -1/2 beta(t) x, the forward SDE's drift (eq. 11)."""
        return -0.5 * self.beta(t) * x

    def g(self, t):
        """g(t) = sqrt(beta(t)), the forward SDE's diffusion coefficient (eq. 11)."""
        return np.sqrt(self.beta(t))

    def model_time(self, t):
        """The network's real-valued timestep at time t: T t - 1 (the integer k - 1 at t_k = k / T)."""
        return np.asarray(t, dtype=np.float64) * self.T - 1.0

    def prior_log_prob(self, z):
        """log N(z; 0, I) per example, in nats: z [B, ...] -> [B] (the density at t = 1)."""
        z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
        return -0.5 * (z.shape[1] * np.log(2 * np.pi) + np.sum(z ** 2, axis=1))


def _model_between_steps(sde: VPSDE, model, x, t, kwargs):
    """The network's output at the real step s = model_time(t): trained only at integer steps, it
    is interpolated linearly between them, (1 - w) out(x, k) + w out(x, k + 1) with k = floor(s),
    w = s - k, in one call on a doubled batch (one plain call when s is a trained step). Below
    the first step and past the last, the nearest trained step is used."""
    B = x.shape[0]
    s = float(np.clip(sde.model_time(t), 0.0, sde.T - 1))
    k = int(np.floor(s))
    w = s - k
    if w < 1e-9 or k + 1 > sde.T - 1:
        return model(x, np.full(B, k if w < 0.5 else k + 1, dtype=np.int64), **kwargs)
    both = {name: np.concatenate([v, v]) if isinstance(v, np.ndarray) and len(v) == B else v
            for name, v in kwargs.items()}
    out = model(concat([x, x]) if isinstance(x, Tensor) else np.concatenate([x, x]),
                np.repeat(np.array([k, k + 1], dtype=np.int64), B), **both)
    return out[:B] * (1.0 - w) + out[B:] * w


def score_fn(sde: VPSDE, model, model_kwargs=None):
    """score(x, t) = grad_x log p_t(x) from a trained network, at any real time t.

        eps-model:  score = -eps_theta(x, t) / sigma(t)                          (Song et al. sec. 3.3)
        x0-model:   eps = (x - sqrt(ab) x0_theta) / sigma,  then the same
        v-model:    eps = sqrt(ab) v_theta + sigma x                        (Salimans & Ho 2022)

    A learned-variance model's second head is dropped: the ODE needs only the mean. x: [B, *D]
    ndarray or Tensor (the divergence differentiates through it); t: a float. The model is
    called as model(x, t_int [B], **model_kwargs) at the trained steps around model_time(t). Returns [B, *D] like x.

    >>> sde = td.sde.VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(100)))
    >>> score = td.sde.score_fn(sde, lambda x, t: np.ones_like(x))      # eps = 1 everywhere
    >>> bool(np.allclose(score(np.zeros((1, 2)), 1.0), -1 / sde.sigma(1.0)))
    True
    """
    d, kwargs = sde.diffusion, dict(model_kwargs or {})
    if d.model_mean_type == "mean":
        raise ValueError("score_fn: a model of the reverse mean (model_mean_type='mean') has no score at a "
                         "real time t; use an eps-, x0- or v-model")

    def score(x, t):
        B, C = x.shape[0], x.shape[1]
        pred = _model_between_steps(sde, model, x, t, kwargs)
        pred = pred[:, :C] if d.learned_variance else pred                    # the mean head only
        a, s = float(np.sqrt(sde.alpha_bar(t))), float(sde.sigma(t))
        if d.model_mean_type == "eps":
            eps = pred
        elif d.model_mean_type == "x0":
            eps = (x - a * pred) * (1.0 / s)
        else:                                                                  # "v"
            eps = a * pred + s * x
        return eps * (-1.0 / s)
    return score


def ode_drift(sde: VPSDE, score, x, t):
    """dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t) = -1/2 beta(t) (x + score(x, t)), Song et al. eq. 13.

    >>> sde = td.sde.VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(1000)))
    >>> float(np.abs(td.sde.ode_drift(sde, lambda x, t: -x, np.ones((1, 2)), 0.5)).max())   # N(0, I) data: no motion
    0.0
    """
    return (x + score(x, t)) * (-0.5 * float(sde.beta(t)))


def time_grid(sde: VPSDE, steps, ascending=False):
    """``steps`` steps between t_max and t_min, on the trained steps t_k = k / T (rounded, so a
    fixed-step solver calls the network only where it was trained, one plain call each) when
    t_min is one of them, else equal steps. Descending (sampling) unless ascending (likelihood).

    >>> sde = td.sde.VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(1000)))
    >>> (td.sde.time_grid(sde, 3) * 1000).tolist()                     # the trained steps 1000, 667, 334, 1
    [1000.0, 667.0, 334.0, 1.0]
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1 (solver steps between t_min and t_max), got {steps!r}")
    lo, hi = sde.t_min * sde.T, sde.t_max * sde.T
    if abs(lo - round(lo)) < 1e-9 and abs(hi - round(hi)) < 1e-9:
        grid = np.unique(np.round(np.linspace(lo, hi, int(steps) + 1))) / sde.T
    else:
        grid = np.linspace(sde.t_min, sde.t_max, int(steps) + 1)
    return grid if ascending else grid[::-1]


def _denoise(sde, score, x, t):
    """Tweedie's step at the last time: E[x_0 | x_t] = (x + (1 - ab) score) / sqrt(ab) (what DDIM's
    last step returns)."""
    ab = float(sde.alpha_bar(t))
    return (x + (1.0 - ab) * unwrap(score(x, t))) / np.sqrt(ab)


def sde_sample_loop(diffusion, model, shape, rng, *, steps=None, model_kwargs=None, guidance=None,
                    progress=None, return_trajectory=False, noise=None, denoise=True, dtype=np.float32):
    """The reverse SDE (Song et al. eq. 6) by Euler-Maruyama, from t = 1 down to t_min:

        x <- x - [f(x, t) - g(t)^2 score(x, t)] dt + g(t) sqrt(dt) z,   z ~ N(0, I)

    on ``steps`` equal steps in t (default T); no noise on the last step, then (denoise)
    Tweedie's E[x_0 | x_{t_min}]. With one step per trained step this is DDPM's ancestral
    sampler up to O(1/T). Same call shape as samplers.ddpm_sample_loop. Returns x_0 [*shape],
    or (x_0, trajectory [steps + 1, *shape]).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> td.sde.sde_sample_loop(d, lambda x, t: np.zeros_like(x), (3, 2), np.random.default_rng(0), steps=10).shape
    (3, 2)
    """
    sde = VPSDE(diffusion)
    score = score_fn(sde, apply_guidance(model, guidance), model_kwargs)
    times = time_grid(sde, sde.T if steps is None else steps)
    x = standard_normal_noise(shape, dtype, noise, rng)
    trajectory, n = [x], len(times) - 1
    with no_grad():
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            dt = t - t_next                                                   # > 0: we go down in t
            reverse_drift = sde.drift(x, t) - sde.beta(t) * unwrap(score(x, t))
            z = rng.standard_normal(x.shape).astype(dtype) if i < n - 1 else 0.0
            x = (x - reverse_drift * dt + sde.g(t) * np.sqrt(dt) * z).astype(dtype, copy=False)
            if return_trajectory:
                trajectory.append(x)
            if progress is not None:
                progress(i + 1, n)
        if denoise:
            x = _denoise(sde, score, x, times[-1]).astype(dtype, copy=False)
    check_sample(x, "sde_sample_loop")
    return (x, np.stack(trajectory)) if return_trajectory else x


def ode_sample_loop(diffusion, model, shape, rng, *, steps=None, method="rk45", rtol=1e-5, atol=1e-5,
                    model_kwargs=None, guidance=None, progress=None, return_trajectory=False, noise=None,
                    denoise=True, return_nfe=False, dtype=np.float32):
    """Sample by solving the probability-flow ODE (Song et al. eq. 13) from x(1) ~ N(0, I) to t_min.

    method: "euler", "heun" or "rk4" on ``steps`` equal steps in t (default T), or "rk45"
    (adaptive Dormand-Prince with tolerances rtol, atol; steps is ignored). Then, if denoise,
    Tweedie's E[x_0 | x_{t_min}]. The map is deterministic: DDIM (eta = 0) is its Euler
    discretisation in the variable x / sqrt(ab) (Song et al. 2021, sec. 4.3), so the two agree
    as the steps shrink (tests/test_sde.py). return_nfe: also return the number of model calls.
    Returns x_0 [*shape] (then the trajectory at the solver's steps, then nfe, as asked).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> x, nfe = td.sde.ode_sample_loop(d, lambda x, t: np.zeros_like(x), (3, 2), np.random.default_rng(0),
    ...                                 method="heun", steps=10, return_nfe=True)
    >>> x.shape, nfe                                                 # Heun: 2 calls a step, then the denoising call
    ((3, 2), 21)
    """
    sde = VPSDE(diffusion)
    score = score_fn(sde, apply_guidance(model, guidance), model_kwargs)
    x = standard_normal_noise(shape, dtype, noise, rng)
    shape = x.shape

    def f(t, y):                                                        # the ODE on flat float64 states
        with no_grad():
            return unwrap(ode_drift(sde, score, y.reshape(shape).astype(dtype), t)).reshape(len(y), -1)

    y0 = x.reshape(len(x), -1).astype(np.float64)
    if method == "rk45":
        sol = ode.rk45(f, y0, sde.t_max, sde.t_min, rtol=rtol, atol=atol, progress=progress)
    else:
        sol = ode.solve_fixed(f, y0, time_grid(sde, sde.T if steps is None else steps), method=method,
                              progress=progress)
    x, nfe = sol["y"].reshape(shape).astype(dtype), sol["nfe"]
    if denoise:
        with no_grad():
            x = _denoise(sde, score, x, sde.t_min).astype(dtype, copy=False)
        nfe += 1
    check_sample(x, "ode_sample_loop")
    result = (x,)
    if return_trajectory:
        result += (np.stack([s.reshape(shape) for s in sol["states"]]).astype(dtype),)
    if return_nfe:
        result += (nfe,)
    return result if len(result) > 1 else x


__all__ = ["VPSDE", "score_fn", "ode_drift", "time_grid", "sde_sample_loop", "ode_sample_loop"]
