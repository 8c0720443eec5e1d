"""DDIM (Song, Meng & Ermon 2021): a non-Markovian chain with DDPM's marginals q(x_t | x_0).

    ddim_sigma          sigma(eta), eq. 16: eta = 0 a deterministic map, eta = 1 DDPM's beta-tilde
    ddim_step           one step x_t -> x_{t-1}, eq. 12
    ddim_reverse_step   the same update run upward, data to noise (DDIM inversion)
    ddim_sample_loop    x ~ N(0, I), then ddim_step down to the data, on any respaced chain

Same call shape as samplers.ddpm_sample_loop (see tinydiff/samplers.py); the model is called
through the diffusion's ``run_model_checked``, which refuses NaN or inf: the one check of a step.
"""
from __future__ import annotations

import numpy as np

from .diffusion import check_sample
from .engine import no_grad, unwrap
from .gaussian import standard_normal_noise
from .guidance import apply_guidance
from .respacing import respace
from .reverse import p_mean_variance


def ddim_sigma(alpha_bar, alpha_bar_prev, eta):
    """sigma(eta) = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev), Song et al. 2021 eq. 16.

    eta = 1 gives the DDPM posterior variance beta~ of the (possibly strided) step; eta = 0
    a deterministic step. Shapes broadcast.

    >>> float(td.ddim.ddim_sigma(0.5, 0.8, 0.0)), round(float(td.ddim.ddim_sigma(0.5, 0.8, 1.0)), 6)
    (0.0, 0.387298)
    """
    return eta * np.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))


def ddim_step(diffusion, model, x_t, t, eta=0.0, rng=None, noise=None, clip_denoised=False,
              denoised_fn=None, model_kwargs=None):
    """One DDIM step from x_t to x_{t-1} of the diffusion's chain (to the data at t = 0),
    Song et al. eq. 12:

        x_{t-1} = sqrt(ab_{t-1}) x0_hat + sqrt(1 - ab_{t-1} - sigma^2) eps_hat + sigma z

    with x0_hat, eps_hat the model's predictions (p_mean_variance's pred_x0, pred_eps, so any
    model_mean_type works), sigma = ddim_sigma(ab_t, ab_{t-1}, eta), ab_{-1} = 1. On a respaced
    chain t-1 is the previous kept step. x_t: [B, *D]; t: int [B]. A noise array is drawn
    even when sigma = 0, so eta = 1 consumes the generator exactly like p_sample.
    Returns {"sample", "pred_x0"} ndarrays.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> out = td.ddim.ddim_step(d, zero_eps, np.ones((1, 2)), np.array([99]), eta=0.0, rng=np.random.default_rng(0))
    >>> bool(np.allclose(out["sample"], np.sqrt(d.alphas_cumprod[98] / d.alphas_cumprod[99])))   # eps = 0: a rescale
    True
    """
    with no_grad():
        out = p_mean_variance(diffusion, model, x_t, t, clip_denoised, denoised_fn, model_kwargs)
    pred_x0, pred_eps = unwrap(out["pred_x0"]), unwrap(out["pred_eps"])
    noise = standard_normal_noise(x_t.shape, x_t.dtype, noise, rng)
    ab = diffusion.coef(diffusion.alphas_cumprod, t, x_t)
    ab_prev = diffusion.coef(diffusion.alphas_cumprod_prev, t, x_t)
    sigma = ddim_sigma(ab, ab_prev, eta)
    direction = np.sqrt(np.maximum(1.0 - ab_prev - sigma ** 2, 0.0))   # 0 at the data; rounding-safe
    sample = np.sqrt(ab_prev) * pred_x0 + direction * pred_eps + sigma * noise
    return {"sample": sample.astype(x_t.dtype, copy=False), "pred_x0": pred_x0}


