"""The training loop every example shares, with crash-safe checkpoints and resume.

One step (DDPM Algorithm 1, with the objective chosen by the diffusion's loss type):

    x0, kwargs ~ data                      sample_batch(rng, batch_size)
    t ~ Uniform{0, ..., T-1}               one timestep per example
    loss = mean_b training_losses(model, x0, t)[b]
    grads = d loss / d theta;  clip ||grads|| to grad_clip
    theta <- AdamW(theta, grads, lr warmed up linearly)
    theta_ema <- decay theta_ema + (1 - decay) theta

A checkpoint is one ``.npz`` (read back with ``allow_pickle=False``) holding the model
weights, the optimizer moments and the EMA weights, with JSON metadata (config, step,
optimizer scalars, the exact RNG state and the loss history). It is written to a
temporary file and renamed, so a crash leaves the previous checkpoint intact. Resuming
restores all of it, so a resumed run continues exactly as the uninterrupted one would.
"""
from __future__ import annotations

import os
import time

import numpy as np

from .checkpoint import flatten_state, load_checkpoint, rng_from_json, rng_state_to_json, \
    save_checkpoint, unflatten_state
from .optim import EMA, AdamW, LinearWarmup, clip_grad_norm
from .runtime import reuse_freed_memory


def _format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Trainer:
    """Trains ``model`` on ``diffusion.training_losses`` with data from ``sample_batch``.

    Args:
        model: a Module called as ``model(x_t, t, **kwargs)``.
        diffusion: a GaussianDiffusion (its loss type picks the objective).
        sample_batch: ``sample_batch(rng, n)`` -> x0 [n, *D], or (x0, model_kwargs) for
            conditional models (e.g. class labels).
        batch_size, lr, weight_decay, warmup_steps, grad_clip (None: no clipping), ema_decay.
        lr_decay_steps: cosine-decay the learning rate to 0 at this step (None: keep it constant).
        seed: seeds the one Generator that draws data, timesteps and noise.
        log_every: print a progress line every this many steps (0: silent).
        checkpoint_path, checkpoint_every: write a checkpoint every this many steps and
            at the end (0 or None path: never).
        config: a JSON-able dict saved in checkpoints (how to rebuild the run).
        log: where progress lines go (default ``print``).
    """

    def __init__(self, model, diffusion, sample_batch, *, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 0, lr_decay_steps: int | None = None, grad_clip: float | None = 1.0,
                 ema_decay: float = 0.999, seed: int = 0, log_every: int = 100,
                 checkpoint_path=None, checkpoint_every: int = 0, config: dict | None = None, log=print):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        reuse_freed_memory()                    # keep NumPy's freed temporaries mapped: see runtime.py
        self.model, self.diffusion, self.sample_batch = model, diffusion, sample_batch
        self.batch_size, self.grad_clip = batch_size, grad_clip
        self.params = list(model.parameters())
        self.optimizer = AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.warmup = LinearWarmup(self.optimizer, warmup_steps, lr_decay_steps)
        self.ema = EMA(model, decay=ema_decay)
        self.rng = np.random.default_rng(seed)
        self.log_every, self.log = log_every, log
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every
        self.config = dict(config or {})
        self.step = 0
        self.losses: list[float] = []

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float:
        """One optimisation step; returns the batch's mean loss."""
        batch = self.sample_batch(self.rng, self.batch_size)
        x0, kwargs = batch if isinstance(batch, tuple) else (batch, {})
        t = self.rng.integers(0, self.diffusion.num_timesteps, size=len(x0))
        self.optimizer.zero_grad()
        terms = self.diffusion.training_losses(self.model, x0, t, rng=self.rng, model_kwargs=kwargs)
        loss = terms["loss"].mean()
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
        """Train until ``self.step == steps`` (a resumed trainer continues where it stopped)."""
        start_step, start = self.step, time.perf_counter()
        while self.step < steps:
            self.train_step()
            done = self.step - start_step
            if self.log_every and (self.step % self.log_every == 0 or self.step == steps):
                elapsed = time.perf_counter() - start
                rate = done / max(elapsed, 1e-9)
                recent = np.mean(self.losses[-self.log_every:])
                self.log(f"step {self.step:>6}/{steps}  loss {recent:.4f}  {rate:6.1f} steps/s  "
                         f"elapsed {_format_seconds(elapsed)}  ETA {_format_seconds((steps - self.step) / rate)}")
            if self.checkpoint_path and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save(self.checkpoint_path)
        if self.checkpoint_path:
            self.save(self.checkpoint_path)
        return self.losses

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> None:
        """Write everything needed to continue training to ``path`` (atomically)."""
        opt_arrays, opt_meta = _split_arrays(self.optimizer.state_dict())
        arrays = flatten_state({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                                "optimizer": opt_arrays})
        arrays["losses"] = np.asarray(self.losses, dtype=np.float64)
        meta = {"step": self.step, "config": self.config, "optimizer": opt_meta,
                "warmup": self.warmup.state_dict(), "rng": rng_state_to_json(self.rng)}
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        os.makedirs(folder, exist_ok=True)
        save_checkpoint(path, arrays, meta)

    def resume(self, path) -> "Trainer":
        """Load model, optimizer, EMA, RNG, step and loss history from ``path``."""
        arrays, meta = load_checkpoint(path, expect_keys=("losses",))
        losses = arrays.pop("losses")
        state = unflatten_state(arrays)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(_merge(state.get("optimizer", {}), meta["optimizer"]))
        self.warmup.load_state_dict(meta["warmup"])
        self.rng = rng_from_json(meta["rng"])
        self.step = int(meta["step"])
        self.losses = [float(v) for v in losses]
        return self


def _split_arrays(state: dict):
    """Separate an optimizer state dict into arrays (for the .npz) and scalars (for JSON)."""
    arrays, scalars = {}, {}
    for key, value in state.items():
        if isinstance(value, dict):
            sub_arrays, sub_scalars = _split_arrays(value)
            if sub_arrays:
                arrays[key] = sub_arrays
            if sub_scalars:
                scalars[key] = sub_scalars
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            arrays[key] = value
        else:
            scalars[key] = value.item() if isinstance(value, np.generic) else value
    return arrays, scalars


def _merge(arrays: dict, scalars: dict) -> dict:
    """Inverse of ``_split_arrays``: put the arrays and the scalars back into one nested dict."""
    merged = dict(arrays)
    for key, value in scalars.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged
