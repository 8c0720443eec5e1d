"""Noise schedules beta_t, their validation, and the per-timestep lookup helper `extract`.

A schedule is a float64 array ``betas`` of shape [T]: step t of the forward chain adds
Gaussian noise of variance betas[t], q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

Timesteps are 0-based, t = 0..T-1, as in improved-diffusion and diffusers. The papers
count from 1, so code index t is the paper's step t+1:

    betas[t]          = beta_{t+1}          (DDPM, Ho et al. 2020)
    alphas_cumprod[t] = alpha_bar_{t+1} = prod_{s<=t} (1 - betas[s])

and the data x_0 is the state "before" index 0.

References
    Ho, Jain & Abbeel (2020), Denoising Diffusion Probabilistic Models, section 4.
    Nichol & Dhariwal (2021), Improved Denoising Diffusion Probabilistic Models, eq. 17.
    Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models, sec. 3 and 4.
"""
from __future__ import annotations

import math

import numpy as np


def validate_betas(betas) -> np.ndarray:
    """Check a schedule and return it as a float64 array [T].

    Valid means: 1-D, non-empty, every beta finite and strictly inside (0, 1). beta = 0
    would make a step that adds no noise (and a posterior variance of 0 inside the
    chain); beta = 1 would erase the signal in one step (alpha_bar = 0 from then on).

    >>> td.schedules.validate_betas([0.1, 0.2]).dtype
    dtype('float64')
    >>> td.schedules.validate_betas([0.1, 1.0])
    Traceback (most recent call last):
    ...
    ValueError: betas[1] = 1.0: every beta must be finite and strictly inside (0, 1) (1 bad entries, first shown)
    """
    try:
        arr = np.asarray(betas, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"betas: expected a 1-D array of floats [T], got {betas!r:.80}") from None
    if arr.ndim != 1:
        raise ValueError(f"betas: expected a 1-D array of shape [T], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("betas: expected at least one timestep, got an empty array")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0) & (arr < 1)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"betas[{i}] = {float(arr[i])!r}: every beta must be finite and strictly "
                         f"inside (0, 1) ({bad.size} bad entries, first shown)")
    return arr


