"""The diffusion in plain PyTorch, built from an exported config (``config["diffusion"]``).

What a PyTorch training loop or sampler needs besides the network: the schedule's tables,
q(x_t | x_0) and the per-timestep weight of the loss, with tinydiff's names and conventions
(tinydiff/diffusion.py; 0-based timesteps, tables in float64, cast to the data's dtype where
they meet it). Nothing here imports tinydiff.

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps                   DDPM eq. 4
    loss = || eps - eps_theta(x_t, t) ||^2 * w_t,  w_t = min(SNR_t, gamma) / SNR_t   Hang et al. 2023
"""
from __future__ import annotations

import torch


def diffusion_tables(config: dict) -> dict:
    """{name: float64 tensor [T]} from the config's betas, named as GaussianDiffusion's buffers:
    betas, alphas_cumprod (alpha_bar_t), alphas_cumprod_prev, sqrt_alphas_cumprod,
    sqrt_one_minus_alphas_cumprod, snr, posterior_variance (beta-tilde_t, DDPM eq. 7),
    posterior_log_variance_clipped, posterior_mean_coef1/2; and timestep_map (int64 [T]: the
    model's timestep at each step of a respaced chain).

    >>> from tinydiff.export.torch_diffusion import diffusion_tables
    >>> d = td.make_diffusion("eps", td.cosine_beta_schedule(100))
    >>> tables = diffusion_tables(td.export.diffusion_config(d))
    >>> bool(np.allclose(tables["alphas_cumprod"].numpy(), d.alphas_cumprod, rtol=1e-12, atol=0))
    True
    """
    b = torch.tensor(config["betas"], dtype=torch.float64)                  # [T]
    ab = torch.cumprod(1.0 - b, dim=0)                                      # alpha_bar_t
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])      # 1 for the data
    posterior_variance = b * (1.0 - ab_prev) / (1.0 - ab)
    first = posterior_variance[1:2] if len(b) > 1 else b[:1]                 # t = 0: beta-tilde_1, as tinydiff
    return {"betas": b, "alphas_cumprod": ab, "alphas_cumprod_prev": ab_prev,
            "sqrt_alphas_cumprod": ab.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - ab).sqrt(),
            "snr": ab / (1.0 - ab), "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.log(torch.cat([first, posterior_variance[1:]])),
            "posterior_mean_coef1": b * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * (1.0 - b).sqrt() / (1.0 - ab),
            "timestep_map": torch.tensor(config["timestep_map"], dtype=torch.int64)}


def extract(table, t, x):
    """table[t] [B] shaped [B, 1, ..., 1] to broadcast against x [B, *D], in x's dtype (tinydiff.extract).

    >>> import torch
    >>> from tinydiff.export.torch_diffusion import extract
    >>> extract(torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64), torch.tensor([2, 0]), torch.zeros(2, 3, 4, 4)).shape
    torch.Size([2, 1, 1, 1])
    """
    return table.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def q_sample(tables: dict, x0, t, eps):
    """x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4): [B, *D].

    >>> import torch
    >>> from tinydiff.export.torch_diffusion import diffusion_tables, q_sample
    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(1000))
    >>> tables = diffusion_tables(td.export.diffusion_config(d))
    >>> q_sample(tables, torch.ones(2, 2), torch.tensor([0, 999]), torch.zeros(2, 2))[:, 0].tolist()  # sqrt(alpha_bar_t)
    [0.9999499917030334, 0.006352818105369806]
    """
    return extract(tables["sqrt_alphas_cumprod"], t, x0) * x0 + extract(tables["sqrt_one_minus_alphas_cumprod"], t, x0) * eps


def mse_weight(tables: dict, config: dict, t):
    """The per-example weight of the MSE, float64 [B]: 1 for mse_weighting "none"; for "min_snr"
    min(SNR_t, gamma) / SNR_t for an eps-model, min(SNR_t, gamma) / (SNR_t + 1) for v,
    min(SNR_t, gamma) for x0 (Hang et al. 2023; tinydiff.losses.mse_weight).

    >>> import torch
    >>> from tinydiff.export.torch_diffusion import diffusion_tables, mse_weight
    >>> config = td.export.diffusion_config(td.make_diffusion("eps", td.linear_beta_schedule(1000), mse_weighting="min_snr"))
    >>> mse_weight(diffusion_tables(config), config, torch.tensor([0, 999])).numpy().round(4).tolist()
    [0.0005, 1.0]
    """
    snr = tables["snr"].to(t.device)[t]
    if config["mse_weighting"] == "none":
        return torch.ones_like(snr)
    clipped = snr.clamp(max=config["snr_gamma"])
    kind = config["model_mean_type"]
    return clipped / snr if kind == "eps" else clipped / (snr + 1.0) if kind == "v" else clipped
