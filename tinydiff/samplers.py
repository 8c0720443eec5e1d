"""Samplers: ancestral DDPM, strided, DDIM and annealed Langevin, all with one call shape.

    x0 = ddpm_sample_loop(diffusion, model, shape, rng, steps=None, model_kwargs=None,
                          guidance=None, progress=None, return_trajectory=False, ...)

and the same for ddim_sample_loop and langevin_sample_loop (each adds its own options:
eta; n_steps_each, step_lr); sample(..., sampler="ddim") picks one by name.

    steps       run on K of the T trained steps (an int K, "ddimK" or a list: see
                space_timesteps): respace() builds the short chain, with betas re-derived so
                alpha_bar is unchanged at the kept steps (Nichol & Dhariwal 2021, section 4);
                the chain maps its steps back to the model's own timesteps itself.
    model_kwargs  passed to every model call, e.g. {"y": labels} for a class-conditional model.
    guidance    a classifier-free guidance scale w (Ho & Salimans 2022; a float, or one per
                label attribute), or a function model -> guided model (tinydiff.guidance).
    noise       the starting point x at the chain's last step (default: drawn from rng). A
                chain that ends at an intermediate step t0 (steps=[..., t0]) started from
                q_sample(x0, t0) is SDEdit (tinydiff.editing.sdedit).
    after_step  x = after_step(x, t) after each step from chain step t (DDPM, DDIM): the hook
                inpainting uses to put the known pixels back (tinydiff.editing.inpaint).

    ddpm_sample_loop       DDPM Algorithm 2: x_T ~ N(0, I), then p(x_{t-1} | x_t) down to x_0.
    ddim_sample_loop       DDIM (Song, Meng & Ermon 2021, eq. 12 and 16): eta = 0 is a
                           deterministic map from noise to data, eta = 1 is DDPM.
    ddim_reverse_step      the same update run backwards, data to noise (DDIM inversion;
                           tinydiff.editing.ddim_invert runs it over a chain).
    langevin_sample_loop   annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with
                           the score read off the eps-prediction.

Timesteps are 0-based (tinydiff/schedules.py). Every loop runs over the chain, never over
the batch; noise comes from an explicit numpy.random.Generator; model calls run under
no_grad; `progress(i, n)` is called after step i of n. Arrays keep the dtype of x.
"""
from __future__ import annotations

import math

import numpy as np

from .diffusion import GaussianDiffusion, check_step
from .engine import no_grad, unwrap
from .gaussian import standard_normal_noise
from .guidance import apply_guidance


