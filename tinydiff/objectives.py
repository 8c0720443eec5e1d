"""The named objectives of the papers, and the Trainer's loss function for a diffusion.

Each objective is a choice of what the network predicts, which reverse variance it uses
and what it is trained on; ``make_diffusion(name, betas)`` builds the matching
GaussianDiffusion, and ``diffusion.learned_variance`` says how many heads the model needs
(two when it also outputs the variance):

    name             model_mean_type  model_var_type  loss_type  heads   source
    eps              eps              fixed_large     mse        1       Ho et al. 2020 (L_simple, sigma^2 = beta_t)
    hybrid           eps              learned_range   hybrid     2       Nichol & Dhariwal 2021 (L_simple + 0.001 L_vlb)
    sohl-dickstein   mean             learned         kl         2       Sohl-Dickstein et al. 2015 (the bound itself)

    d = make_diffusion("hybrid", linear_beta_schedule(1000))
    model = ToyMLP(heads=2 if d.learned_variance else 1)

``DiffusionLoss(diffusion)`` is what a Trainer calls each step: DDPM Algorithm 1, with one
timestep per example drawn uniformly (line 3), eps ~ N(0, I) (line 4), labels dropped to null
for classifier-free guidance if asked, then the loss of line 5: ``losses.eps_loss`` for an
eps-model with the MSE, ``losses.training_losses`` for the others.
"""
from __future__ import annotations

import numpy as np

from .diffusion import GaussianDiffusion
from .engine import unwrap
from .guidance import drop_labels
from .losses import eps_loss

OBJECTIVES = {
    # Ho et al. 2020: predict eps with L_simple; variance fixed to beta_t (the better bound of
    # the two fixed choices for data like the toy sets; DDPM reports similar samples with either).
    "eps": dict(model_mean_type="eps", model_var_type="fixed_large", loss_type="mse"),
    # Nichol & Dhariwal 2021: eps plus an interpolation v between log beta and log beta-tilde,
    # trained with L_simple + 0.001 L_vlb.
    "hybrid": dict(model_mean_type="eps", model_var_type="learned_range", loss_type="hybrid"),
    # Sohl-Dickstein et al. 2015: the network outputs the mean and log-variance of p(x_{t-1}|x_t)
    # directly and is trained on the variational bound itself.
    "sohl-dickstein": dict(model_mean_type="mean", model_var_type="learned", loss_type="kl"),
}


def make_diffusion(objective: str, betas, **settings) -> GaussianDiffusion:
    """GaussianDiffusion(betas, **OBJECTIVES[objective], **settings); settings (e.g.
    decoder_nll="discretized" for 8-bit images) may add to or override the table.

    >>> d = td.make_diffusion("hybrid", td.linear_beta_schedule(1000))
    >>> d.model_mean_type, d.model_var_type, d.loss_type, d.learned_variance
    ('eps', 'learned_range', 'hybrid', True)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}")
    return GaussianDiffusion(betas, **{**OBJECTIVES[objective], **settings})


def split_batch(batch):
    """A batch is x0 [B, *D] or (x0, model_kwargs): returns (x0, a new dict of model kwargs).

    >>> x0, kwargs = td.objectives.split_batch((np.zeros((2, 2)), {"y": np.array([1, 2])}))
    >>> x0.shape, sorted(kwargs)
    ((2, 2), ['y'])
    """
    if isinstance(batch, tuple):
        x0, kwargs = batch
        return x0, dict(kwargs)
    return batch, {}


class DiffusionLoss:
    """loss_fn(model, batch, rng) -> (mean loss Tensor, logged terms) for a Trainer.

    Args:
        diffusion: the GaussianDiffusion whose training_losses define the objective
            (losses.eps_loss, DDPM Algorithm 1, for the "eps" objective).
        label_dropout: probability of replacing each label by its null label (Ho & Salimans
            2022 use 0.1-0.2), so one model also learns eps(x_t, t, null) for guidance.
        null_labels: the null label of each attribute; default ``model.null_labels``.
        label_key: the model keyword that carries labels ("y").
    Draws, from rng and in this order: t [B], the noise eps, then the dropout mask.
    The logged terms are the batch means of every term training_losses returns.

    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(100))
    >>> loss_fn = td.DiffusionLoss(d)
    >>> model = td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0))
    >>> loss, logs = loss_fn(model, np.ones((8, 2), np.float32), np.random.default_rng(1))
    >>> loss.shape, sorted(logs)
    ((), ['loss', 'mse'])
    """

    def __init__(self, diffusion: GaussianDiffusion, label_dropout: float = 0.0, null_labels=None,
                 label_key: str = "y"):
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(f"diffusion: expected a GaussianDiffusion, got {type(diffusion).__name__}")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout: expected a probability in [0, 1], got {label_dropout!r}")
        self.diffusion, self.label_dropout = diffusion, float(label_dropout)
        self.null_labels, self.label_key = null_labels, label_key

    def __call__(self, model, batch, rng):
        x0, kwargs = split_batch(batch)                                  # x_0 ~ q(x_0): [B, *D]
        t = rng.integers(0, self.diffusion.num_timesteps, size=len(x0))  # Algorithm 1 line 3: t ~ Uniform, [B]
        eps = rng.standard_normal(x0.shape, dtype=x0.dtype)              # line 4: eps ~ N(0, I), [B, *D]
        if self.label_dropout > 0 and self.label_key in kwargs:         # Ho & Salimans 2022, Algorithm 1
            null = getattr(model, "null_labels", None) if self.null_labels is None else self.null_labels
            kwargs[self.label_key] = drop_labels(kwargs[self.label_key], self.label_dropout, null, rng)
        if self.diffusion.model_mean_type == "eps" and self.diffusion.loss_type == "mse":
            # line 5: || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
            terms = eps_loss(self.diffusion, model, x0, t, eps, kwargs)
        else:                                   # x0, v or mean targets, the bound, the hybrid loss
            terms = self.diffusion.training_losses(model, x0, t, noise=eps, model_kwargs=kwargs)
        logs = {name: float(np.mean(unwrap(value))) for name, value in terms.items()}
        return terms["loss"].mean(), logs
