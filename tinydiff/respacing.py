"""Sampling on K of a trained chain's T steps (Nichol & Dhariwal 2021, section 4).

    space_timesteps(T, spec)   which steps to keep: K evenly spaced, DDIM's "ddimK" stride, or a list
    respaced_betas(ab, kept)   the betas of the chain that visits only those steps
    respace(diffusion, steps)  that chain as a GaussianDiffusion, calling the model with the original t

Every sampler's ``steps=`` goes through respace, so a short chain asks a model trained on
all T steps exactly the questions it was trained on.
"""
from __future__ import annotations

import numpy as np

from .diffusion import GaussianDiffusion


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
    >>> td.respacing.respaced_betas(ab, np.array([0, 2])).round(6).tolist()   # 1 - 0.9, 1 - 0.2 / 0.9
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