# ---------------------------------------------------------------- strided schedules
def space_timesteps(T: int, spec, name: str = "spec") -> np.ndarray:
    """Which of the T original timesteps to keep, sorted ascending, int64 [K].

    spec: an int K or a string "K": K steps evenly spaced from 0 to T-1 (both ends kept),
    round(i (T-1)/(K-1)) for i = 0..K-1; "ddimK": the stride s with len(range(0, T, s)) = K,
    i.e. 0, s, 2s, ... (DDIM's "uniform" skip, Song et al. 2021 appendix D.2); or an explicit
    sequence of distinct timesteps in 0..T-1. ``name``: how errors call spec (respace says "steps").

    Rounding follows improved-diffusion's space_timesteps(T, [K]) exactly: a running sum
    cur += (T-1)/(K-1) rounded by Python's round, which rounds halves to even
    (space_timesteps(1000, 25) keeps 166, not 167, for 166.5). diffusers'
    np.linspace(0, T-1, K).round() rounds a product instead of a sum and differs for 278 of
    K = 2..1000 at T = 1000 (by one step, where a value lies within rounding error of a half).
    K = 1 keeps the last step T-1, where sampling must start; improved-diffusion keeps 0.

    >>> space_timesteps(1000, 25)[:6].tolist()
    [0, 42, 83, 125, 166, 208]
    >>> space_timesteps(1000, "ddim4").tolist(), space_timesteps(10, [9, 0, 5]).tolist()
    ([0, 250, 500, 750], [0, 5, 9])
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T: expected a positive int number of timesteps, got {T!r}")
    if isinstance(spec, str) and spec.startswith("ddim"):
        K = int(spec[4:]) if spec[4:].isdigit() else -1
        for stride in range(1, T + 1):
            if len(range(0, T, stride)) == K:
                return np.arange(0, T, stride, dtype=np.int64)
        raise ValueError(f"{name}: no integer stride gives exactly {spec[4:]!r} of T={T} steps for {spec!r}")
    if isinstance(spec, (str, int, np.integer)) and not isinstance(spec, bool):
        K = int(spec) if str(spec).isdigit() else -1
        if not 1 <= K <= T:
            raise ValueError(f"{name}: expected a number of steps in 1..{T} (the trained chain's length), "
                             f"'ddimK' or a list of steps, got {spec!r}")
        if K == 1:
            return np.array([T - 1], dtype=np.int64)
        stride, cur, kept = (T - 1) / (K - 1), 0.0, []
        for _ in range(K):               # improved-diffusion's loop; a stride >= 1 keeps the K steps distinct
            kept.append(round(cur))
            cur += stride
        return np.array(kept, dtype=np.int64)
    steps = np.asarray(spec)
    if (steps.ndim != 1 or steps.size == 0 or steps.dtype.kind not in "iu" or steps.min() < 0
            or steps.max() >= T or len(np.unique(steps)) != len(steps)):
        raise ValueError(f"{name}: expected distinct int timesteps in 0..{T - 1}, got {spec!r}")
    return np.sort(steps).astype(np.int64)


def respaced_betas(alphas_cumprod, use_timesteps) -> np.ndarray:
    """Betas of the chain that visits only the kept steps s_0 < s_1 < ... < s_{K-1}:

        beta_i = 1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}},   alpha_bar_{s_{-1}} = 1

    Nichol & Dhariwal (2021), section 4. The product telescopes, so the new chain's
    prod_{j<=i} (1 - beta_j) is alpha_bar_{s_i}: q(x_{s_i} | x_0) is unchanged and a model
    trained on the original steps is asked exactly the questions it was trained on.
    alphas_cumprod: [T] float64; use_timesteps: sorted int [K]. Returns float64 [K].

    >>> ab = np.array([0.9, 0.5, 0.2])
    >>> td.samplers.respaced_betas(ab, np.array([0, 2])).round(6).tolist()   # 1 - 0.9, 1 - 0.2 / 0.9
    [0.1, 0.777778]
    """
    kept = np.asarray(alphas_cumprod, dtype=np.float64)[use_timesteps]
    return 1.0 - kept / np.append(1.0, kept[:-1])


def respace(diffusion: GaussianDiffusion, steps) -> GaussianDiffusion:
    """The chain that visits only the kept steps of ``diffusion``: a GaussianDiffusion with
    ``respaced_betas`` [K], the same model_mean_type / model_var_type / loss_type /
    decoder_nll, and a timestep_map that calls the model with the original timesteps.

    steps: anything space_timesteps accepts (an int K, "ddimK", a list of steps). Use:
    ddpm_sample_loop(respace(d, 50), model, shape, rng), which is what steps=50 does. A
    learned_range v then interpolates between the new chain's beta and beta~, as in
    improved-diffusion. Respacing a respaced chain keeps mapping to the original steps.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> short = td.respace(d, 50)
    >>> short.num_timesteps, short.timestep_map[:3].tolist()
    (50, [0, 20, 41])
    >>> bool(np.allclose(short.alphas_cumprod, d.alphas_cumprod[short.timestep_map]))  # same q(x_t | x_0)
    True
    """
    kept = space_timesteps(diffusion.num_timesteps, steps, name="steps")
    return GaussianDiffusion(respaced_betas(diffusion.alphas_cumprod, kept),
                             model_mean_type=diffusion.model_mean_type, model_var_type=diffusion.model_var_type,
                             loss_type=diffusion.loss_type, decoder_nll=diffusion.decoder_nll,
                             hybrid_vb_weight=diffusion.hybrid_vb_weight, mse_weighting=diffusion.mse_weighting,
                             snr_gamma=diffusion.snr_gamma, timestep_map=diffusion.timestep_map[kept])


def _setup(diffusion, model, steps, guidance):
    """The chain to run (respaced if steps is given) and the model to call (guided if asked)."""
    chain = diffusion if steps is None else respace(diffusion, steps)
    return chain, apply_guidance(model, guidance)


# ---------------------------------------------------------------- ancestral (DDPM)
def ddpm_sample_loop(diffusion, model, shape, rng, *, steps=None, model_kwargs=None, guidance=None,
                     progress=None, return_trajectory=False, noise=None, clip_denoised=False,
                     denoised_fn=None, after_step=None, dtype=np.float32):
    """Ancestral sampling, DDPM Algorithm 2: x_T ~ N(0, I), then p_sample for t = T-1, ..., 0.

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
    chain, model = _setup(diffusion, model, steps, guidance)
    x = standard_normal_noise(shape, dtype, noise, rng)
    trajectory = [x]
    T = chain.num_timesteps
    for i in reversed(range(T)):                        # the chain: a loop over T, never over the batch
        t = np.full(x.shape[0], i, dtype=np.int64)
        with no_grad():
            x = chain.p_sample(model, x, t, rng=rng, clip_denoised=clip_denoised,
                               denoised_fn=denoised_fn, model_kwargs=model_kwargs)["sample"]
        if after_step is not None:
            x = after_step(x, t)
        if return_trajectory:
            trajectory.append(x)
        if progress is not None:
            progress(T - i, T)
    return (x, np.stack(trajectory)) if return_trajectory else x


