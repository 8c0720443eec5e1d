"""tinydiff: diffusion models from scratch in NumPy, written to be read.

    import numpy as np
    import tinydiff as td

One namespace, in the style of torch and numpy: families of names are submodules, and the
few names a diffusion model is built from sit at the top.

    engine          td.Tensor, td.tensor, td.no_grad, td.concat, td.stack, td.where
    families        td.nn (layers), td.optim (optimizers, EMA), td.functional, td.models
                    (ToyMLP, UNet, ...), td.data (toy sets, MNIST), td.viz (pictures), td.images
                    (grids and rows of image samples), td.scorer (scores generated MNIST digits),
                    td.metrics, td.oracles (exact denoisers), td.progress, td.gradcheck, td.runs
                    (the checks every example makes around a run: flags, output folder, resume;
                    built from td.flags, td.folder and td.resume),
                    td.recipes (the MNIST model of examples/mnist.py, loading a trained run),
                    td.elbo (a VAE's bound: reparameterisation, KL to N(0, I), decoders,
                    ELBOLoss), td.latent (latent diffusion: a frozen VAE and the scale of its codes)
    speed           td.fast (the fast kernels every layer hands off to), td.plain() (a block in
                    which every layer runs its plain path; or TINYDIFF_PLAIN=1), td.parallel
                    (the kernels' thread pool), td.runtime.tune_process (OpenBLAS threads and
                    malloc, applied by the Trainer)
    schedules       td.linear_beta_schedule, td.cosine_beta_schedule, td.logsnr_beta_schedule, ...
    diffusion       td.GaussianDiffusion: the schedule's tables, and as methods (the checked doors)
                    q, its posterior, p, the losses (training_losses) and the bound (vb_terms_bpd,
                    prior_bpd, calc_bpd_loop); the math they call, as plain functions: td.forward
                    (q), td.reverse (p), td.losses (td.eps_loss, DDPM Algorithm 1), td.bound
    Gaussian math   td.normal_kl, td.gaussian_log_likelihood, td.discretized_gaussian_log_likelihood, ...
    objectives      td.OBJECTIVES, td.make_diffusion, td.DiffusionLoss
    samplers        td.ddpm_sample_loop (its step td.samplers.ddpm_step is DDPM eq. 11),
                    td.ddim_sample_loop (td.ddim), td.langevin_sample_loop (td.langevin), td.sample,
                    td.respace, td.space_timesteps (td.respacing)
    guidance        td.ClassifierFreeGuidance, td.drop_labels
    continuous time td.sde (the VP SDE of a diffusion; reverse-SDE and probability-flow ODE samplers),
                    td.ode (Euler, Heun, RK4, adaptive RK45), td.likelihood (exact log p through the ODE)
    editing         td.editing: sdedit, inpaint (RePaint), ddim_invert
    training        td.Trainer, td.Progress; checkpoints td.save_checkpoint, td.load_checkpoint
    runs            td.Run: an example's flags, output folder, resume or refusal, lock and files
    export          td.export: to_torch / from_torch (PyTorch twins of every model), .safetensors
                    read and written in NumPy (save_safetensors, load_safetensors), configs

Importing is cheap: NumPy only. matplotlib and Pillow are imported when a picture is drawn.

The examples in every docstring assume ``import numpy as np`` and ``import tinydiff as td``;
the test suite runs them (``python -m pytest`` collects them with --doctest-modules).

>>> betas = td.linear_beta_schedule(1000)
>>> d = td.GaussianDiffusion(betas)
>>> x0 = np.ones((2, 3), dtype=np.float32)
>>> d.q_sample(x0, np.array([0, 999]), rng=np.random.default_rng(0)).shape
(2, 3)
"""
__version__ = "0.1.0"        # before the submodules: tinydiff.scorer records it in its cache files

from . import interop  # noqa: F401, E402  (installs NumPy's dispatch hooks on Tensor)
from .engine import Tensor, concat, no_grad, stack, tensor, where

from . import (bound, checkpoint, checks, data, ddim, diffusion, editing, elbo, export, fast, flags,  # noqa: E402
               folder, forward, functional, gaussian, gradcheck, guidance, images, langevin, latent, likelihood,
               losses, metrics, models, nn, objectives, ode, optim, oracles, progress, recipes, respacing, resume,
               reverse, runs, runtime, samplers, schedules, scorer, sde, text, train, viz)
from .fast import parallel, plain  # noqa: E402  (td.parallel: the fast kernels' thread pool)
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .diffusion import GaussianDiffusion  # noqa: E402
from .gaussian import (approx_standard_normal_cdf, decoder_nll, discretized_gaussian_log_likelihood,  # noqa: E402
                       gaussian_log_likelihood, mean_flat, normal_kl)
from .guidance import ClassifierFreeGuidance, drop_labels  # noqa: E402
from .losses import eps_loss  # noqa: E402
from .objectives import OBJECTIVES, DiffusionLoss, make_diffusion  # noqa: E402
from .progress import Progress  # noqa: E402
from .runs import Run  # noqa: E402
from .samplers import (ddim_sample_loop, ddpm_sample_loop, langevin_sample_loop, respace, sample,  # noqa: E402
                       space_timesteps)
from .schedules import (betas_for_alpha_bar, cosine_beta_schedule, extract, linear_beta_schedule,  # noqa: E402
                        logsnr_beta_schedule)
from .train import Trainer  # noqa: E402

__all__ = [
    # the engine
    "Tensor", "tensor", "no_grad", "concat", "stack", "where",
    # plain layers (the math as written) instead of the fast kernels
    "plain",
    # families, as submodules
    "nn", "optim", "functional", "models", "data", "viz", "images", "metrics", "oracles", "progress", "gradcheck",
    "schedules", "gaussian", "diffusion", "objectives", "samplers", "guidance", "train", "checkpoint",
    "checks", "runs", "flags", "folder", "resume", "recipes", "runtime", "parallel", "fast", "scorer", "elbo",
    "latent", "text", "editing", "export", "forward", "reverse", "losses", "bound", "respacing", "ddim", "langevin",
    "sde", "ode", "likelihood",
    # schedules
    "linear_beta_schedule", "cosine_beta_schedule", "logsnr_beta_schedule", "betas_for_alpha_bar", "extract",
    # the diffusion: q, p, the losses and the bound
    "GaussianDiffusion",
    # Gaussian math
    "normal_kl", "gaussian_log_likelihood", "discretized_gaussian_log_likelihood",
    "approx_standard_normal_cdf", "decoder_nll", "mean_flat",
    # objectives and the eps-loss of DDPM Algorithm 1
    "OBJECTIVES", "make_diffusion", "DiffusionLoss", "eps_loss",
    # samplers and guidance
    "ddpm_sample_loop", "ddim_sample_loop", "langevin_sample_loop", "sample", "respace", "space_timesteps",
    "ClassifierFreeGuidance", "drop_labels",
    # training and checkpoints
    "Trainer", "Progress", "save_checkpoint", "load_checkpoint",
    # run management: flags, output folder, resume or refuse, lock, safe writes (tinydiff/runs.py and the
    # modules it is built from: tinydiff/flags.py, tinydiff/folder.py, tinydiff/resume.py)
    "Run",
]
