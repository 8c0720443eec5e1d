"""The reverse process p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) in its general form.

What the model's output means is set by the diffusion (tinydiff/diffusion.py):
model_mean_type (eps, x0, v or the mean itself) and model_var_type (two fixed variances, a
learned log-variance, or Nichol & Dhariwal's learned interpolation). ``p_mean_variance_from_output``
turns any of these into the mean and variance of p; ``p_sample`` takes one ancestral step
with them. For the common case -- an eps-model with a fixed variance -- the step is DDPM
eq. 11 written out in ``samplers.ddpm_step``; ``p_sample`` is the general path beside it,
and tests/test_samplers.py ties the two together.

Like tinydiff/forward.py these are plain functions of the diffusion ``d``, with no argument
checks: the public methods of GaussianDiffusion check at the door. A model is called through
``d.run_model_checked``, the one place a sampling step checks for NaN or inf.
"""
from __future__ import annotations

import numpy as np

from .engine import unwrap
from .forward import predict_eps_from_x0, predict_x0_from_eps, predict_x0_from_mean, predict_x0_from_v, \
    q_posterior_mean_variance
from .gaussian import standard_normal_noise
from .schedules import extract


def p_mean_variance(d, model, x_t, t, clip_denoised=False, denoised_fn=None, model_kwargs=None):
    """Run the model (``d.run_model_checked``, which refuses NaN or inf) and return
    p(x_{t-1} | x_t) = N(mean, variance) as p_mean_variance_from_output does.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)               # a model that predicts eps = 0
    >>> sorted(td.reverse.p_mean_variance(d, zero_eps, np.ones((2, 2)), np.array([10, 999])))
    ['log_variance', 'mean', 'pred_eps', 'pred_x0', 'variance']
    """
    out = d.run_model_checked(model, x_t, t, model_kwargs)
    return p_mean_variance_from_output(d, out, x_t, t, clip_denoised, denoised_fn)


