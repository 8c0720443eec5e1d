"""Sohl-Dickstein et al. (2015)'s output parametrisation: the reverse step as a perturbation
of the forward step.

For p(x_{t-1} | x_t) = N(mu, sigma^2 I) a network that outputs mu itself must reproduce
x_t to within the step's noise std sqrt(beta_t), which is ~1e-3 near t = 0 on a thin
structure: a near-identity map to three digits, which an MLP learns slowly. The paper's
code (model.py, get_mu_sigma) instead lets the network output corrections f_mu, f_sigma
to the forward kernel q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) read
backwards:

    mu          = sqrt(1 - beta_t) x_t + sqrt(beta_t) f_mu(x_t, t)
    log sigma^2 = log beta_t + f_sigma(x_t, t)

so f = 0 is a sensible start and f_mu moves the mean in units of the step's own noise
std. (For the variance the released code uses sigmoid(f + logit beta_t), which equals
log beta_t + f for small beta.)
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..engine import Tensor, concat
from ..schedules import extract, validate_betas


class ForwardResidual(nn.Module):
    """Wrap a two-headed network into (mu, log sigma^2) of p(x_{t-1} | x_t), as above.

    Args:
        net: a Module with ``net(x_t, t)`` -> [B, 2D] = (f_mu, f_sigma), e.g. ToyMLP(heads=2).
        betas: the schedule, float [T].

    ``forward(x_t, t)`` returns [B, 2D] = (mu, log sigma^2), the layout GaussianDiffusion
    expects for model_mean_type="mean", model_var_type="learned". x_t is data, not a
    parameter, so no gradient flows into it. Buffers are float32 like the network.

    >>> betas = td.linear_beta_schedule(40)
    >>> model = td.models.ForwardResidual(td.models.ToyMLP(heads=2, hidden=16, rng=np.random.default_rng(0)), betas)
    >>> model(np.zeros((3, 2), np.float32), np.array([0, 1, 39])).shape  # (mu, log sigma^2)
    (3, 4)
    """

    def __init__(self, net: nn.Module, betas):
        super().__init__()
        betas = validate_betas(betas)
        self.net = net
        self.betas = betas                                                 # [T] float64, for export
        self.sqrt_alphas = np.sqrt(1.0 - betas).astype(np.float32)         # [T]
        self.sqrt_betas = np.sqrt(betas).astype(np.float32)                # [T]
        self.log_betas = np.log(betas).astype(np.float32)                  # [T]

    def forward(self, x, t) -> Tensor:
        out = self.net(x, t)                                                # [B, 2D]
        x = x.data if isinstance(x, Tensor) else np.asarray(x)              # [B, D]
        D = x.shape[1]
        if out.shape[1] != 2 * D:
            raise ValueError(f"ForwardResidual: the network must output [B, 2 * {D}] = (f_mu, f_sigma), "
                             f"got shape {out.shape}")
        mean = extract(self.sqrt_alphas, t, x.shape) * x + extract(self.sqrt_betas, t, x.shape) * out[:, :D]
        log_variance = extract(self.log_betas, t, x.shape) + out[:, D:]
        return concat([mean, log_variance], axis=1)
