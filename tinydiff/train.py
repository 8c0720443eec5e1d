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

Non-finite values stop training before they reach the weights: each step checks the loss
and the gradient norm (which clipping computes anyway), and a NaN or inf raises
``NonFiniteError`` naming the step, the loss terms that are not finite and the first
non-finite parameter or gradient by name; the weights stay those of the last good step and
the last checkpoint is not touched. ``skip_nonfinite=True`` skips such a step instead
(no update of the weights, moments, EMA or learning rate; the step is retried on the next
batch) and stops only after ``MAX_SKIPS_IN_A_ROW`` of them in a row.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .checkpoint import (CheckpointError, flatten_state, load_checkpoint, merge_arrays, rng_from_json,
                         rng_state_to_json, save_checkpoint, split_arrays, unflatten_state)
from .checks import check_positive_int
from .data.arrays import EpochSampler
from .diffusion import GaussianDiffusion
from .objectives import DiffusionLoss
from .optim import EMA, AdamW, LinearWarmup, clip_grad_norm
from .progress import Progress
from .nn.conv import Conv2d
from .runtime import tune_process


MAX_SKIPS_IN_A_ROW = 10     # with skip_nonfinite: this many bad steps in a row means training is broken


class NonFiniteError(FloatingPointError):
    """A NaN or inf loss or gradient; the message names the step, the terms and the parameter.

    >>> issubclass(td.train.NonFiniteError, FloatingPointError)
    True
    """


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a vanished folder); the previous one is intact.

    >>> issubclass(td.train.CheckpointWriteError, OSError)
    True
    """


def _first_nonfinite(named_arrays):
    """'name (k of n values)' for the first array with a NaN or inf, or None."""
    for name, arr in named_arrays:
        if arr is not None and arr.dtype.kind in "fc":
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            if bad:
                return f"{name} ({bad:,} of {arr.size:,} values)"
    return None


def _check_finite_data(x, what: str) -> None:
    """A ValueError if a float array of data holds NaN or inf (it would poison every step)."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "fc":
        bad = ~np.isfinite(x)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"data: {what} holds {int(bad.sum()):,} NaN or inf values (the first at index "
                             f"{first}: {x[first]}); expected finite numbers")


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
        _check_finite_data(data, "the array")
        sampler = EpochSampler(data)
    elif isinstance(data, tuple) and all(isinstance(a, np.ndarray) for a in data) and len(data) == 2:
        _check_finite_data(data[0], "x")
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
    _check_finite_data(x0, "a trial batch of 2")
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
        skip_nonfinite: skip a step whose loss or gradient is NaN or inf instead of stopping
            (see the module docstring); off by default, because a NaN usually means a bug or a
            learning rate that is too high, and hiding it helps no one.
        log: where progress lines go (default ``print``).

    Attributes: ``ema`` (the averaged weights: ``with trainer.ema.average_parameters(model):``
    evaluates with them), ``step``, ``losses`` (one float per step), ``last_logs``,
    ``saved_step`` (the step of the last checkpoint written or read), ``skipped`` (the step
    being taken each time a batch was skipped). Building a Trainer tunes the process once
    (``tinydiff.runtime.tune_process``: freed memory kept mapped, and OpenBLAS on one thread
    when the model has convolutions).

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
                 config: dict | None = None, skip_nonfinite: bool = False, log=print):
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.model = model
        # freed memory kept mapped; OpenBLAS on one thread when the fast conv kernels run: tinydiff/runtime.py
        tune_process(convolutions=any(isinstance(m, Conv2d) for m in model.modules()))
        self.loss_fn = DiffusionLoss(loss_fn) if isinstance(loss_fn, GaussianDiffusion) else loss_fn
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn: expected a function loss_fn(model, batch, rng) or a GaussianDiffusion, "
                            f"got {type(loss_fn).__name__}")
        if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
            raise ValueError(f"grad_clip: expected a positive max gradient norm or None, got {grad_clip!r}")
        self.sample_batch = as_batch_sampler(data)
        self.grad_clip = grad_clip
        self.named_params = list(model.named_parameters())
        self.params = [p for _, p in self.named_params]
        self.optimizer = AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.warmup = LinearWarmup(self.optimizer, warmup_steps, lr_decay_steps)
        self.ema = EMA(model, decay=ema_decay, warmup=ema_warmup)
        self.rng = np.random.default_rng(seed)
        self.log_every, self.log = log_every, log
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every
        self.config = dict(config or {})
        self.skip_nonfinite = bool(skip_nonfinite)
        self.step = 0
        self.saved_step: int | None = None
        self.losses: list[float] = []
        self.skipped: list[int] = []
        self.skips_in_a_row = 0
        self.last_logs: dict = {}
        self.resumed_config: dict | None = None      # the config saved in the checkpoint, after resume()

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float | None:
        """One optimisation step; returns the batch's loss (None for a skipped batch).

        For a diffusion model this is DDPM Algorithm 1, lines 2-5 (the loss, ``DiffusionLoss``,
        draws t and eps and computes ||eps - eps_theta(x_t, t)||^2; tinydiff/objectives.py).
        """
        batch = self.sample_batch(self.rng, self.batch_size)              # x_0 ~ q(x_0) (with its labels)
        self.optimizer.zero_grad()
        loss, self.last_logs = self.loss_fn(self.model, batch, self.rng)  # t ~ U{1..T}, eps ~ N(0, I), the loss
        loss.backward()                                                   # d loss / d theta for every parameter
        grad_norm = self.clip_gradients()                                 # the norm before clipping
        value = float(loss.item())
        if not self.finite_or_skipped(value, grad_norm, batch):           # a NaN never reaches the weights
            return None
        self.optimizer.step()                                             # AdamW on the gradients
        self.warmup.step()                                                # sets the next step's learning rate
        self.ema.update()                                                 # theta_ema <- d theta_ema + (1 - d) theta
        self.step += 1
        self.losses.append(value)
        return value

    def clip_gradients(self) -> float:
        """Scale the gradients down to norm ``grad_clip`` (None: leave them); returns their norm before."""
        if self.grad_clip is not None:
            return clip_grad_norm(self.params, self.grad_clip)
        return math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in self.params if p.grad is not None))

    def finite_or_skipped(self, value: float, grad_norm: float, batch) -> bool:
        """True when the loss and the gradient norm are finite: the step may update the weights.

        Otherwise raise NonFiniteError naming the step, the terms and the parameter, or, with
        ``skip_nonfinite``, log the skipped batch and return False (the next call of
        ``train_step`` takes the same step on the next batch); ``MAX_SKIPS_IN_A_ROW`` skips in a
        row raise NonFiniteError.
        """
        if math.isfinite(value) and math.isfinite(grad_norm):
            self.skips_in_a_row = 0
            return True
        report = self._nonfinite_report(value, grad_norm, batch)
        if not self.skip_nonfinite:
            raise NonFiniteError(report + "; lower the learning rate, keep grad_clip on, or pass "
                                 "skip_nonfinite=True to skip such steps")
        self.skips_in_a_row += 1
        if self.skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise NonFiniteError(f"{MAX_SKIPS_IN_A_ROW} steps in a row were not finite (skip_nonfinite=True); "
                                 f"the last: {report}")
        self.skipped.append(self.step + 1)
        self.log(f"skipped: {report}")
        return False

    def _nonfinite_report(self, value, grad_norm, batch) -> str:
        """One line saying what is not finite at the step being taken."""
        step = self.step + 1
        parts = [f"loss became {value} at step {step}" if not math.isfinite(value)
                 else f"at step {step} the loss is finite ({value:.6g}) but the gradient norm is {grad_norm}"]
        terms = [f"{k} = {v}" for k, v in self.last_logs.items()
                 if isinstance(v, (int, float)) and not math.isfinite(v)]
        if terms:
            parts.append("non-finite loss terms: " + ", ".join(terms))
        x0 = batch[0] if isinstance(batch, tuple) else batch
        if isinstance(x0, np.ndarray) and x0.dtype.kind == "f" and not np.all(np.isfinite(x0)):
            parts.append("the batch itself holds NaN or inf")
        param = _first_nonfinite((name, p.data) for name, p in self.named_params)
        grad = _first_nonfinite((name, p.grad) for name, p in self.named_params)
        parts.append(f"first non-finite parameter: {param}" if param else "every parameter is finite")
        parts.append(f"first non-finite gradient: {grad}" if grad else
                     "every gradient is finite (their norm overflowed)" if math.isfinite(value) else
                     "every gradient is finite")
        kept = (f"the last checkpoint (step {self.saved_step}, {self.checkpoint_path}) is intact"
                if self.saved_step is not None and self.checkpoint_path else "no checkpoint was written")
        parts.append(f"the weights are those of step {self.step} and {kept}")
        return "; ".join(parts)

    def train(self, steps: int, max_seconds: float | None = None) -> list[float]:
        """Train until ``self.step == steps`` (a resumed trainer continues where it stopped).

        max_seconds: also stop after the first step that ends past this many seconds of
        training (a hard time budget; the checkpoint then holds that step, and a later
        ``train(steps)`` on the resumed trainer finishes the run).

        Progress (``tinydiff.progress.Progress``): one line redrawn in place on a terminal or
        in a notebook, else a line every ``log_every`` steps; the loss shown is the mean of
        the last ``log_every`` steps, the speed and ETA are measured over the last 20 seconds.
        """
        progress = None
        if self.log_every:
            progress = Progress(steps, "step", every=self.log_every, initial=self.step, unit="steps",
                                log=None if self.log is print else self.log)
        start = time.perf_counter()
        while self.step < steps:
            self.train_step()
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                steps = self.step                                   # out of time: stop here
                if progress is not None:
                    progress.total = steps                          # its last line says where it stopped
            if progress is not None:
                progress.update(self.step, loss=float(np.mean(self.losses[-self.log_every:])))
            if (self.checkpoint_path and self.checkpoint_every and self.step % self.checkpoint_every == 0
                    and self.saved_step != self.step):              # not again after a skipped batch
                self.save(self.checkpoint_path)
        if self.checkpoint_path and self.saved_step != self.step:     # nothing new: keep the file as it is
            self.save(self.checkpoint_path)
        return self.losses

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> None:
        """Write everything needed to continue training to ``path`` (atomically).

        A failed write (a full disk, a folder that vanished) raises CheckpointWriteError, an
        OSError naming the file and the step; the previous checkpoint stays as it was.
        """
        opt_arrays, opt_meta = split_arrays(self.optimizer.state_dict())
        data_arrays, data_meta = split_arrays(getattr(self.sample_batch, "state_dict", dict)())
        arrays = flatten_state({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                                "optimizer": opt_arrays, "data": data_arrays})
        arrays["losses"] = np.asarray(self.losses, dtype=np.float64)
        meta = {"step": self.step, "config": self.config, "optimizer": opt_meta, "data": data_meta,
                "warmup": self.warmup.state_dict(), "rng": rng_state_to_json(self.rng),
                "skipped": self.skipped}
        try:
            os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
            save_checkpoint(path, arrays, meta)
        except OSError as err:
            kept = (f"the previous checkpoint (step {self.saved_step}) is intact" if self.saved_step is not None
                    else "no checkpoint was written")
            raise CheckpointWriteError(err.errno, f"could not write the checkpoint {os.fspath(path)} at step "
                                                  f"{self.step} ({err.strerror or err}); {kept}") from err
        self.saved_step = self.step

    def resume(self, path) -> "Trainer":
        """Load model, optimizer, EMA, data order, RNG, step and loss history from ``path``.

        All or nothing: if any part does not fit this trainer (another architecture, other
        data), a CheckpointError names the file and every mismatched name and shape, and
        the trainer is left exactly as it was.
        """
        arrays, meta = load_checkpoint(path, expect_keys=("losses",))
        before = self._snapshot()
        try:
            losses = arrays.pop("losses")
            state = unflatten_state(arrays)
            self.model.load_state_dict(state.get("model", {}))
            self.ema.load_state_dict(state.get("ema", {}))
            self.optimizer.load_state_dict(merge_arrays(state.get("optimizer", {}), meta["optimizer"]))
            if hasattr(self.sample_batch, "load_state_dict"):
                self.sample_batch.load_state_dict(merge_arrays(state.get("data", {}), meta.get("data", {})))
            self.warmup.load_state_dict(meta["warmup"])
            self.rng = rng_from_json(meta["rng"])
            self.step = int(meta["step"])
            self.losses = [float(v) for v in losses]
            self.skipped = [int(s) for s in meta.get("skipped", [])]
            self.resumed_config = meta.get("config")
        except (KeyError, TypeError, ValueError) as err:
            self._restore(before)
            what = f"missing entry {err}" if isinstance(err, KeyError) else str(err)
            raise CheckpointError(f"checkpoint {os.fspath(path)} does not fit this trainer, nothing was "
                                  f"loaded: {what}") from err
        self.saved_step = self.step
        return self

    def _snapshot(self):
        data = getattr(self.sample_batch, "state_dict", None)
        return (self.model.state_dict(), self.ema.state_dict(), self.optimizer.state_dict(),
                self.warmup.state_dict(), data() if data else None, rng_state_to_json(self.rng),
                self.step, list(self.losses), list(self.skipped))

    def _restore(self, snapshot):
        model, ema, opt, warmup, data, rng, self.step, self.losses, self.skipped = snapshot
        self.model.load_state_dict(model)
        self.ema.load_state_dict(ema)
        self.optimizer.load_state_dict(opt)
        self.warmup.load_state_dict(warmup)
        if data is not None:
            self.sample_batch.load_state_dict(data)
        self.rng = rng_from_json(rng)
