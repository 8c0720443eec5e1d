"""Editing real images with a trained diffusion model: "replace Y in X with Z".

A diffusion model trained to generate can also edit, without any retraining, because its
chain can be entered part-way: noise an image only to some step and the model treats it as
one of its own half-denoised samples. Three ways, each one function:

    sdedit(d, model, x0, t0, labels, rng)        SDEdit (Meng et al. 2022, Algorithm 1): noise x0
                                                 to t0 with q(x_t0 | x_0), then denoise under
                                                 new labels. Small t0 keeps the image, large t0
                                                 keeps only what the labels ask for.
    inpaint(d, model, x0, mask, labels, rng)     fill in the pixels where mask is False: at every
                                                 step the known pixels are replaced by x0 noised
                                                 to that step, q(x_t | x_0) (the replacement
                                                 method, Song et al. 2021, app. I.2; RePaint,
                                                 Lugmayr et al. 2022, Algorithm 1, with its
                                                 resampling: resample=, jump=); the merge
                                                 itself is inpaint_merge (RePaint eq. 8)
    ddim_invert(d, model, x0, labels, steps)     run DDIM's deterministic update backwards, data to
                                                 noise (Song et al. 2021 eq. 13; Dhariwal & Nichol
                                                 2021 app. F; Mokady et al. 2023): decoding the
                                                 result with the same labels gives x0 back, with
                                                 other labels an edit that keeps the layout

None of them has a sampler loop of its own: SDEdit is ``ddim_sample_loop`` on a chain that
ends at t0, started from q_sample(x0, t0) (``noise=``); inpainting is ``ddim_sample_loop``
with an ``after_step`` hook that puts the known pixels back; inversion is
``ddim.ddim_reverse_step`` (beside ``ddim_step``) applied over the chain upward.

Conventions. Images x0 are model-space arrays [B, *D] (MNIST: [B, 1, 28, 28] in [-1, 1]);
``labels`` is what the model takes as y (int [B], or [B, n] for several attributes), None
for the null label (unconditional); ``guidance`` a classifier-free guidance scale w
(Ho & Salimans's w, 0 = the conditional model) or one per attribute, as for the samplers.
``steps`` is the number of steps of a full chain (respaced from the diffusion's T).
"""
from __future__ import annotations

import math

import numpy as np

from .checks import check_rng
from .ddim import ddim_reverse_step, ddim_sample_loop, ddim_step
from .diffusion import check_sample
from .guidance import apply_guidance
from .respacing import respace, space_timesteps


