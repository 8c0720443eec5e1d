"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a diffusion's noise levels.

    langevin_noise_level     sigma_t = sqrt((1 - ab_t) / ab_t), the noise level of x_t / sqrt(ab_t)
    check_langevin_step_lr   refuses a step size at which Langevin steps diverge
    langevin_step            one update y <- y + (alpha / 2) s(y) + sqrt(alpha) z, the score read off eps
    langevin_sample_loop     the annealed loop, noisiest level first, then one Tweedie denoising step

Same call shape as samplers.ddpm_sample_loop (see tinydiff/samplers.py); the model is called
through the diffusion's ``run_model_checked``, which refuses NaN or inf: the one check of a step.
"""
from __future__ import annotations

import math

import numpy as np

from .diffusion import check_sample
from .engine import no_grad, unwrap
from .gaussian import standard_normal_noise
from .guidance import apply_guidance
from .respacing import respace
from .reverse import p_mean_variance


def langevin_noise_level(alpha_bar):
    """sigma_t = sqrt((1 - ab_t) / ab_t): x_t / sqrt(ab_t) = x_0 + sigma_t eps.

    Dividing DDPM's x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps by sqrt(ab) gives the noise-
    conditional setting of Song & Ermon (2019), y = x_0 + sigma z, with sigma_t from ~0.01
    (t = 0) to ~160 (t = T-1) for DDPM's linear schedule.

    >>> float(td.langevin.langevin_noise_level(0.5))                  # x_t / sqrt(ab) = x_0 + sigma eps
    1.0
    """
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def check_langevin_step_lr(alphas_cumprod, step_lr) -> None:
    """A ValueError unless step_lr / sigma_min^2 < 4, sigma_min the chain's smallest noise level.

    Every level's step is alpha_t = step_lr sigma_t^2 / sigma_min^2; at the noisiest levels the
    data's own spread is negligible beside sigma_t, the target is ~N(0, sigma_t^2), and Langevin
    on it multiplies y by 1 - alpha_t / (2 sigma_t^2) each step: beyond 4 every step amplifies.
    (A schedule whose first step adds very little noise, e.g. logsnr with logsnr_max = 14,
    needs a smaller step_lr than DDPM's linear one.)

    >>> ab = np.cumprod(1 - td.linear_beta_schedule(1000))
    >>> td.langevin.check_langevin_step_lr(ab, 2e-5)                  # 2e-5 / sigma_min^2 = 0.2 < 4: stable
    """
    sigma_min = float(langevin_noise_level(np.asarray(alphas_cumprod, dtype=np.float64)[0]))
    if not step_lr / sigma_min ** 2 < 4:
        raise ValueError(f"step_lr: {step_lr:g} / sigma_min^2 = {step_lr / sigma_min ** 2:.3g} for this chain's "
                         f"smallest noise level sigma_min = {sigma_min:.3g}; Langevin steps diverge at 4 or "
                         f"more, so use step_lr below {4 * sigma_min ** 2:.3g}")


def langevin_step(diffusion, model, y, t, step_size, rng=None, noise=None, model_kwargs=None):
    """One Langevin update at noise level sigma_t, in the scaled variable y = x_t / sqrt(ab_t):

        y <- y + (alpha / 2) s(y) + sqrt(alpha) z,   s(y) = grad_y log q(y) = -eps_hat(x_t, t) / sigma_t

    (Song & Ermon 2019, Algorithm 1 line 6). The score: grad_{x_t} log q(x_t) = -eps/sqrt(1 - ab)
    (score_from_eps), and x_t = sqrt(ab) y gives grad_y = sqrt(ab) grad_{x_t} = -eps / sigma_t.
    y: [B, *D]; t: int [B]; step_size alpha: scalar or [B, 1, ...]. Returns (y_new, s(y)).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)                  # score 0: only the noise moves y
    >>> y, score = td.langevin.langevin_step(d, zero_eps, np.zeros((1, 2)), np.array([50]), 0.01, noise=np.ones((1, 2)))
    >>> y.round(6).tolist(), score.tolist()                           # sqrt(alpha) z with alpha = 0.01
    ([[0.1, 0.1]], [[-0.0, -0.0]])
    """
    x_t = diffusion.coef(diffusion.sqrt_alphas_cumprod, t, y) * y
    with no_grad():
        eps = unwrap(p_mean_variance(diffusion, model, x_t, t, model_kwargs=model_kwargs)["pred_eps"])
    score = -eps / diffusion.coef(langevin_noise_level(diffusion.alphas_cumprod), t, y)
    noise = standard_normal_noise(y.shape, y.dtype, noise, rng)
    alpha = np.asarray(step_size, dtype=y.dtype)
    y_new = y + 0.5 * alpha * score + np.sqrt(alpha) * noise
    return y_new.astype(y.dtype, copy=False), score


def langevin_sample_loop(diffusion, model, shape, rng, *, steps=None, n_steps_each=10, step_lr=2e-5,
                         denoise=True, model_kwargs=None, guidance=None, progress=None,
                         return_trajectory=False, noise=None, dtype=np.float32):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on the diffusion's noise levels.

    Levels: the chain's steps (steps=K keeps K of them, as for the other samplers), from the
    noisiest down, with sigma_t = langevin_noise_level(ab_t) and step size

        alpha_t = step_lr * sigma_t^2 / sigma_min^2          (Algorithm 1 line 3)

    where sigma_min is the smallest level, so alpha_t / sigma_t^2 is the same at every
    level. We work in y = x_t / sqrt(ab_t) because there all levels share the data's scale and
    y carries over from one level to the next unchanged (in x_t one would rescale by
    sqrt(ab_t' / ab_t) between levels; a Langevin step of size a in x_t is one of size
    a / ab_t in y, so the two are the same dynamics). Start: x ~ N(0, I) at the noisiest
    level, i.e. y = x / sqrt(ab). n_steps_each updates per level (`langevin_step`); then,
    if denoise, one Tweedie step y <- y + sigma_min^2 s(y) = E[x_0 | y] (the "denoising" of
    Jolicoeur-Martineau et al. 2021) removes the last level's noise sigma_min.

    Tuning: step_lr / sigma_min^2 = alpha_t / sigma_t^2 must stay well below 4 (Langevin on
    N(0, sigma^2) diverges beyond), and with too few steps the samples come out too wide:
    at small sigma the steps are too short to shrink what larger levels left. For N(mu, 0.5^2)
    data, exact scores, all 1000 DDPM levels: std +4.1% with n_steps_each=1, step_lr=1e-4,
    +0.9% with 10 (tests/test_samplers.py computes these laws exactly).
    Returns x_0 [*shape] in `dtype`, or (x_0, trajectory [L + 1, *shape] of y after each level).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> td.langevin_sample_loop(d, zero_eps, (3, 2), np.random.default_rng(0), steps=5, n_steps_each=2).shape
    (3, 2)
    """
    if not (isinstance(n_steps_each, (int, np.integer)) and n_steps_each >= 1):
        raise ValueError(f"n_steps_each: expected an int >= 1, got {n_steps_each!r}")
    if not step_lr > 0:
        raise ValueError(f"step_lr: expected a positive step size, got {step_lr!r}")
    chain = diffusion if steps is None else respace(diffusion, steps)   # K of the T steps (respacing.py)
    model = apply_guidance(model, guidance)            # a scale w: ClassifierFreeGuidance, eq. 6 (guidance.py)
    sigmas = langevin_noise_level(chain.alphas_cumprod)                 # [L], increasing
    check_langevin_step_lr(chain.alphas_cumprod, step_lr)
    L = chain.num_timesteps
    x = standard_normal_noise(shape, dtype, noise, rng)
    y = x / np.asarray(math.sqrt(chain.alphas_cumprod[-1]), dtype=x.dtype)
    trajectory, n, done = [y], L * n_steps_each, 0
    for level in reversed(range(L)):
        t = np.full(y.shape[0], level, dtype=np.int64)
        alpha = step_lr * (sigmas[level] / sigmas[0]) ** 2
        for _ in range(n_steps_each):
            y, _ = langevin_step(chain, model, y, t, alpha, rng=rng, model_kwargs=model_kwargs)
            done += 1
            if progress is not None:
                progress(done, n)
        if return_trajectory:
            trajectory.append(y)
    if denoise:
        _, score = langevin_step(chain, model, y, t, 0.0, noise=np.zeros_like(y), model_kwargs=model_kwargs)
        y = (y + np.asarray(sigmas[0] ** 2, dtype=y.dtype) * score).astype(y.dtype, copy=False)
    check_sample(y, "langevin_sample_loop")
    return (y, np.stack(trajectory)) if return_trajectory else y

