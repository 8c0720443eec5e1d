"""The variational bound on -log p(x_0): its terms, the prior term and the loop over the chain.

The bound (DDPM eq. 5, the paper's 1-based steps):

  -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0,
  L_T     = KL( q(x_T | x_0) || N(0, I) )                    prior term, no parameters
  L_{t-1} = KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) )    Gaussian vs Gaussian, closed form
  L_0     = -log p(x_0 | x_1)                                  decoder

With 0-based code index t the term at index t is the paper's L_t: index 0 is the decoder
L_0, and index t >= 1 the KL of the model's step from code x_t to x_{t-1}. "bpd" is bits
per dimension: nats / log 2, averaged over the D values of one example.

Plain functions of the diffusion ``d``; the public methods of GaussianDiffusion
(vb_terms_bpd, prior_bpd, calc_bpd_loop) check their arguments and call these.
"""
from __future__ import annotations

import math

import numpy as np

from .engine import unwrap
from .forward import predict_eps_from_x0, q_mean_variance, q_posterior_mean_variance, q_sample
from .gaussian import decoder_nll, mean_flat, normal_kl, standard_normal_noise
from .reverse import p_mean_variance_from_output

LOG2 = math.log(2.0)


def vb_terms_bpd(d, model_output, x0, x_t, t, clip_denoised=False):
    """The bound's term for each example at its own timestep t, in bits per dimension.

    output[b] = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) (DDPM eq. 5) where t[b] > 0, and the
    decoder NLL -log p(x_0|x_1) where t[b] = 0; both are computed for the whole batch and
    np.where picks one per example (no loop over the batch).
    model_output: [B, C_out, *rest] as returned by the model. x0, x_t: [B, *D]; t: int [B].
    Returns {"output": [B] bits/dim, "pred_x0": [B, *D]} (Tensors if model_output is one).

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(100), loss_type="kl")
    >>> x0, noise, t = np.zeros((2, 2)), np.ones((2, 2)), np.array([0, 50])
    >>> x_t = d.q_sample(x0, t, noise=noise)
    >>> exact = d.predict_eps_from_x0(x_t, t, x0)                   # a perfect eps prediction
    >>> round(float(td.bound.vb_terms_bpd(d, exact, x0, x_t, t)["output"][1]), 9)   # KL(q || p) = 0 when p is exact
    0.0
    """
    true_mean, _, true_log_variance = q_posterior_mean_variance(d, x0, x_t, t)
    p = p_mean_variance_from_output(d, model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / LOG2
    nll = mean_flat(decoder_nll(x0, p["mean"], p["log_variance"], d.decoder_kind(x0))) / LOG2
    return {"output": np.where(np.asarray(t) == 0, nll, kl), "pred_x0": p["pred_x0"]}


def prior_bpd(d, x0):
    """L_T = KL( q(x_T | x_0) || N(0, I) ) in bits/dim, [B], for x0 [B, *D] (DDPM eq. 5).

    No parameters: it measures how close the last step is to pure noise. Per value it is
    1/2 (alpha_bar x_0^2 - alpha_bar - log(1 - alpha_bar)) nats with alpha_bar = alpha_bar_{T-1},
    ~0 for a schedule that ends near alpha_bar = 0.

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000))
    >>> float(td.bound.prior_bpd(d, np.zeros((1, 2)))[0]) < 1e-4      # q(x_T | x_0) is almost N(0, I)
    True
    """
    t = np.full(x0.shape[0], d.num_timesteps - 1, dtype=np.int64)
    mean, _, log_variance = q_mean_variance(d, x0, t)
    zero = np.zeros((), dtype=x0.dtype)               # N(0, I); np.exp(0.0) would be float64
    return mean_flat(normal_kl(mean, log_variance, zero, zero)) / LOG2


def calc_bpd_loop(d, model, x0, rng=None, progress=None, clip_denoised=None, model_kwargs=None,
                  num_timesteps=None):
    """The whole variational bound on -log p(x_0), per example and per term.

    For each t (a loop over the chain, vectorised over the batch) draw x_t ~ q(x_t|x_0) with
    a fresh eps from rng, run the model, and record the bound term at t. x0: [B, *D].

    Which number this is depends on the decoder (``d.decoder_kind(x0)``):
      "discretized" (the default for 8-bit images in [-1, 1]): a bound on -log2 P(x_0), the
          probability of the 256-level pixel values, >= 0; with clip_denoised=True (its
          default here) this is the convention of published bits/dim (DDPM Table 2,
          improved-diffusion's calc_bpd_loop), so the numbers can be compared;
      "continuous" (real-valued data such as 2-D points): a bound on -log2 p(x_0) of a
          density, which can be negative (a narrow density exceeds 1), and clip_denoised
          defaults to False.
    progress(i, K) is called after each of the K model calls.

    num_timesteps=K < T estimates the sum instead of computing all T terms (a T/K-fold
    saving for images): the decoder term t = 0 exactly, and sum_{t=1}^{T-1} L_t by
    stratified sampling: the steps 1..T-1 are cut into K-1 strata of sizes n_k and each
    example draws one t_k uniformly in each, so sum_k n_k L_{t_k} is an unbiased estimate
    of the sum (with a small variance, since L_t varies slowly with t). Returns (arrays in
    x0's dtype):
      "vb"          [B, K] bits/dim: the terms computed; vb[:, 0] = L_0, the decoder, and for
                    the exact loop (K = T) vb[:, t] = the paper's L_t (t >= 1: KL(q(x_{t-1}|x_t,x_0)
                    || p(x_{t-1}|x_t)) in code indices)
      "t"           [B, K] the timestep of each column; "weights" [K] its stratum size
      "prior_bpd"   [B]    bits/dim: L_T
      "total_bpd"   [B]    bits/dim: L_T + sum_k weights_k vb[:, k], the bound on -log p(x_0) / D / log 2
      "total_bits"  [B]    bits per example: total_bpd * D (for 2-D points: bits per point)
      "x0_mse"      [B, K] mean over dims of (pred_x0 - x_0)^2
      "mse"         [B, K] mean over dims of (pred_eps - eps)^2
    The model is called through d.run_model_checked (NaN or inf is refused). A Tensor model output is
    read through .data; wrap the call in tinydiff.no_grad() to skip recording graphs.

    >>> betas = td.linear_beta_schedule(50, 1e-3, 0.2)
    >>> d = td.GaussianDiffusion(betas)
    >>> x0 = np.full((3, 2), 0.5)                                    # real-valued data: a density bound
    >>> exact = lambda x_t, t: d.predict_eps_from_x0(x_t, t, x0)     # knows the answer
    >>> out = td.bound.calc_bpd_loop(d, exact, x0, rng=np.random.default_rng(0))
    >>> out["vb"].shape, bool(np.allclose(out["vb"][:, 1:], 0))      # every KL term vanishes for a perfect model
    ((3, 50), True)
    """
    B, T = x0.shape[0], d.num_timesteps
    if clip_denoised is None:
        clip_denoised = d.decoder_kind(x0) == "discretized"
    if num_timesteps is None or num_timesteps >= T:
        ts = np.tile(np.arange(T), (B, 1))                             # [B, T]: every term
        weights = np.ones(T)
    else:
        K = int(num_timesteps)
        if K < 2:
            raise ValueError(f"num_timesteps: expected at least 2 (the decoder and one stratum), got {num_timesteps!r}")
        edges = 1 + np.floor(np.arange(K) * (T - 1) / (K - 1)).astype(np.int64)   # strata [edges_k, edges_k+1)
        weights = np.concatenate([[1], np.diff(edges)])
        u = rng.random((B, K - 1))
        ts = np.concatenate([np.zeros((B, 1), np.int64),
                             edges[:-1] + np.floor(u * weights[1:]).astype(np.int64)], axis=1)
    K = ts.shape[1]
    vb, x0_mse, mse = (np.zeros((B, K), dtype=x0.dtype) for _ in range(3))
    for i in reversed(range(K)):                      # order does not matter: the bound is a sum
        t = ts[:, i]
        noise = standard_normal_noise(x0.shape, x0.dtype, None, rng)
        x_t = q_sample(d, x0, t, noise)
        out = unwrap(d.run_model_checked(model, x_t, t, model_kwargs))
        terms = vb_terms_bpd(d, out, x0, x_t, t, clip_denoised=clip_denoised)
        vb[:, i] = terms["output"]
        x0_mse[:, i] = mean_flat((terms["pred_x0"] - x0) ** 2)
        mse[:, i] = mean_flat((predict_eps_from_x0(d, x_t, t, terms["pred_x0"]) - noise) ** 2)
        if progress is not None:
            progress(K - i, K)
    prior = prior_bpd(d, x0)
    total_bpd = (vb * weights.astype(x0.dtype)).sum(axis=1) + prior
    dims = int(np.prod(x0.shape[1:]))
    return {"total_bpd": total_bpd, "prior_bpd": prior, "vb": vb, "t": ts, "weights": weights,
            "x0_mse": x0_mse, "mse": mse, "total_bits": total_bpd * dims}
