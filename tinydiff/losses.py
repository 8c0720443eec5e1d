"""The training losses: DDPM's eps-loss written out, and the general objectives beside it.

DDPM Algorithm 1 (Ho et al. 2020), one training step:

    x_0 ~ q(x_0)                                           a batch of data
    t ~ Uniform({1, ..., T})                               one timestep per example (code: 0..T-1)
    eps ~ N(0, I)
    gradient step on || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2

``DiffusionLoss`` (tinydiff/objectives.py, what a Trainer calls) draws t and eps (and drops
labels for classifier-free guidance); ``eps_loss`` below is the last line, written out. The other
objectives -- an x_0, v or posterior-mean target, the variational bound ("kl") and
L_simple + lambda L_vlb ("hybrid") -- are ``training_losses``, which hands the eps-model with
the plain MSE to ``eps_loss``, so both read the same code. The bound's terms themselves
(vb_terms_bpd) are in tinydiff/bound.py.

Plain functions of the diffusion ``d``: GaussianDiffusion.training_losses checks the data at
the door and calls ``training_losses`` here.
"""
from __future__ import annotations

import numpy as np

from .bound import vb_terms_bpd
from .engine import Tensor
from .forward import q_posterior_mean_variance, q_sample, velocity
from .gaussian import mean_flat


def eps_loss(d, model, x0, t, eps, model_kwargs=None):
    """L_simple for a model that predicts the noise: DDPM Algorithm 1 line 5 and eq. 14.

        x_t    = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps          (DDPM eq. 4)
        mse    = || eps - eps_theta(x_t, t) ||^2 / D                         (mean over the D values)
        loss   = mse,  or  mse * min(SNR_t, gamma) / SNR_t  with mse_weighting="min_snr"

    (Min-SNR-gamma, Hang et al. 2023: ``mse_weight``, below.) x0, eps: [B, *D]; t: int [B], drawn
    by the caller (Algorithm 1 lines 3-4: DiffusionLoss draws them, then calls this). No argument
    checks here (GaussianDiffusion.training_losses checks at its door; the Trainer checks its data
    and every loss). Returns {"mse": [B], "loss": [B]}, Tensors when the model returns one, so
    terms["loss"].mean().backward() trains it.

    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(100))
    >>> x0, eps, t = np.ones((2, 2)), np.ones((2, 2)), np.array([3, 70])
    >>> perfect = lambda x_t, t: np.ones_like(x_t)                    # predicts the very eps that was drawn
    >>> td.eps_loss(d, perfect, x0, t, eps)["loss"].tolist()
    [0.0, 0.0]
    """
    x_t = d.coef(d.sqrt_alphas_cumprod, t, x0) * x0 + d.coef(d.sqrt_one_minus_alphas_cumprod, t, x0) * eps
    eps_pred = d.run_model(model, x_t, t, model_kwargs)              # eps_theta(x_t, t): [B, *D]
    mse = mean_flat((eps - eps_pred) ** 2)                            # [B]
    loss = mse if d.mse_weighting == "none" else mse * mse_weight(d, t)
    return {"mse": mse, "loss": loss}


def mse_weight(d, t):
    """Min-SNR-gamma weights of the MSE for timesteps t [B] (Hang et al. 2023, eq. 9 and sec. 3.4),
    with SNR_t = alpha_bar_t / (1 - alpha_bar_t):

        eps-model  min(SNR_t, gamma) / SNR_t        (1 wherever SNR_t <= gamma, the noisy half)
        x0-model   min(SNR_t, gamma)
        v-model    min(SNR_t, gamma) / (SNR_t + 1)

    It stops the nearly clean timesteps, where eps is hardest to predict and matters least
    for samples, from dominating. Returns float64 [B].

    >>> d = td.GaussianDiffusion(td.linear_beta_schedule(1000), mse_weighting="min_snr")
    >>> td.losses.mse_weight(d, np.array([0, 999])).round(4).tolist()     # gamma / SNR near the data; 1 at the noise end
    [0.0005, 1.0]
    """
    snr = d.snr[np.asarray(t)]
    clipped = np.minimum(snr, d.snr_gamma)
    if d.model_mean_type == "eps":
        return clipped / snr
    if d.model_mean_type == "v":
        return clipped / (snr + 1.0)
    return clipped