def _labels_kwargs(labels, n: int):
    """labels -> model_kwargs ({"y": labels} or None), checked against the batch size."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.dtype.kind not in "iu" or len(y) != n:
        raise ValueError(f"labels: expected {n} integer labels (one per image, or [B, n_attributes]) or None, "
                         f"got dtype {y.dtype} and shape {y.shape}")
    return {"y": y}


def _check_images(x0, name: str = "x0") -> np.ndarray:
    x0 = np.asarray(x0)
    if x0.ndim < 2 or x0.dtype.kind != "f" or not np.all(np.isfinite(x0)):
        raise ValueError(f"{name}: expected finite float images [B, *D] in model space, got dtype {x0.dtype} "
                         f"and shape {x0.shape}")
    return x0


def sdedit_timestep(diffusion, t0: float) -> int:
    """The code timestep SDEdit noises to for strength t0 in [0, 1]: round(t0 T) - 1
    (t0 = 1 is the last step T - 1; -1 means t0 rounds to no noise at all).

    Meng et al. write t0 in [0, 1] as the time of the SDE; here it is the fraction of the T
    forward steps, the papers' step t0 T (code index t0 T - 1).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> td.editing.sdedit_timestep(d, 0.5), td.editing.sdedit_timestep(d, 1.0), td.editing.sdedit_timestep(d, 0.0)
    (499, 999, -1)
    """
    if isinstance(t0, bool) or not isinstance(t0, (int, float, np.floating, np.integer)) or not 0 <= t0 <= 1:
        raise ValueError(f"t0: expected the SDEdit strength, a number in [0, 1] (the fraction of the chain to "
                         f"noise to), got {t0!r}")
    return int(round(float(t0) * diffusion.num_timesteps)) - 1


def sdedit_start(diffusion, x0, t0: float, noise=None, rng=None):
    """SDEdit's starting point, the "guide" noised to strength t0 (Meng et al. 2022, Algorithm 1
    line 2, their VP-SDE perturbation kernel; in DDPM's notation, Ho et al. 2020 eq. 4):

        x_t0 = sqrt(ab_t0) x_0 + sqrt(1 - ab_t0) eps,   eps ~ N(0, I),   t0 -> step round(t0 T) - 1

    x0: [B, *D] in model space; t0: strength in [0, 1] (``sdedit_timestep``; 0 returns x0);
    noise: eps [B, *D] (default: drawn from rng). Returns x_t0 [B, *D] in x0's dtype. The
    larger t0, the less of x0 survives: at the cosine schedule's t0 = 0.5 the signal scale
    sqrt(ab) is about 0.7, at t0 = 0.8 about 0.3.

    >>> d = td.GaussianDiffusion(td.cosine_beta_schedule(1000))
    >>> x = td.editing.sdedit_start(d, np.ones((1, 3), np.float32), 0.5, noise=np.zeros((1, 3)))
    >>> bool(np.allclose(x, np.sqrt(d.alphas_cumprod[499]))), x.dtype                       # sqrt(ab) x_0
    (True, dtype('float32'))
    """
    x0 = _check_images(x0)
    start = sdedit_timestep(diffusion, t0)
    if start < 0:
        return x0.copy()
    x_t0 = diffusion.q_sample(x0, np.full(len(x0), start), noise=noise, rng=rng)
    return np.asarray(x_t0).astype(x0.dtype, copy=False)


def sdedit(diffusion, model, x0, t0: float, labels, rng, *, steps=50, eta: float = 1.0, guidance=None,
           clip_denoised: bool = False, noise=None, progress=None):
    """SDEdit (Meng et al. 2022, Algorithm 1): x_t0 ~ q(x_t0 | x_0), then denoise to the data.

        x_t0 = sqrt(ab_t0) x_0 + sqrt(1 - ab_t0) eps          (DDPM eq. 4: ``q_sample``)
        x_0' = the reverse chain from t0 down to 0, under ``labels``

    Meng et al. integrate the reverse SDE; here the reverse chain is DDIM on the steps below
    t0 (eta = 1, the default, is the stochastic DDPM-like sampler; eta = 0 the deterministic
    one). The chain keeps k = ceil(steps t0) steps evenly spaced from 0 to t0 (both kept),
    as many per unit of t as a full chain of ``steps``, and is started from x_t0 through the
    sampler's ``noise=``; respacing keeps alpha_bar at the kept steps, so the model meets
    x_t0 at exactly the noise level it was made at.

    x0: [B, *D] images in model space; t0: strength in [0, 1] (``sdedit_timestep``): 0 returns
    x0 unchanged, 1 starts from (almost) pure noise and forgets x0; labels: the labels to edit
    towards (None: unconditional); noise: the eps of x_t0 (default: drawn from rng).
    Returns the edited images [B, *D].

    >>> d = td.GaussianDiffusion(td.cosine_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> x0 = np.ones((2, 3), np.float32)
    >>> bool(np.array_equal(td.editing.sdedit(d, zero_eps, x0, 0.0, None, np.random.default_rng(0)), x0))
    True
    >>> td.editing.sdedit(d, zero_eps, x0, 0.5, None, np.random.default_rng(0), steps=10).shape   # 5 steps
    (2, 3)
    """
    x0 = _check_images(x0)
    rng = check_rng(rng)
    start = sdedit_timestep(diffusion, t0)
    if start < 0:
        return x0.copy()
    kwargs = _labels_kwargs(labels, len(x0))
    k = max(1, math.ceil(steps * (start + 1) / diffusion.num_timesteps))
    kept = space_timesteps(start + 1, k)                      # 0 ... start: the chain ends at t0
    x_t0 = sdedit_start(diffusion, x0, t0, noise=noise, rng=rng)
    return ddim_sample_loop(diffusion, model, x0.shape, rng, steps=kept, eta=eta, model_kwargs=kwargs,
                            guidance=guidance, clip_denoised=clip_denoised, noise=x_t0, progress=progress,
                            dtype=x0.dtype)


def inpaint_merge(x_known, x_unknown, mask):
    """The inpainting merge (RePaint, Lugmayr et al. 2022, eq. 8):

        x_{t-1} = m * x_{t-1}^known + (1 - m) * x_{t-1}^unknown

    x_known: [B, *D] the image's own pixels noised to step t-1, q(x_{t-1} | x_0) (RePaint eq. 6;
    ``q_sample``); x_unknown: [B, *D] the model's reverse step from x_t (RePaint eq. 7); mask m:
    bool, broadcastable to [B, *D], True where the pixel is known. A bool mask picks, so the
    known pixels are x_known bit for bit. Returns [B, *D].

    >>> td.editing.inpaint_merge(np.zeros((1, 4)), np.ones((1, 4)), np.array([True, True, False, False])).tolist()
    [[0.0, 0.0, 1.0, 1.0]]
    """
    return np.where(np.asarray(mask, dtype=bool), x_known, x_unknown)


def repaint_schedule(num_steps: int, resample: int = 1, jump: int = 1) -> list:
    """The levels RePaint's chain visits (Lugmayr et al. 2022, section 4.2 and their code's
    get_schedule_jump): from the last step K - 1 down to the data (-1), and each time it
    arrives at a level l = 0, jump, 2 jump, ... (with l + jump < K) it goes back up ``jump``
    levels and down again, ``resample - 1`` times. A step down is one model call.

    ``inpaint`` walks the same path through the sampler's ``after_step`` hook; this list is
    the reference the tests hold it to. resample = 1 is the plain descent.

    >>> td.editing.repaint_schedule(4)
    [3, 2, 1, 0, -1]
    >>> td.editing.repaint_schedule(4, resample=2, jump=2)       # at level 0: up to 2 and down again
    [3, 2, 1, 0, 1, 2, 1, 0, -1]
    """
    levels, level = [num_steps - 1], num_steps - 1
    repeats = {l: resample - 1 for l in range(0, num_steps - jump, jump)}
    while level >= 0:
        level -= 1
        levels.append(level)
        if repeats.get(level, 0) > 0:
            repeats[level] -= 1
            levels.extend(range(level + 1, level + jump + 1))      # back up, one level at a time
            level += jump
    return levels


def inpaint(diffusion, model, x0, mask, labels, rng, *, steps=50, resample: int = 1, jump: int = 1,
            eta: float = 1.0, guidance=None, clip_denoised: bool = False, noise=None, progress=None):
    """Fill in the unknown pixels of x0 (where mask is False) with the model: after every
    reverse step the known pixels are replaced by x0 noised to the new step,

        x_{t-1} = m * x_{t-1}^known + (1 - m) * x_{t-1}^unknown      (``inpaint_merge``)
        x_{t-1}^known ~ q(x_{t-1} | x_0)   (``q_sample``; x0 itself at the data)
        x_{t-1}^unknown ~ the model's reverse step from x_t (``ddim_step``)

    (RePaint, Lugmayr et al. 2022, eq. 6-8 and Algorithm 1 lines 4-8; the replacement method of Song et
    al. 2021, app. I.2). The model never sees x0 directly; the replaced pixels steer it. With
    resample = r > 1 (RePaint's resampling, Algorithm 1 line 9 and section 4.2), at every
    ``jump``-th step the chain goes back up ``jump`` steps with q(x_t | x_{t-1}) (``q_step``)
    and down again, r - 1 times, so the generated part has more steps to agree with the known
    part; ``repaint_schedule`` lists the path. Cost: about r times the model calls.

    x0: [B, *D] in model space; mask: bool (or 0/1), broadcastable to x0, True where x0 is
    known (kept); labels: the labels to inpaint under (None: unconditional, the known pixels
    alone decide); eta: as in ddim_step (1, the default, is the stochastic sampler RePaint
    uses; eta = 0 leaves the replaced pixels no noise to blend with). Returns [B, *D]; the
    known pixels equal x0 exactly (the last replacement is x0 itself).

    >>> d = td.GaussianDiffusion(td.cosine_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)
    >>> x0, mask = np.ones((2, 4), np.float32), np.array([True, True, False, False])
    >>> out = td.editing.inpaint(d, zero_eps, x0, mask, None, np.random.default_rng(0), steps=10)
    >>> out[:, :2].tolist()                                       # the known pixels, exactly
    [[1.0, 1.0], [1.0, 1.0]]
    """
    x0 = _check_images(x0)
    rng = check_rng(rng)
    for name, value in (("resample", resample), ("jump", jump)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    m = np.asarray(mask)
    try:
        known = np.broadcast_to(m.astype(bool), x0.shape)
    except ValueError:
        raise ValueError(f"mask: expected a shape that broadcasts to x0's {x0.shape}, got {m.shape}") from None
    kwargs = _labels_kwargs(labels, len(x0))
    chain = diffusion if steps is None else respace(diffusion, steps)
    guided = apply_guidance(model, guidance)
    K, B = chain.num_timesteps, len(x0)

    def put_back_known(x, level):
        """Replace the known pixels of x (at chain level ``level``; -1 is the data) by x0 noised there."""
        truth = x0 if level < 0 else chain.q_sample(x0, np.full(B, level), rng=rng)    # RePaint eq. 6
        return inpaint_merge(truth, x, known).astype(x0.dtype, copy=False)

    def after_step(x, t):                       # x has just been moved from level t to t - 1
        level = int(t[0]) - 1
        x = put_back_known(x, level)
        if resample > 1 and 0 <= level and level % jump == 0 and level + jump < K:
            for _ in range(resample - 1):
                for up in range(level + 1, level + jump + 1):       # back up: q(x_up | x_{up-1})
                    x = chain.q_step(x, np.full(B, up), rng=rng)
                for down in range(level + jump, level, -1):         # and down again
                    x = ddim_step(chain, guided, x, np.full(B, down), eta=eta, rng=rng,
                                  clip_denoised=clip_denoised, model_kwargs=kwargs)["sample"]
                    x = put_back_known(x, down - 1)
        return x

    return ddim_sample_loop(chain, guided, x0.shape, rng, eta=eta, model_kwargs=kwargs, clip_denoised=clip_denoised,
                            noise=noise, after_step=after_step, progress=progress, dtype=x0.dtype)


def ddim_invert(diffusion, model, x0, labels, steps=50, *, guidance=None, clip_denoised: bool = False,
                return_trajectory: bool = False, progress=None):
    """DDIM inversion: encode x0 deterministically into the noise DDIM would decode it from.

        x_{t+1} = sqrt(ab_{t+1}) x0_hat(x_t, t) + sqrt(1 - ab_{t+1}) eps_hat(x_t, t),  t = 0 .. K-2

    (``ddim.ddim_reverse_step``: Song et al. 2021 eq. 13 integrated upward; Dhariwal &
    Nichol 2021, app. F; Mokady et al. 2023, section 3.) The chain is the respaced one of
    ``steps`` steps that ``ddim_sample_loop(..., steps=steps)`` decodes on; x0 itself stands
    for the first level (the papers' x_1, with ab_1 = 1 - beta_1 ~ 1), as in improved-
    diffusion. Decode with

        ddim_sample_loop(diffusion, model, x0.shape, rng, steps=steps, noise=latent, model_kwargs={"y": y})

    With the same labels (and no guidance) that gives x0 back up to the discretisation error
    of the ODE (eps is evaluated one step behind); with other labels it is an edit that keeps
    the latent's layout. Guidance amplifies the error at every step, which is why Mokady et
    al. invert without it (default None).

    clip_denoised: clip x0_hat to [-1, 1] at every step, as the sampler does; pass the same
    to the decoding. On the cosine schedule the last kept step has ab ~ 2e-9, so
    x0_hat = (x - sqrt(1 - ab) eps_hat) / sqrt(ab) multiplies any error in eps_hat by ~2e4;
    unclipped, those x0_hat send the round trip off the data range. Measured on 20 MNIST test
    digits with examples/mnist.py's model (50 steps): round-trip error 0.19 per pixel (in
    [0, 1]) unclipped, 0.0037 clipped both ways (200 steps: 0.0012).

    x0: [B, *D] model space; labels: as the model takes them (None: unconditional).
    Returns the latent at the last kept step [B, *D], or (latent, trajectory [K, B, *D] =
    (x0, x_1, ..., latent)) if return_trajectory.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100))
    >>> zero_eps = lambda x_t, t: np.zeros_like(x_t)                 # eps = 0: data scaled by 1/sqrt(ab)
    >>> z = td.editing.ddim_invert(d, zero_eps, np.ones((1, 2)), None, steps=10)
    >>> x = td.ddim_sample_loop(d, zero_eps, (1, 2), np.random.default_rng(0), steps=10, noise=z)
    >>> bool(np.allclose(x, 1 / np.sqrt(d.alphas_cumprod[0])))     # back, but for x0 standing in for x_1
    True
    """
    x0 = _check_images(x0)
    kwargs = _labels_kwargs(labels, len(x0))
    chain = diffusion if steps is None else respace(diffusion, steps)
    guided = apply_guidance(model, guidance)
    x, trajectory, K = x0, [x0], chain.num_timesteps
    for t in range(K - 1):                                          # level t -> t + 1
        x = ddim_reverse_step(chain, guided, x, np.full(len(x0), t), clip_denoised=clip_denoised,
                              model_kwargs=kwargs)["sample"]
        if return_trajectory:
            trajectory.append(x)
        if progress is not None:
            progress(t + 1, K - 1)
    check_sample(x, "ddim_invert")                  # each step checked the model's output; this, the result
    return (x, np.stack(trajectory)) if return_trajectory else x