# ---------------------------------------------------------------- DDIM
def ddim_sigma(alpha_bar, alpha_bar_prev, eta):
    """sigma(eta) = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev), Song et al. 2021 eq. 16.

    eta = 1 gives the DDPM posterior variance beta~ of the (possibly strided) step; eta = 0
    a deterministic step. Shapes broadcast.

    >>> float(td.samplers.ddim_sigma(0.5, 0.8, 0.0)), round(float(td.samplers.ddim_sigma(0.5, 0.8, 1.0)), 6)
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
    >>> out = td.samplers.ddim_step(d, zero_eps, np.ones((1, 2)), np.array([99]), eta=0.0, rng=np.random.default_rng(0))
    >>> bool(np.allclose(out["sample"], np.sqrt(d.alphas_cumprod[98] / d.alphas_cumprod[99])))   # eps = 0: a rescale
    True
    """
    with no_grad():
        out = diffusion.p_mean_variance(model, x_t, t, clip_denoised, denoised_fn, model_kwargs)
    pred_x0, pred_eps = unwrap(out["pred_x0"]), unwrap(out["pred_eps"])
    noise = standard_normal_noise(x_t.shape, x_t.dtype, noise, rng)
    ab = diffusion.coef(diffusion.alphas_cumprod, t, x_t)
    ab_prev = diffusion.coef(diffusion.alphas_cumprod_prev, t, x_t)
    sigma = ddim_sigma(ab, ab_prev, eta)
    direction = np.sqrt(np.maximum(1.0 - ab_prev - sigma ** 2, 0.0))   # 0 at the data; rounding-safe
    sample = np.sqrt(ab_prev) * pred_x0 + direction * pred_eps + sigma * noise
    check_step(sample, t, "ddim_step")
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
    >>> out = td.samplers.ddim_reverse_step(d, zero_eps, np.ones((1, 2)), np.array([10]))
    >>> bool(np.allclose(out["sample"], np.sqrt(d.alphas_cumprod[11] / d.alphas_cumprod[10])))   # undoes ddim_step
    True
    """
    with no_grad():
        out = diffusion.p_mean_variance(model, x_t, t, clip_denoised, denoised_fn, model_kwargs)
    pred_x0, pred_eps = unwrap(out["pred_x0"]), unwrap(out["pred_eps"])
    ab_next = diffusion.coef(diffusion.alphas_cumprod_next, t, x_t)
    sample = np.sqrt(ab_next) * pred_x0 + np.sqrt(1.0 - ab_next) * pred_eps
    check_step(sample, t, "ddim_reverse_step")
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
    chain, model = _setup(diffusion, model, steps, guidance)
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
    return (x, np.stack(trajectory)) if return_trajectory else x


# ---------------------------------------------------------------- annealed Langevin dynamics
def langevin_noise_level(alpha_bar):
    """sigma_t = sqrt((1 - ab_t) / ab_t): x_t / sqrt(ab_t) = x_0 + sigma_t eps.

    Dividing DDPM's x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps by sqrt(ab) gives the noise-
    conditional setting of Song & Ermon (2019), y = x_0 + sigma z, with sigma_t from ~0.01
    (t = 0) to ~160 (t = T-1) for DDPM's linear schedule.

    >>> float(td.samplers.langevin_noise_level(0.5))                  # x_t / sqrt(ab) = x_0 + sigma eps
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
    >>> td.samplers.check_langevin_step_lr(ab, 2e-5)                  # 2e-5 / sigma_min^2 = 0.2 < 4: stable
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
    >>> y, score = td.samplers.langevin_step(d, zero_eps, np.zeros((1, 2)), np.array([50]), 0.01, noise=np.ones((1, 2)))
    >>> y.round(6).tolist(), score.tolist()                           # sqrt(alpha) z with alpha = 0.01
    ([[0.1, 0.1]], [[-0.0, -0.0]])
    """
    x_t = diffusion.coef(diffusion.sqrt_alphas_cumprod, t, y) * y
    with no_grad():
        eps = unwrap(diffusion.p_mean_variance(model, x_t, t, model_kwargs=model_kwargs)["pred_eps"])
    score = -eps / diffusion.coef(langevin_noise_level(diffusion.alphas_cumprod), t, y)
    noise = standard_normal_noise(y.shape, y.dtype, noise, rng)
    alpha = np.asarray(step_size, dtype=y.dtype)
    y_new = y + 0.5 * alpha * score + np.sqrt(alpha) * noise
    check_step(y_new, t, "langevin_step")
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
    chain, model = _setup(diffusion, model, steps, guidance)
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
    return (y, np.stack(trajectory)) if return_trajectory else y


# ---------------------------------------------------------------- by name
SAMPLERS = {"ddpm": ddpm_sample_loop, "ddim": ddim_sample_loop, "langevin": langevin_sample_loop}


def sample(diffusion, model, shape, rng, sampler: str = "ddpm", **kwargs):
    """Run the sampler called ``sampler`` ("ddpm", "ddim" or "langevin") with ``kwargs``:
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