def _check_num_timesteps(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T: expected a positive int number of timesteps, got {T!r}")
    return int(T)


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule: betas[t] = beta_start + (beta_end - beta_start) t / (T - 1).

    Ho et al. (2020), section 4: T = 1000, beta_1 = 1e-4 rising linearly to beta_T = 0.02.
    (improved-diffusion rescales both ends by 1000 / T; we do not: the arguments are
    the betas you get.) Returns float64 [T]; raises ValueError on an invalid schedule.

    >>> betas = td.linear_beta_schedule(1000)
    >>> betas.shape, float(betas[0]), float(betas[-1])
    ((1000,), 0.0001, 0.02)
    >>> float(np.prod(1 - betas))            # alpha_bar at the last step: almost no signal left
    4.035829...e-05
    """
    T = _check_num_timesteps(T)
    return validate_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def betas_for_alpha_bar(T: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Betas that make prod_{s<=t} (1 - betas[s]) follow a continuous curve alpha_bar(tau).

    alpha_bar: function on tau in [0, 1] with alpha_bar(0) = 1 (data) decreasing to ~0.
    Index t (0-based) covers tau in [t/T, (t+1)/T], so

        betas[t] = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), max_beta)

    (Nichol & Dhariwal 2021, the line after eq. 17). Before clipping, the product
    telescopes: alphas_cumprod[t] = alpha_bar((t+1)/T) / alpha_bar(0).

    >>> betas = td.betas_for_alpha_bar(4, lambda tau: 1.0 - tau, max_beta=0.999)
    >>> np.cumprod(1 - betas).round(6).tolist()   # 1 - tau at tau = 1/4, 1/2, 3/4; then beta = 1 is clipped
    [0.75, 0.5, 0.25, 0.00025]
    """
    T = _check_num_timesteps(T)
    tau = np.arange(T + 1, dtype=np.float64) / T             # [T + 1]: 0, 1/T, ..., 1
    curve = np.array([alpha_bar(x) for x in tau], dtype=np.float64)
    return validate_betas(np.minimum(1.0 - curve[1:] / curve[:-1], max_beta))


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021) cosine schedule, eq. 17:

        alpha_bar(t) = f(t) / f(0),   f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 )

    with paper t = 1..T, i.e. code index t-1 (see module docstring). The offset s keeps
    beta_1 from being vanishingly small; betas are clipped to max_beta so the last steps,
    where alpha_bar -> 0, stay below 1. Returns float64 [T].

    >>> betas = td.cosine_beta_schedule(1000)
    >>> float(np.cumprod(1 - betas)[499]).__round__(3)   # half way, about half the signal is left
    0.494
    """
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta: expected a value in (0, 1), got {max_beta!r}")
    if not s >= 0:
        raise ValueError(f"s: expected an offset >= 0, got {s!r}")

    def f(tau):
        return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2

    return betas_for_alpha_bar(T, f, max_beta=max_beta)


def logsnr_beta_schedule(T: int, logsnr_max: float = 14.0, logsnr_min: float = -5.0) -> np.ndarray:
    """Betas whose log signal-to-noise ratio falls linearly along the chain:

        lambda_t = log( alpha_bar_t / (1 - alpha_bar_t) ) = logsnr_max + (logsnr_min - logsnr_max) (t - 1) / (T - 1)
        alpha_bar_t = sigmoid(lambda_t),   beta_t = 1 - alpha_bar_t / alpha_bar_{t-1},   alpha_bar_0 = 1

    with paper t = 1..T (code index t-1): the fixed linear log-SNR schedule of Kingma et al.
    (2021), Variational Diffusion Models, sec. 3-4 (variance preserving, alpha^2 = sigmoid(lambda)).
    The noise variance 1 - alpha_bar_t ~ exp(-lambda_t) starts at exp(-logsnr_max) and grows
    by the same factor each step, so a few steps suffice to resolve structure at every
    scale: with T = 40, the default ends (noise std e^-7 ~ 0.0009 after the first step,
    alpha_bar_T = 0.0067, a prior term L_T of ~0.01 bits per dimension at unit variance)
    resolve a 2-D curve 0.002 wide, where a linear beta schedule spends its first steps far
    above that scale. beta_t is computed from log-sigmoids, exact even for beta ~ 1e-7.
    Returns float64 [T].

    >>> ab = np.cumprod(1 - td.logsnr_beta_schedule(40))
    >>> np.log(ab / (1 - ab))[[0, -1]].round(6).tolist()    # log-SNR from 14 down to -5
    [14.0, -5.0]
    """
    T = _check_num_timesteps(T)
    if not (math.isfinite(logsnr_max) and math.isfinite(logsnr_min) and logsnr_max > logsnr_min):
        raise ValueError(f"logsnr_max: expected a finite value above logsnr_min = {logsnr_min!r}, got {logsnr_max!r}")
    lam = logsnr_max + (logsnr_min - logsnr_max) * np.arange(T) / max(T - 1, 1)     # [T]
    log_alpha_bar = -np.logaddexp(0.0, -lam)                                         # log sigmoid(lambda)
    log_alpha_bar_prev = np.concatenate([[0.0], log_alpha_bar[:-1]])
    return validate_betas(-np.expm1(log_alpha_bar - log_alpha_bar_prev))


def extract(arr: np.ndarray, t, shape) -> np.ndarray:
    """Per-example lookup arr[t], shaped to broadcast against data of shape [B, *D].

    arr: [T] per-timestep values; t: int array [B] of 0-based timesteps; shape: the
    data's shape (B, *D). Returns [B, 1, ..., 1] with len(shape) axes. This is the one
    place where per-timestep values meet the data (improved-diffusion's
    `_extract_into_tensor`), so no other code depends on how many axes D has.

    >>> arr = np.array([10.0, 20.0, 30.0])
    >>> td.extract(arr, np.array([2, 0]), (2, 3, 4, 4)).shape     # ready to multiply a [2, 3, 4, 4] batch
    (2, 1, 1, 1)
    >>> td.extract(arr, np.array([2, 0]), (2, 2)).ravel().tolist()
    [30.0, 10.0]
    """
    t = np.asarray(t)
    if np.ndim(arr) != 1:
        raise ValueError(f"arr: expected per-timestep values of shape [T], got shape {np.shape(arr)}")
    if len(shape) < 1:
        raise ValueError(f"shape: expected the data's shape (B, *D) with a batch axis, got {tuple(shape)}")
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise ValueError(f"t: expected an int array of shape [B], got dtype {t.dtype}, shape {t.shape}")
    if t.shape[0] != shape[0]:
        raise ValueError(f"t: expected one timestep per example ({shape[0]}), got shape {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= len(arr)):
        bad = t[(t < 0) | (t >= len(arr))][0]
        raise ValueError(f"t: timesteps must lie in 0..{len(arr) - 1}, got {bad}")
    return arr[t].reshape((shape[0],) + (1,) * (len(shape) - 1))
