"""The training loop every example shares, for any model and any loss, with crash-safe
checkpoints and exact resume.

One step:

    batch ~ data                           sample(rng, batch_size)
    loss, logs = loss_fn(model, batch, rng)
    grads = d loss / d theta;  clip ||grads|| to grad_clip
    theta <- AdamW(theta, grads, lr warmed up linearly, then optionally cosine-decayed)
    theta_ema <- decay theta_ema + (1 - decay) theta

For a diffusion model the loss is ``DiffusionLoss(diffusion)`` (tinydiff/objectives.py):
a timestep per example and the diffusion's own objective, which is DDPM Algorithm 1;
passing the GaussianDiffusion itself is shorthand for that. A VAE passes its ELBO.

A checkpoint is one ``.npz`` (read back with ``allow_pickle=False``) holding the model
weights, the optimizer moments, the EMA weights and the data order, with JSON metadata
(config, step, optimizer scalars, the exact RNG state and the loss history). It is written
to a temporary file and renamed, so a crash leaves the previous checkpoint intact.
Resuming restores all of it, so a resumed run continues exactly as the uninterrupted one.
"""
from __future__ import annotations

import os

import numpy as np

from .checkpoint import (flatten_state, load_checkpoint, merge_arrays, rng_from_json, rng_state_to_json,
                         save_checkpoint, split_arrays, unflatten_state)
from .checks import check_positive_int
from .data.arrays import EpochSampler
from .diffusion import GaussianDiffusion
from .objectives import DiffusionLoss
from .optim import EMA, AdamW, LinearWarmup, clip_grad_norm
from .progress import Progress


def as_batch_sampler(data):
    """``data`` as a function sample(rng, n) -> batch. Accepts:

    * a dataset with ``sample(n, rng)`` (the toy 2-D sets),
    * an array x [N, *D], or a tuple (x, y) of arrays (y: labels, passed to the model as
      y=...): batches go through the data in epochs (``EpochSampler``),
    * a function ``sample(rng, n)`` returning x0 [n, *D] or (x0, model_kwargs).
    The result is tried once on a throwaway Generator, so a wrong kind of data fails here,
    not at the first training step.

    >>> rng = np.random.default_rng(0)
    >>> data = td.data.make_dataset("8gaussians")
    >>> td.train.as_batch_sampler(data)(rng, 5).shape                     # a dataset: data.sample(n, rng)
    (5, 2)
    >>> td.train.as_batch_sampler(np.zeros((100, 3)))(rng, 5).shape       # an array: epochs
    (5, 3)
    >>> td.train.as_batch_sampler(data.sample)
    Traceback (most recent call last):
    ...
    TypeError: data: drawing a trial batch of 2 failed ...
    """
    if hasattr(data, "sample") and callable(data.sample):
        sampler = lambda rng, n: data.sample(n, rng)  # noqa: E731
    elif isinstance(data, np.ndarray):
        sampler = EpochSampler(data)
    elif isinstance(data, tuple) and all(isinstance(a, np.ndarray) for a in data) and len(data) == 2:
        sampler = EpochSampler(*data)
    elif callable(data):
        sampler = data
    else:
        raise TypeError(f"data: expected a dataset with .sample(n, rng), an array, a tuple (x, y) of arrays "
                        f"or a function sample(rng, n), got {type(data).__name__}")
    try:
        trial = sampler.peek(2) if isinstance(sampler, EpochSampler) else sampler(np.random.default_rng(0), 2)
    except Exception as err:
        raise TypeError(f"data: drawing a trial batch of 2 failed ({type(err).__name__}: {err}); a function "
                        "must be called as sample(rng, n), a dataset as data.sample(n, rng)") from err
    x0 = trial[0] if isinstance(trial, tuple) else trial
    if not isinstance(x0, np.ndarray) or len(x0) != 2 or (isinstance(trial, tuple) and (
            len(trial) != 2 or not isinstance(trial[1], dict))):
        raise TypeError(f"data: a trial batch of 2 came back as {type(trial).__name__}"
                        f"{'' if not isinstance(x0, np.ndarray) else ' of shape ' + str(x0.shape)}; expected "
                        "an array x0 [2, *D] or a tuple (x0, dict of model keyword arguments)")
    return sampler