def ddim_reverse_step(diffusion, model, x_t, t, clip_denoised=False, denoised_fn=None, model_kwargs=None):
    """One DDIM step run backwards, from x_t to x_{t+1} (eta = 0; DDIM inversion):

        x_{t+1} = sqrt(ab_{t+1}) x0_hat(x_t, t) + sqrt(1 - ab_{t+1}) eps_hat(x_t, t)

    Song et al. 2021 eq. 13 read as an ODE and integrated upward (their section 4.3: DDIM
    "encodes" data into noise); Dhariwal & Nichol 2021, Appendix F (improved-diffusion's
    ddim_reverse_sample); the inversion step of Mokady et al. 2023. It is ddim_step's update
    with the roles of t and t+1 swapped, except that eps is evaluated at (x_t, t), the point
    we have, not at (x_{t+1}, t+1), the one we are solving for: the reason inversion followed
    by decoding reconstructs x_0 only up to a discretisation error that shrinks with the step
    (tests/test_editing.py computes it exactly for Gaussian data). ab_{t+1} is
    ``alphas_cumprod_next`` (0 past the last step). x_t: [B, *D]; t: int [B].
    Returns {"sample": x_{t+1}, "pred_x0"} ndarrays.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> out = td.ddim.ddim_reverse_step(d, zero_eps, np.ones((1, 2)), np.array([10]))
    >>> bool(np.allclose(out["sample"], np.sqrt(d.alphas_cumprod[11] / d.alphas_cumprod[10])))   # undoes ddim_step
    True
    """
    with no_grad():
        out = p_mean_variance(diffusion, model, x_t, t, clip_denoised, denoised_fn, model_kwargs)
    pred_x0, pred_eps = unwrap(out["pred_x0"]), unwrap(out["pred_eps"])
    ab_next = diffusion.coef(diffusion.alphas_cumprod_next, t, x_t)
    sample = np.sqrt(ab_next) * pred_x0 + np.sqrt(1.0 - ab_next) * pred_eps
    return {"sample": sample.astype(x_t.dtype, copy=False), "pred_x0": pred_x0}


def ddim_sample_loop(diffusion, model, shape, rng, *, steps=None, eta=0.0, model_kwargs=None, guidance=None,
                     progress=None, return_trajectory=False, noise=None, clip_denoised=False,
                     denoised_fn=None, after_step=None, dtype=np.float32):
    """DDIM sampling: x ~ N(0, I) at the last kept step, then ddim_step down to the data.

    steps: the kept steps (anything space_timesteps accepts, e.g. "ddim50" or 50; None: all
    T). DDIM needs only alpha_bar at those steps, which respacing keeps exactly. eta in
    [0, 1]. With eta = 0 the map is deterministic, so the mismatch between N(0, I) and
    q(x_T) = N(sqrt(ab_T) mu, ...) is carried to the output (a mean bias ~ s sqrt(ab_T) |mu|
    for N(mu, s^2) data); noise (eta > 0) washes it out.
    Returns x_0 [*shape] in `dtype`, or (x_0, trajectory [K + 1, *shape]) if return_trajectory.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> x0 = td.ddim_sample_loop(d, zero_eps, (4, 2), np.random.default_rng(0), steps=10)   # 10 network calls
    >>> x0.shape
    (4, 2)
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta: expected a value in [0, 1], got {eta!r}")
    chain = diffusion if steps is None else respace(diffusion, steps)   # K of the T steps (respacing.py)
    model = apply_guidance(model, guidance)            # a scale w: ClassifierFreeGuidance, eq. 6 (guidance.py)
    x = standard_normal_noise(shape, dtype, noise, rng)
    trajectory, K = [x], chain.num_timesteps
    for i in reversed(range(K)):
        t = np.full(x.shape[0], i, dtype=np.int64)
        x = ddim_step(chain, model, x, t, eta=eta, rng=rng, clip_denoised=clip_denoised,
                      denoised_fn=denoised_fn, model_kwargs=model_kwargs)["sample"]
        if after_step is not None:
            x = after_step(x, t)
        if return_trajectory:
            trajectory.append(x)
        if progress is not None:
            progress(K - i, K)
    check_sample(x, "ddim_sample_loop")
    return (x, np.stack(trajectory)) if return_trajectory else x

