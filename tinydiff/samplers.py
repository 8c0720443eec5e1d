"""Samplers: ancestral DDPM here, DDIM (ddim.py) and annealed Langevin (langevin.py), one call shape.

    x0 = ddpm_sample_loop(diffusion, model, shape, rng, steps=None, model_kwargs=None,
                          guidance=None, progress=None, return_trajectory=False, ...)

and the same for ddim_sample_loop and langevin_sample_loop (each adds its own options:
eta; n_steps_each, step_lr); sample(..., sampler="ddim") picks one by name.

    steps       run on K of the T trained steps (an int K, "ddimK" or a list: see
                respacing.space_timesteps): respace() builds the short chain, with betas re-derived
                so alpha_bar is unchanged at the kept steps (Nichol & Dhariwal 2021, section 4);
                the chain maps its steps back to the model's own timesteps itself.
    model_kwargs  passed to every model call, e.g. {"y": labels} for a class-conditional model.
    guidance    a classifier-free guidance scale w (Ho & Salimans 2022; a float, or one per
                label attribute), or a function model -> guided model (tinydiff/guidance.py:
                ClassifierFreeGuidance.__call__ writes their eq. 6).
    noise       the starting point x at the chain's last step (default: drawn from rng). A
                chain that ends at an intermediate step t0 (steps=[..., t0]) started from
                q_sample(x0, t0) is SDEdit (tinydiff.editing.sdedit).
    after_step  x = after_step(x, t) after each step from chain step t (DDPM, DDIM): the hook
                inpainting uses to put the known pixels back (tinydiff.editing.inpaint).

    ddpm_step              DDPM eq. 11, the step of an eps-model with a fixed variance, written out
    ddpm_sample_loop       DDPM Algorithm 2: x_T ~ N(0, I), then one step of p(x_{t-1} | x_t) at a
                           time down to x_0: ddpm_step, or for learned variances, other mean types
                           and clipping the general step reverse.p_sample.
    ddim_sample_loop       DDIM (Song, Meng & Ermon 2021, eq. 12 and 16): eta = 0 is a
                           deterministic map from noise to data, eta = 1 is DDPM (ddim.py).
    langevin_sample_loop   annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with
                           the score read off the eps-prediction (langevin.py).
    sde_sample_loop        the reverse SDE by Euler-Maruyama, and ode_sample_loop the probability-
                           flow ODE (Song et al. 2021, eq. 6 and 13; sde.py).

Timesteps are 0-based (tinydiff/schedules.py). Every loop runs over the chain, never over
the batch; noise comes from an explicit numpy.random.Generator; model calls run under
no_grad; `progress(i, n)` is called after step i of n. Arrays keep the dtype of x.
Checks: a model output holding NaN or inf stops the loop at that step, naming it (the one
scan a step makes, in GaussianDiffusion.run_model_checked), and the result is checked once at the end.
"""
from __future__ import annotations

import numpy as np

from .ddim import ddim_reverse_step, ddim_sample_loop, ddim_sigma, ddim_step  # noqa: F401  (samplers.X names)
from .diffusion import check_sample
from .engine import no_grad, unwrap
from .gaussian import standard_normal_noise
from .guidance import apply_guidance
from .langevin import check_langevin_step_lr, langevin_noise_level, langevin_sample_loop, langevin_step  # noqa: F401
from .respacing import respace, respaced_betas, space_timesteps  # noqa: F401
from .reverse import p_sample
from .schedules import extract
from .sde import ode_sample_loop, sde_sample_loop