class Trainer:
    """Trains ``model`` on ``loss_fn`` with batches drawn from ``data``.

    Args:
        model: a Module.
        loss_fn: ``loss_fn(model, batch, rng) -> (loss Tensor, dict of floats to log)``, or a
            GaussianDiffusion (shorthand for ``DiffusionLoss(diffusion)``).
        data: anything ``as_batch_sampler`` accepts (a dataset, arrays, a function).
        batch_size, lr, weight_decay, warmup_steps, grad_clip (None: no clipping), ema_decay.
        lr_decay_steps: cosine-decay the learning rate to 0 at this step (None: keep it constant).
        ema_warmup: let the EMA decay grow as min(ema_decay, (1 + n) / (10 + n)) over its first
            updates, so a short run's average is not dominated by the random initial weights.
        seed: seeds the one Generator that draws data, timesteps, noise and label dropout.
        log_every: print a progress line every this many steps (0: silent).
        checkpoint_path, checkpoint_every: write a checkpoint every this many steps and
            at the end (0 or None path: never).
        config: a JSON-able dict saved in checkpoints (how to rebuild the run).
        log: where progress lines go (default ``print``).

    Attributes: ``ema`` (the averaged weights: ``with trainer.ema.average_parameters(model):``
    evaluates with them), ``step``, ``losses`` (one float per step), ``last_logs``.
    Scripts that train for long may call ``tinydiff.runtime.reuse_freed_memory()`` first.

    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(100))
    >>> model = td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0))
    >>> trainer = td.Trainer(model, d, td.data.make_dataset("8gaussians"), batch_size=32, log_every=0)
    >>> losses = trainer.train(5)
    >>> trainer.step, len(losses)
    (5, 5)
    >>> with trainer.ema.average_parameters(model):                      # evaluate with the averaged weights
    ...     x0 = td.ddim_sample_loop(d, model, (4, 2), np.random.default_rng(1), steps=5)
    """

    def __init__(self, model, loss_fn, data, *, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 0, lr_decay_steps: int | None = None,
                 grad_clip: float | None = 1.0, ema_decay: float = 0.999, ema_warmup: bool = False,
                 seed: int = 0, log_every: int = 100, checkpoint_path=None, checkpoint_every: int = 0,
                 config: dict | None = None, log=print):
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.model = model
        self.loss_fn = DiffusionLoss(loss_fn) if isinstance(loss_fn, GaussianDiffusion) else loss_fn
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn: expected a function loss_fn(model, batch, rng) or a GaussianDiffusion, "
                            f"got {type(loss_fn).__name__}")
        self.sample_batch = as_batch_sampler(data)
        self.grad_clip = grad_clip
        self.params = list(model.parameters())
        self.optimizer = AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.warmup = LinearWarmup(self.optimizer, warmup_steps, lr_decay_steps)
        self.ema = EMA(model, decay=ema_decay, warmup=ema_warmup)
        self.rng = np.random.default_rng(seed)
        self.log_every, self.log = log_every, log
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every
        self.config = dict(config or {})
        self.step = 0
        self.losses: list[float] = []
        self.last_logs: dict = {}
        self.resumed_config: dict | None = None      # the config saved in the checkpoint, after resume()

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float:
        """One optimisation step; returns the batch's loss."""
        batch = self.sample_batch(self.rng, self.batch_size)
        self.optimizer.zero_grad()
        loss, self.last_logs = self.loss_fn(self.model, batch, self.rng)
        loss.backward()
        if self.grad_clip is not None:
            clip_grad_norm(self.params, self.grad_clip)
        self.optimizer.step()
        self.warmup.step()                      # sets the next step's learning rate
        self.ema.update()
        self.step += 1
        value = float(loss.item())
        if not np.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {self.step}; lower the learning rate "
                                     f"or enable grad_clip")
        self.losses.append(value)
        return value

    def train(self, steps: int) -> list[float]:
        """Train until ``self.step == steps`` (a resumed trainer continues where it stopped).

        Progress (``tinydiff.progress.Progress``): one line redrawn in place on a terminal or
        in a notebook, else a line every ``log_every`` steps; the loss shown is the mean of
        the last ``log_every`` steps, the speed and ETA are measured over the last 20 seconds.
        """
        progress = None
        if self.log_every:
            progress = Progress(steps, "step", every=self.log_every, initial=self.step, unit="steps",
                                log=None if self.log is print else self.log)
        while self.step < steps:
            self.train_step()
            if progress is not None:
                progress.update(self.step, loss=float(np.mean(self.losses[-self.log_every:])))
            if self.checkpoint_path and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save(self.checkpoint_path)
        if self.checkpoint_path:
            self.save(self.checkpoint_path)
        return self.losses

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> None:
        """Write everything needed to continue training to ``path`` (atomically)."""
        opt_arrays, opt_meta = split_arrays(self.optimizer.state_dict())
        data_arrays, data_meta = split_arrays(getattr(self.sample_batch, "state_dict", dict)())
        arrays = flatten_state({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                                "optimizer": opt_arrays, "data": data_arrays})
        arrays["losses"] = np.asarray(self.losses, dtype=np.float64)
        meta = {"step": self.step, "config": self.config, "optimizer": opt_meta, "data": data_meta,
                "warmup": self.warmup.state_dict(), "rng": rng_state_to_json(self.rng)}
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        os.makedirs(folder, exist_ok=True)
        save_checkpoint(path, arrays, meta)

    def resume(self, path) -> "Trainer":
        """Load model, optimizer, EMA, data order, RNG, step and loss history from ``path``."""
        arrays, meta = load_checkpoint(path, expect_keys=("losses",))
        losses = arrays.pop("losses")
        state = unflatten_state(arrays)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(merge_arrays(state.get("optimizer", {}), meta["optimizer"]))
        if hasattr(self.sample_batch, "load_state_dict"):
            self.sample_batch.load_state_dict(merge_arrays(state.get("data", {}), meta.get("data", {})))
        self.warmup.load_state_dict(meta["warmup"])
        self.rng = rng_from_json(meta["rng"])
        self.step = int(meta["step"])
        self.losses = [float(v) for v in losses]
        self.resumed_config = meta.get("config")
        return self
