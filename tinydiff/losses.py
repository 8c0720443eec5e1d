"""Training losses and the variational bound of a GaussianDiffusion, in bits per dimension.

Each function takes the diffusion first and is also a GaussianDiffusion method:
diffusion.training_losses(model, x0, t) == losses.training_losses(diffusion, model, x0, t).

The bound (DDPM eq. 5, the paper's 1-based steps):

    -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0,
    L_T     = KL( q(x_T | x_0) || N(0, I) )                     prior term, no parameters
    L_{t-1} = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) )     Gaussian vs Gaussian, closed form
    L_0     = -log p(x_0 | x_1)                                   decoder

With 0-based code index t (schedules.py) the term at index t is the paper's L_t: index 0
is the decoder L_0, and index t >= 1 is the KL of the model's step from code x_t to x_{t-1}
(paper: from x_{t+1} to x_t). Units: "bpd" is bits per dimension, nats / log 2 averaged
over the D data dimensions of one example; multiply by D (the number of values in one
example) for bits per example.
"""
from __future__ import annotations

import math

import numpy as np

from .engine import Tensor
from .gaussian import (discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl,
                       standard_normal_noise)

LOG2 = math.log(2.0)


def mean_flat(x):
    """Mean over every axis but the batch axis: [B, *D] -> [B]. Works on Tensors."""
    return x.reshape(x.shape[0], -1).mean(axis=1)


def _array(x):
    return x.data if isinstance(x, Tensor) else x


def decoder_nll_nats(diffusion, x0, mean, log_variance):
    """L_0 = -log p(x_0 | x_1) per value, in nats, [B, *D]: a Gaussian density for
    decoder_nll="continuous", or the 8-bit bin probabilities (DDPM eq. 13) for "discretized"."""
    log_scales = 0.5 * log_variance                       # log sigma
    if diffusion.decoder_nll == "discretized":
        return -discretized_gaussian_log_likelihood(x0, mean, log_scales)
    return -gaussian_log_likelihood(x0, mean, log_scales)


def vb_terms_bpd(diffusion, model_output, x0, x_t, t, clip_denoised=False):
    """The bound's term for each example at its own timestep t, in bits per dimension.

    output[b] = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) (DDPM eq. 5) where t[b] > 0, and the
    decoder NLL -log p(x_0|x_1) where t[b] = 0; both are computed for the whole batch and
    np.where picks one per example (no loop over the batch).
    model_output: [B, C_out, *rest] as returned by the model. x0, x_t: [B, *D]; t: int [B].
    Returns {"output": [B] bits/dim, "pred_x0": [B, *D]} (Tensors if model_output is one).
    """
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
    p = diffusion.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / LOG2
    nll = mean_flat(decoder_nll_nats(diffusion, x0, p["mean"], p["log_variance"])) / LOG2
    return {"output": np.where(np.asarray(t) == 0, nll, kl), "pred_x0": p["pred_x0"]}


def training_losses(diffusion, model, x0, t, noise=None, rng=None, model_kwargs=None):
    """Per-example training losses for x0 [B, *D] at timesteps t [B] (DDPM Algorithm 1).

    x_t = q_sample(x0, t, noise); out = model(x_t, t). Returns a dict of [B] arrays, Tensors
    when the model output is a Tensor (so terms["loss"].mean().backward() trains it):
      "mse"  L_simple (DDPM eq. 14): mean over dimensions of (target - prediction)^2, where
             the target is eps, x_0, v or the posterior mean mu-tilde, per model_mean_type;
      "vb"   the bound term at t in bits/dim (vb_terms_bpd): the paper's L_t, the decoder at t = 0;
      "loss" what to minimise:
        mse    -> mse
        kl     -> vb  (so T * E_t[loss] + L_T is the bound on -log p(x_0) in bits/dim)
        hybrid -> mse + lambda * T * vb, lambda = diffusion.hybrid_vb_weight (0.001),
                  L_hybrid = L_simple + lambda L_vlb of Nichol & Dhariwal sec. 3.1. L_vlb is a
                  sum of T terms; with t uniform, T * vb is its unbiased one-sample estimate,
                  hence the factor T. improved-diffusion's vb * T/1000 is the same number
                  (lambda = 1/1000). Inside vb the mean is stop-gradiented (.detach()), so
                  vb trains only the variance and L_simple alone trains the mean.
    """
    noise = standard_normal_noise(x0.shape, x0.dtype, noise, rng)
    x_t = diffusion.q_sample(x0, t, noise=noise)
    out = model(x_t, t, **(model_kwargs or {}))
    terms = {}
    if diffusion.loss_type == "kl":
        terms["vb"] = vb_terms_bpd(diffusion, out, x0, x_t, t)["output"]
        terms["loss"] = terms["vb"]
        return terms

    C = x_t.shape[1]
    learned = diffusion.model_var_type.startswith("learned")
    prediction = out[:, :C] if learned else out
    target = {"eps": lambda: noise,
              "x0": lambda: x0,
              "v": lambda: diffusion.velocity(x0, t, noise),
              "mean": lambda: diffusion.q_posterior_mean_variance(x0, x_t, t)[0]}[diffusion.model_mean_type]()
    terms["mse"] = mean_flat((target - prediction) ** 2)
    terms["loss"] = terms["mse"]
    if diffusion.loss_type == "hybrid":
        frozen = prediction.detach() if isinstance(prediction, Tensor) else prediction
        if learned:                                      # stop-gradient on the mean part only
            frozen = np.concatenate([frozen, out[:, C:]], axis=1)
        terms["vb"] = vb_terms_bpd(diffusion, frozen, x0, x_t, t)["output"]
        terms["loss"] = terms["mse"] + diffusion.hybrid_vb_weight * diffusion.num_timesteps * terms["vb"]
    return terms