def training_losses(d, model, x0, t, noise, model_kwargs=None):
    """Per-example training losses for x0 [B, *D] at timesteps t [B] with noise eps [B, *D].

    An eps-model trained on the MSE is ``eps_loss``. Otherwise x_t = q_sample(x0, t, eps), the
    model runs once, and the terms are ([B] each; Tensors when the model output is one):
      "mse"  L_simple (DDPM eq. 14): mean over dimensions of (target - prediction)^2, where the
             target is what model_mean_type names: eps, x_0, v (Salimans & Ho 2022) or the
             posterior mean mu-tilde (DDPM eq. 7); weighted by ``mse_weight`` if asked;
      "vb"   the bound term at t in bits/dim (bound.vb_terms_bpd): the paper's L_t, the decoder
             at t = 0. This is the raw term; improved-diffusion's terms["vb"] already carries
             its factor T/1000 (so the two differ by that factor);
      "loss" what to minimise:
        mse    -> mse
        kl     -> vb  (so T * E_t[loss] + L_T is the bound on -log p(x_0) in bits/dim)
        hybrid -> mse + lambda * T * vb, lambda = hybrid_vb_weight (0.001),
                  L_hybrid = L_simple + lambda L_vlb of Nichol & Dhariwal sec. 3.1. L_vlb is a
                  sum of T terms; with t uniform, T * vb is its unbiased one-sample estimate,
                  hence the factor T. Inside vb the mean is stop-gradiented (.detach()), so
                  vb trains only the variance and L_simple alone trains the mean.

    >>> d = td.make_diffusion("hybrid", td.linear_beta_schedule(100))
    >>> model = td.models.ToyMLP(heads=2, hidden=16, rng=np.random.default_rng(0))
    >>> x0, eps = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    >>> sorted(td.losses.training_losses(d, model, x0, np.array([0, 10, 50, 99]), eps))
    ['loss', 'mse', 'vb']
    """
    if d.model_mean_type == "eps" and d.loss_type == "mse":
        return eps_loss(d, model, x0, t, noise, model_kwargs)            # DDPM Algorithm 1, as written
    x_t = q_sample(d, x0, t, noise)
    out = d.run_model(model, x_t, t, model_kwargs)
    if d.loss_type == "kl":
        vb = vb_terms_bpd(d, out, x0, x_t, t)["output"]
        return {"vb": vb, "loss": vb}

    C = x_t.shape[1]
    prediction = out[:, :C] if d.learned_variance else out
    if d.model_mean_type == "eps":
        target = noise
    elif d.model_mean_type == "x0":
        target = x0
    elif d.model_mean_type == "v":
        target = velocity(d, x0, t, noise)
    else:                                                   # "mean": the posterior mean mu-tilde_t
        target = q_posterior_mean_variance(d, x0, x_t, t)[0]
    terms = {"mse": mean_flat((target - prediction) ** 2)}
    terms["loss"] = terms["mse"] if d.mse_weighting == "none" else terms["mse"] * mse_weight(d, t)
    if d.loss_type == "hybrid":
        frozen = prediction.detach() if isinstance(prediction, Tensor) else prediction
        if d.learned_variance:                              # stop-gradient on the mean part only
            frozen = np.concatenate([frozen, out[:, C:]], axis=1)
        terms["vb"] = vb_terms_bpd(d, frozen, x0, x_t, t)["output"]
        terms["loss"] = terms["mse"] + d.hybrid_vb_weight * d.num_timesteps * terms["vb"]
    return terms