def p_mean_variance_from_output(d, model_output, x_t, t, clip_denoised=False, denoised_fn=None):
    """p(x_{t-1} | x_t) from a model output [B, C_out, *rest] (channels on axis 1).

    C_out = C, the channels of x_t: [B, C, *rest], for fixed variances, and 2C for
    learned ones (first C: the mean-type prediction; last C: log-variance or v_raw).
    The variance:
        fixed_small    sigma_t^2 = beta-tilde_t                     (DDPM sec. 3.2)
        fixed_large    sigma_t^2 = beta_t                           (DDPM sec. 3.2)
        learned        log sigma_t^2 = the model's output           (Sohl-Dickstein et al. 2015)
        learned_range  log sigma_t^2 = v log beta_t + (1 - v) log beta-tilde_t, v = (v_raw + 1)/2
                                                                    (Nichol & Dhariwal eq. 15)
    The mean: pred_x0 (from eps, x0 or v) goes through denoised_fn and, if clip_denoised, is
    clipped to [-1, 1] (images) before the mean mu-tilde(pred_x0, x_t) is formed (DDPM eq. 7
    with x_0 replaced by its estimate; for eps this equals DDPM eq. 11). For
    model_mean_type="mean" the mean is the model's own and only the reported pred_x0 is processed.
    Returns a dict of [B, *D] values: mean, variance, log_variance, pred_x0 and pred_eps,
    where x_t = sqrt(alpha_bar_t) pred_x0 + sqrt(1 - alpha_bar_t) pred_eps (the model's eps
    itself when eps is predicted and x_0 is not processed). Tensors if model_output is one.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000), model_var_type="learned_range", loss_type="hybrid")
    >>> out = td.reverse.p_mean_variance_from_output(d, np.array([[0.0, 0.0, 1.0, 1.0]]), np.zeros((1, 2)), np.array([500]))
    >>> bool(np.isclose(out["variance"][0, 0], d.betas[500]))                            # v = 1: sigma^2 = beta_t
    True
    """
    if x_t.ndim < 2:
        raise ValueError(f"x_t: expected [B, C, *rest] with channels on axis 1, got shape {tuple(x_t.shape)}")
    C = x_t.shape[1]
    learned = d.learned_variance
    expected = (x_t.shape[0], 2 * C if learned else C) + tuple(x_t.shape[2:])
    if tuple(model_output.shape) != expected:
        raise ValueError(f"model output: expected shape {expected} for x_t of shape {tuple(x_t.shape)} "
                         f"and model_var_type={d.model_var_type!r}, got {tuple(model_output.shape)}")
    prediction = model_output[:, :C] if learned else model_output

    if d.model_var_type == "learned":               # the model outputs log sigma^2 itself
        log_variance = model_output[:, C:]
        variance = np.exp(log_variance)
    elif d.model_var_type == "learned_range":       # Nichol & Dhariwal eq. 15
        # v = (v_raw + 1)/2: v_raw = -1 gives beta-tilde_t, +1 gives beta_t; not clamped, as in the paper.
        frac = (model_output[:, C:] + 1.0) / 2.0
        log_variance = (frac * d.coef(d.log_betas, t, x_t)
                        + (1.0 - frac) * d.coef(d.posterior_log_variance_clipped, t, x_t))
        variance = np.exp(log_variance)
    else:                                           # fixed_small or fixed_large: a table lookup
        variance_table, log_variance_table = d.fixed_variances[d.model_var_type]
        variance = d.full(variance_table, t, x_t)
        log_variance = d.full(log_variance_table, t, x_t)

    processed = clip_denoised or denoised_fn is not None

    def process(x0):
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        return np.clip(x0, -1.0, 1.0) if clip_denoised else x0

    if d.model_mean_type == "mean":                 # mean given; x_0 only reported
        mean = prediction
        pred_x0 = process(predict_x0_from_mean(d, x_t, t, prediction))
    else:
        if d.model_mean_type == "eps":
            pred_x0 = predict_x0_from_eps(d, x_t, t, prediction)
        elif d.model_mean_type == "x0":
            pred_x0 = prediction
        else:                                       # "v"
            pred_x0 = predict_x0_from_v(d, x_t, t, prediction)
        pred_x0 = process(pred_x0)
        mean = q_posterior_mean_variance(d, pred_x0, x_t, t)[0]
    if d.model_mean_type == "eps" and not processed:
        pred_eps = prediction
    else:
        pred_eps = predict_eps_from_x0(d, x_t, t, pred_x0)
    return {"mean": mean, "variance": variance, "log_variance": log_variance,
            "pred_x0": pred_x0, "pred_eps": pred_eps}


def p_sample(d, model, x_t, t, rng=None, noise=None, clip_denoised=False, denoised_fn=None, model_kwargs=None):
    """One ancestral step through p's mean and variance, for any model type:

        x_{t-1} = mean + sigma_t z,   z ~ N(0, I),   and z = 0 at t = 0

    (DDPM Algorithm 2, lines 3-4; its t = 1 is our t = 0), with (mean, log sigma_t^2) from
    p_mean_variance. For an eps-model with a fixed variance and nothing done to x_0 this is
    the same step as samplers.ddpm_step, DDPM eq. 11 written out. z is drawn from rng after
    the model call, even at t = 0 (so every step uses the generator alike).
    x_t: ndarray [B, *D]; t: int [B]. Returns {"sample": x_{t-1}, "pred_x0": ...} as ndarrays.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> out = td.reverse.p_sample(d, zero_eps, np.ones((4, 2), np.float32), np.full(4, 999), rng=np.random.default_rng(0))
    >>> out["sample"].shape, out["sample"].dtype
    ((4, 2), dtype('float32'))
    """
    out = p_mean_variance(d, model, x_t, t, clip_denoised, denoised_fn, model_kwargs)
    mean, log_variance, pred_x0 = (unwrap(out[k]) for k in ("mean", "log_variance", "pred_x0"))
    noise = standard_normal_noise(x_t.shape, x_t.dtype, noise, rng)
    last_step = extract(np.arange(d.num_timesteps), t, x_t.shape) == 0   # [B, 1, ..., 1]
    sample = mean + np.where(last_step, 0.0, np.exp(0.5 * log_variance) * noise)
    return {"sample": sample.astype(x_t.dtype, copy=False), "pred_x0": pred_x0}
