"""Exact log-likelihoods through the probability-flow ODE (instantaneous change of variables).

If x(t) follows dx/dt = f~(x, t), its density changes along the path as

    d log p_t(x(t)) / dt = -div f~(x(t), t)            (Chen et al. 2018, Theorem 1)

so integrating the probability-flow ODE (tinydiff/sde.py) from the data x(t_min) = x_0 up to
t = 1, together with the running integral of the divergence, gives (Song et al. 2021, eq. 39)

    log p_{t_min}(x_0) = log N(x(1); 0, I) + int_{t_min}^1 div f~(x(t), t) dt.

The divergence div f~ = sum_i d f~_i / d x_i is the trace of the Jacobian:

    exactly      one backward pass per dimension (e_i^T J e_i), fine for the 2-D toy;
    Hutchinson   E_v[v^T J v] = tr J for Rademacher probes v (v_i = +-1; Hutchinson 1989;
                 FFJORD, Grathwohl et al. 2019): one vector-Jacobian product a call. The probe
                 is drawn once per example and kept along the ODE, so the estimate of log p is
                 unbiased and the ODE stays smooth for the adaptive solver.

For 8-bit images the density of continuous data needs a convention: uniform dequantization
(Theis et al. 2016; Song et al. 2021, App. D.2): z = (x + u) / 128 - 1 with x in 0..255 and
u ~ U[0, 1)^D, and then -log2 P(x) <= -E_u log2 p(z) + D log2 128, i.e. the bound in bits/dim
is -log2 p(z) / D + 7 (``dequantized_bits_per_dim``).

    rademacher                 probes v in {-1, +1}^shape
    divergence_exact           f(x) and tr(df/dx) with D backward passes
    divergence_hutchinson      f(x) and v^T (df/dx) v with one backward pass
    ode_log_likelihood         log p_{t_min}(x_0) [B] in nats, the ODE's end point and the model calls
    dequantized_bits_per_dim   the same for 8-bit images, in bits/dim, uniform dequantization
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from . import ode
from .engine import Tensor, unwrap
from .sde import VPSDE, ode_drift, time_grid


def rademacher(shape, rng, dtype=np.float32) -> np.ndarray:
    """Probes v with independent entries +1 or -1 (probability 1/2 each): E[v v^T] = I.

    >>> td.likelihood.rademacher((2, 3), np.random.default_rng(0)).tolist()
    [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
    """
    return (2.0 * rng.integers(0, 2, size=shape) - 1.0).astype(dtype)


@contextlib.contextmanager
def frozen(model):
    """Parameters stop asking for gradients inside the block: a backward pass then computes only
    the gradient with respect to the input (what a divergence needs), not every weight's.

    >>> model = td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0))
    >>> with td.likelihood.frozen(model):
    ...     inside = any(p.requires_grad for p in model.parameters())
    >>> inside, all(p.requires_grad for p in model.parameters())
    (False, True)
    """
    params = []
    for m in (model, getattr(model, "model", None)):                     # a guidance wrapper's inner model
        params += list(m.parameters()) if hasattr(m, "parameters") else []
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad = False
    try:
        yield
    finally:
        for p, s in zip(params, saved):
            p.requires_grad = s


def divergence_exact(fn, x: np.ndarray):
    """(f(x), div f(x)) with div f = sum_i d f_i / d x_i, exactly: D backward passes through one
    forward pass, pass i seeded with e_i (the i-th column of the Jacobian's diagonal).

    fn: Tensor [B, D] -> Tensor [B, D] (each row depending on its own row). x: ndarray [B, D].
    Returns ndarrays [B, D] and [B].

    >>> f, div = td.likelihood.divergence_exact(lambda x: x * x, np.array([[1.0, 2.0]]))   # div = 2 x1 + 2 x2
    >>> div.tolist()
    [6.0]
    """
    x_t = Tensor(x, requires_grad=True)
    out = fn(x_t)
    div = np.zeros(len(x), dtype=np.float64)
    for i in range(x.shape[1]):
        seed = np.zeros(out.shape, dtype=out.dtype)
        seed[:, i] = 1.0
        x_t.grad = None
        out.backward(seed)
        div += x_t.grad[:, i]
    return out.data, div


def divergence_hutchinson(fn, x: np.ndarray, probe: np.ndarray):
    """(f(x), v^T (df/dx) v): Hutchinson's unbiased estimate of div f, one backward pass.

    The backward pass seeded with v gives the vector-Jacobian product v^T J; its dot product with
    v is v^T J v, whose mean over Rademacher v is tr J, with variance sum_{i<j} (J_ij + J_ji)^2
    (the diagonal adds nothing: v_i^2 = 1; the products v_i v_j of distinct pairs are uncorrelated). fn as in divergence_exact; probe: [B, D].

    >>> f, est = td.likelihood.divergence_hutchinson(lambda x: x * 3.0, np.ones((1, 2)), np.array([[1.0, -1.0]]))
    >>> est.tolist()                                              # a diagonal Jacobian: exact for any probe
    [6.0]
    """
    x_t = Tensor(x, requires_grad=True)
    out = fn(x_t)
    out.backward(probe.astype(out.dtype))
    return out.data, np.sum(x_t.grad.astype(np.float64) * probe, axis=1)


def ode_log_likelihood(sde: VPSDE, score, x0, *, divergence="exact", rng=None, probe=None, score_divergence=None,
                       method="rk45", rtol=1e-5, atol=1e-5, steps=100, model=None, progress=None):
    """log p_{t_min}(x_0) by the probability-flow ODE and the change of variables (Song et al. eq. 39).

    score: score(x, t) (sde.score_fn of a model; differentiable in x unless score_divergence is
    given). x0: [B, *D] data. divergence: "exact" (D backward passes a call) or "hutchinson"
    (probe [B, prod D], default Rademacher from rng, fixed along the ODE). score_divergence:
    a closed-form div score(x, t) -> [B] (e.g. the mixture oracle's), used instead of autograd:
    div f~ = -1/2 beta (D + div score). method: "rk45" (rtol, atol) or "euler"/"heun"/"rk4"
    on ``steps`` steps (sde.time_grid: on the trained steps, one network call each). model: the network behind ``score``, whose weights are frozen so
    backward passes compute only input gradients.
    Returns {"log_prob" [B] nats, "prior_log_prob" [B], "delta" [B] (the divergence integral),
    "z" [B, *D] (x at t = 1), "nfe" (ODE function calls, each one model call), "steps"}.

    >>> sde = td.sde.VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(1000)))
    >>> x0 = np.zeros((1, 2))                          # N(0, I) data keeps N(0, I): score -x, log p = -log 2 pi
    >>> out = td.likelihood.ode_log_likelihood(sde, lambda x, t: -x, x0)
    >>> round(float(out["log_prob"][0]), 6), round(-float(np.log(2 * np.pi)), 6)
    (-1.837877, -1.837877)
    """
    x0 = np.asarray(x0)
    shape, dtype = x0.shape, (x0.dtype if x0.dtype.kind == "f" else np.float32)
    B, D = shape[0], int(np.prod(shape[1:]))
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence: expected 'exact' or 'hutchinson', got {divergence!r}")
    if divergence == "hutchinson" and score_divergence is None:
        if probe is None:
            if rng is None:
                raise ValueError("divergence='hutchinson' needs rng (or a probe) to draw its Rademacher probes")
            probe = rademacher((B, D), rng, dtype)
        probe = np.asarray(probe).reshape(B, D)

    def drift_flat(x_flat, t):                          # Tensor or ndarray [B, D] -> [B, D]
        return ode_drift(sde, score, x_flat.reshape(shape), t).reshape(B, D)

    def f(t, y):                                        # the augmented state [x (D numbers), delta]
        x = y[:, :D].astype(dtype)
        if score_divergence is not None:
            drift = unwrap(drift_flat(x, t))
            div = -0.5 * float(sde.beta(t)) * (D + score_divergence(x.reshape(shape), t))
        elif divergence == "exact":
            drift, div = divergence_exact(lambda v: drift_flat(v, t), x)
        else:
            drift, div = divergence_hutchinson(lambda v: drift_flat(v, t), x, probe)
        return np.concatenate([drift.astype(np.float64), np.asarray(div, np.float64)[:, None]], axis=1)

    y0 = np.concatenate([x0.reshape(B, D).astype(np.float64), np.zeros((B, 1))], axis=1)
    with frozen(model) if model is not None else contextlib.nullcontext():
        if method == "rk45":
            sol = ode.rk45(f, y0, sde.t_min, sde.t_max, rtol=rtol, atol=atol, progress=progress)
        else:
            sol = ode.solve_fixed(f, y0, time_grid(sde, steps, ascending=True), method, progress=progress)
    z, delta = sol["y"][:, :D], sol["y"][:, D]
    prior = sde.prior_log_prob(z)
    return {"log_prob": prior + delta, "prior_log_prob": prior, "delta": delta, "z": z.reshape(shape),
            "nfe": sol["nfe"], "steps": len(sol["times"]) - 1}


def dequantized_bits_per_dim(sde: VPSDE, score, images, rng, **options):
    """-log2 p of 8-bit images in bits/dim through the ODE, uniform dequantization:

        z = (x + u) / 128 - 1,  u ~ U[0, 1)^D,   bits/dim = -log p(z) / (D ln 2) + log2 128

    (the density of z is 128^D times that of x + u, whose integral over the pixel's bin is
    P(x); Jensen's inequality makes the mean over u a bound on -log2 P(x): Theis et al.
    2016, Song et al. 2021 App. D.2). images: uint8 [B, C, H, W] (or ints 0..255); options go
    to ode_log_likelihood (rng draws u first, then the probes). Returns (bits/dim [B], result).

    >>> sde = td.sde.VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(1000)))
    >>> bpd, _ = td.likelihood.dequantized_bits_per_dim(sde, lambda x, t: -x, np.zeros((1, 4), np.uint8),
    ...                                                  np.random.default_rng(0), divergence="hutchinson")
    >>> bpd.shape                                      # N(0, I) as the model of 4 pixels
    (1,)
    """
    x = np.asarray(images)
    if x.dtype.kind not in "iu" or x.min() < 0 or x.max() > 255:
        raise ValueError(f"images: expected 8-bit integers 0..255, got dtype {x.dtype} with range "
                         f"{x.min()}..{x.max()}")
    z = ((x + rng.random(x.shape)) / 128.0 - 1.0).astype(np.float32)
    out = ode_log_likelihood(sde, score, z, rng=rng, **options)
    D = int(np.prod(x.shape[1:]))
    return -out["log_prob"] / (D * math.log(2)) + math.log2(128), out


__all__ = ["rademacher", "frozen", "divergence_exact", "divergence_hutchinson", "ode_log_likelihood",
           "dequantized_bits_per_dim"]