def ddpm_step(diffusion, model, x_t, t, rng=None, noise=None, model_kwargs=None):
    """One ancestral step of an eps-model with a fixed variance, DDPM eq. 11 and Algorithm 2 line 4:

        x_{t-1} = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z

    with z ~ N(0, I), z = 0 at the last step (the paper's t = 1, our t = 0), and sigma_t^2 =
    beta_t ("fixed_large") or beta-tilde_t ("fixed_small"), DDPM sec. 3.2. It is the mean
    mu-tilde(x_0_hat, x_t) of reverse.p_mean_variance with x_0_hat from eps, rewritten (DDPM
    eq. 10 to 11); tests/test_samplers.py checks the two agree. z is drawn after the model
    call, even at t = 0, as reverse.p_sample draws it. x_t: [B, *D]; t: int [B]. Returns x_{t-1}.

    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(1000))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)                   # eps = 0: x / sqrt(alpha_t) + sigma_t z
    >>> x = td.samplers.ddpm_step(d, zero_eps, np.ones((1, 2)), np.array([0]), noise=np.ones((1, 2)))
    >>> bool(np.allclose(x, 1 / np.sqrt(1 - d.betas[0])))                # t = 0: no noise added
    True
    """
    d = diffusion
    if d.model_mean_type != "eps" or d.learned_variance:
        raise ValueError(f"ddpm_step: DDPM eq. 11 is the step of an eps-model with a fixed variance, got "
                         f"model_mean_type={d.model_mean_type!r}, model_var_type={d.model_var_type!r}; "
                         "use reverse.p_sample (GaussianDiffusion.p_sample)")
    eps = unwrap(d.run_model_checked(model, x_t, t, model_kwargs))          # eps_theta(x_t, t): [B, *D]
    if eps.shape != x_t.shape:
        raise ValueError(f"model output: expected shape {x_t.shape} (eps, like x_t), got {eps.shape}")
    z = standard_normal_noise(x_t.shape, x_t.dtype, noise, rng)       # z ~ N(0, I)
    sigma = np.sqrt(d.coef(d.fixed_variances[d.model_var_type][0], t, x_t))   # sqrt(beta_t) or sqrt(beta-tilde_t)
    mean = d.coef(d.sqrt_recip_alphas, t, x_t) * (x_t - d.coef(d.eps_coef, t, x_t) * eps)   # eq. 11
    last_step = extract(np.arange(d.num_timesteps), t, x_t.shape) == 0    # [B, 1, ..., 1]
    x_prev = mean + np.where(last_step, 0.0, sigma * z)
    return x_prev.astype(x_t.dtype, copy=False)


def ddpm_sample_loop(diffusion, model, shape, rng, *, steps=None, model_kwargs=None, guidance=None,
                     progress=None, return_trajectory=False, noise=None, clip_denoised=False,
                     denoised_fn=None, after_step=None, dtype=np.float32):
    """Ancestral sampling, DDPM Algorithm 2: x_T ~ N(0, I), then one step for t = T-1, ..., 0.

    The step is ddpm_step (DDPM eq. 11) for an eps-model with a fixed variance and nothing done
    to x_0_hat, else reverse.p_sample (learned variances, x0/v/mean models, clipping).
    shape: (B, *D); rng: numpy.random.Generator for x_T and every step's noise; noise:
    optional x_T [B, *D]; steps: sample on a respaced chain of K steps (None: all T);
    after_step: x = after_step(x, t) after the step from t (see the module docstring).
    Returns x_0 [B, *D] in `dtype`, or (x_0, trajectory) with trajectory [K + 1, B, *D] =
    (x_T, ..., x_0) if return_trajectory (memory: K + 1 copies).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> x0, traj = td.ddpm_sample_loop(d, zero_eps, (5, 2), np.random.default_rng(0), return_trajectory=True)
    >>> x0.shape, traj.shape                                    # trajectory: x_T, ..., x_0
    ((5, 2), (101, 5, 2))
    """
    chain = diffusion if steps is None else respace(diffusion, steps)   # K of the T steps (respacing.py)
    model = apply_guidance(model, guidance)            # a scale w: ClassifierFreeGuidance, eq. 6 (guidance.py)
    eq11 = (chain.model_mean_type == "eps" and not chain.learned_variance
            and not clip_denoised and denoised_fn is None)
    x = standard_normal_noise(shape, dtype, noise, rng)                 # x_T ~ N(0, I)
    trajectory = [x]
    T = chain.num_timesteps
    for i in reversed(range(T)):                        # the chain: a loop over T, never over the batch
        t = np.full(x.shape[0], i, dtype=np.int64)
        with no_grad():
            if eq11:
                x = ddpm_step(chain, model, x, t, rng=rng, model_kwargs=model_kwargs)
            else:
                x = p_sample(chain, model, x, t, rng=rng, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                             model_kwargs=model_kwargs)["sample"]
        if after_step is not None:
            x = after_step(x, t)
        if return_trajectory:
            trajectory.append(x)
        if progress is not None:
            progress(T - i, T)
    check_sample(x, "ddpm_sample_loop")
    return (x, np.stack(trajectory)) if return_trajectory else x


SAMPLERS = {"ddpm": ddpm_sample_loop, "ddim": ddim_sample_loop, "langevin": langevin_sample_loop,
            "sde": sde_sample_loop, "ode": ode_sample_loop}


def sample(diffusion, model, shape, rng, sampler: str = "ddpm", **kwargs):
    """Run the sampler called ``sampler`` ("ddpm", "ddim", "langevin", or the continuous-time "sde" and
    "ode" of tinydiff/sde.py) with ``kwargs``:
    sample(d, model, (16, 1, 28, 28), rng, sampler="ddim", steps=50, guidance=3.0,
    model_kwargs={"y": labels}).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> td.sample(d, zero_eps, (3, 2), np.random.default_rng(0), sampler="ddim", steps=5).shape
    (3, 2)
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {sampler!r}")
    return SAMPLERS[sampler](diffusion, model, shape, rng, **kwargs)