def prior_bpd(diffusion, x0):
    """L_T = KL( q(x_T | x_0) || N(0, I) ) in bits/dim, [B], for x0 [B, *D] (DDPM eq. 5).

    No parameters: it measures how close the last step is to pure noise. Per value it is
    1/2 (alpha_bar x_0^2 - alpha_bar - log(1 - alpha_bar)) nats with alpha_bar = alpha_bar_{T-1},
    ~0 for a schedule that ends near alpha_bar = 0.
    """
    t = np.full(x0.shape[0], diffusion.num_timesteps - 1, dtype=np.int64)
    mean, _, log_variance = diffusion.q_mean_variance(x0, t)
    zero = np.zeros((), dtype=x0.dtype)                   # N(0, I); np.exp(0.0) would be float64
    return mean_flat(normal_kl(mean, log_variance, zero, zero)) / LOG2


def calc_bpd_loop(diffusion, model, x0, rng=None, progress=None, clip_denoised=False, model_kwargs=None):
    """The whole variational bound on -log p(x_0), per example and per term.

    For each t (a loop over the chain, vectorised over the batch) draw x_t ~ q(x_t|x_0) with
    a fresh eps from rng, run the model, and record the bound term at t. x0: [B, *D].
    progress(i, T) is called after each of the T steps. Returns (arrays in x0's dtype):
      "vb"          [B, T] bits/dim: vb[:, t] = the paper's L_t (vb[:, 0] = L_0, the decoder;
                    t >= 1: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in code indices)
      "prior_bpd"   [B]    bits/dim: L_T
      "total_bpd"   [B]    bits/dim: L_T + sum_t vb[:, t], the bound on -log p(x_0) / D / log 2
      "total_bits"  [B]    bits per example: total_bpd * D (for 2-D points: bits per point)
      "xstart_mse"  [B, T] mean over dims of (pred_x0 - x_0)^2
      "mse"         [B, T] mean over dims of (pred_eps - eps)^2
    A Tensor model output is read through .data; wrap the call in tinydiff.no_grad() to
    skip recording graphs.
    """
    B, T = x0.shape[0], diffusion.num_timesteps
    vb, xstart_mse, mse = (np.zeros((B, T), dtype=x0.dtype) for _ in range(3))
    for i in reversed(range(T)):                          # order does not matter: the bound is a sum
        t = np.full(B, i, dtype=np.int64)
        noise = standard_normal_noise(x0.shape, x0.dtype, None, rng)
        x_t = diffusion.q_sample(x0, t, noise=noise)
        out = _array(model(x_t, t, **(model_kwargs or {})))
        terms = vb_terms_bpd(diffusion, out, x0, x_t, t, clip_denoised=clip_denoised)
        vb[:, i] = terms["output"]
        xstart_mse[:, i] = mean_flat((terms["pred_x0"] - x0) ** 2)
        mse[:, i] = mean_flat((diffusion.predict_eps_from_x0(x_t, t, terms["pred_x0"]) - noise) ** 2)
        if progress is not None:
            progress(T - i, T)
    prior = prior_bpd(diffusion, x0)
    total_bpd = vb.sum(axis=1) + prior
    dims = int(np.prod(x0.shape[1:]))
    return {"total_bpd": total_bpd, "prior_bpd": prior, "vb": vb, "xstart_mse": xstart_mse,
            "mse": mse, "total_bits": total_bpd * dims}
