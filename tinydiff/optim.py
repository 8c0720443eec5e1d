"""Optimizers and training helpers: SGD, Adam, AdamW, gradient clipping, EMA, warm-up.

Each update is PyTorch's, written out on NumPy arrays; it works in place on
``p.data`` (a float32 parameter stays float32: every scalar here is a Python float)
and is vectorised over each parameter array.

    SGD    (momentum mu, weight decay wd):  g <- g + wd p;  b <- mu b + g;  p <- p - lr b
    Adam   (Kingma & Ba 2015, Algorithm 1):  g <- g + wd p
           m <- b1 m + (1-b1) g,   v <- b2 v + (1-b2) g^2
           p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m/(1-b1^t),  v_hat = v/(1-b2^t)
    AdamW  (Loshchilov & Hutter 2019, Algorithm 2): p <- p (1 - lr wd), then Adam with wd = 0
    EMA of the weights (used for sampling in DDPM, Ho et al. 2020 App. B):  s <- d s + (1-d) p
    linear warm-up of the learning rate (DDPM: 5000 steps)

``state_dict()`` of each returns a flat dict of arrays and scalars (e.g. ``"lr"``,
``"state.0.exp_avg"``, ``"state.0.step"``), so a checkpoint can store it with np.savez.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from . import fast
from .engine import Tensor
from .nn.module import Module


def _param_list(params, who: str) -> list:
    if isinstance(params, Module):
        raise TypeError(f"{who} takes an iterable of parameters, got a Module; pass model.parameters()")
    params = list(params)
    if not params or not all(isinstance(p, Tensor) for p in params):
        raise TypeError(f"{who} needs a non-empty iterable of Tensors, got {[type(p).__name__ for p in params]}")
    return params


def _check_flat_state(state_dict, expected: dict, who: str) -> None:
    """Raise one ValueError listing missing / unexpected keys and shape mismatches.
    ``expected`` maps each allowed key to its shape (None for a scalar)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict.keys() if k not in expected]
    mismatched = [f"{k}: got {np.shape(state_dict[k])} vs expected {shape}" for k, shape in expected.items()
                  if k in state_dict and shape is not None and np.shape(state_dict[k]) != shape]
    problems = [f"{label}: {', '.join(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if keys]
    if problems:
        raise ValueError(f"{who}.load_state_dict failed, nothing was loaded:\n  " + "\n  ".join(problems))


class Optimizer:
    """Base class: holds the parameters, ``lr``, the hyperparameters named in
    ``hyperparameters`` and a per-parameter state dict created at its first update.

    >>> issubclass(td.optim.Adam, td.optim.Optimizer), td.optim.Adam.hyperparameters
    (True, ('lr', 'beta1', 'beta2', 'eps', 'weight_decay'))
    """

    hyperparameters: tuple = ("lr",)
    state_names: tuple = ()          # per-parameter arrays (besides the integer "step")

    def __init__(self, params, lr: float):
        self.params = _param_list(params, type(self).__name__)
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        self.lr = float(lr)
        self.state = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient (others are skipped)."""
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            if p.grad.shape != p.shape:
                raise ValueError(f"gradient shape {p.grad.shape} differs from parameter shape {p.shape}")
            if not state:
                state.update(step=0, **{name: np.zeros_like(p.data) for name in self.state_names})
            state["step"] += 1
            self._update(p.data, p.grad, state)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict) -> None:
        """Update p in place from its gradient g and its state; each optimizer writes its own rule."""
        raise NotImplementedError(f"{type(self).__name__} does not define _update(p, g, state)")

    def state_dict(self) -> dict:
        out = {name: float(getattr(self, name)) for name in self.hyperparameters}
        for i, state in enumerate(self.state):
            for name, value in state.items():
                out[f"state.{i}.{name}"] = value if name == "step" else value.copy()
        return out

    def load_state_dict(self, state_dict) -> None:
        expected = {name: None for name in self.hyperparameters}
        stored = {int(k.split(".")[1]) for k in state_dict.keys()
                  if k.startswith("state.") and k.split(".")[1].isdigit()}
        for i in sorted(stored):
            if i < len(self.params):
                expected[f"state.{i}.step"] = None
                expected.update({f"state.{i}.{n}": self.params[i].shape for n in self.state_names})
        _check_flat_state(state_dict, expected, type(self).__name__)
        for name in self.hyperparameters:
            setattr(self, name, float(state_dict[name]))
        self.state = [{} for _ in self.params]
        for i in stored:
            self.state[i] = {"step": int(state_dict[f"state.{i}.step"]),
                             **{n: np.array(state_dict[f"state.{i}.{n}"], dtype=self.params[i].dtype)
                                for n in self.state_names}}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (heavy-ball) momentum and L2 weight decay,
    as ``torch.optim.SGD`` with dampening=0, nesterov=False. The first momentum buffer is g.

    >>> w = td.nn.Parameter(np.array([1.0]))
    >>> opt = td.optim.SGD([w], lr=0.1)
    >>> (w * w).sum().backward(); opt.step()                  # w <- w - 0.1 * 2w
    >>> w.data.tolist()
    [0.8]
    """

    hyperparameters = ("lr", "momentum", "weight_decay")
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def _update(self, p, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = state["momentum_buffer"]
            if state["step"] == 1:
                buf[...] = g                        # PyTorch starts the buffer at g, not (1-mu) g
            else:
                buf *= self.momentum
                buf += g
            g = buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1) with bias correction, as ``torch.optim.Adam``;
    ``weight_decay`` adds wd*p to the gradient (L2, coupled with the adaptive scaling).

    >>> w = td.nn.Parameter(np.array([1.0, -1.0]))
    >>> opt = td.optim.Adam([w], lr=0.1)
    >>> (w * w).sum().backward(); opt.step()                  # the first Adam step moves each weight by ~lr
    >>> w.data.round(6).tolist()
    [0.9, -0.9]
    """

    hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay")
    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def step(self) -> None:
        """One update of every parameter that has a gradient; on the fast path all at once
        (``tinydiff/fast/adam.py``: the same numbers, one flat buffer split over the threads)."""
        if fast.enabled() and fast.adam_step(self):
            return
        super().step()

    def _update(self, p, g, state):
        b1, b2, t = self.beta1, self.beta2, state["step"]
        if self.decoupled:
            p *= 1.0 - self.lr * self.weight_decay           # AdamW: decay the weights directly
        elif self.weight_decay:
            g = g + self.weight_decay * p                     # Adam: L2 term in the gradient
        m, v = state["exp_avg"], state["exp_avg_sq"]
        tmp = np.multiply(g, 1.0 - b1, dtype=p.dtype)        # one scratch array, reused below
        m *= b1
        m += tmp                                              # m_t = b1 m_{t-1} + (1 - b1) g
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp                                              # v_t = b2 v_{t-1} + (1 - b2) g^2
        bias1, bias2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        # p -= lr * m_hat / (sqrt(v_hat) + eps), in PyTorch's order of operations:
        np.sqrt(v, out=tmp)
        tmp /= math.sqrt(bias2)
        tmp += self.eps                                       # tmp = sqrt(v_hat) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr / bias1
        p -= tmp


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay p <- p (1 - lr wd) before
    the Adam step, as ``torch.optim.AdamW`` (default weight_decay 1e-2).

    >>> w = td.nn.Parameter(np.array([1.0]))
    >>> opt = td.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = np.zeros(1); opt.step()                      # no gradient: only the decay, w (1 - 0.1 * 0.5)
    >>> w.data.tolist()
    [0.95]
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(params, max_norm: float, eps: float = 1e-6) -> float:
    """Rescale gradients in place so their global 2-norm is at most ``max_norm``.

    total = sqrt(sum_p ||g_p||^2); if total > max_norm every g_p is multiplied by
    max_norm / (total + eps), as ``torch.nn.utils.clip_grad_norm_``. Returns ``total``
    (the norm before clipping). Parameters without a gradient are skipped.

    >>> w = td.nn.Parameter(np.zeros(2)); w.grad = np.array([3.0, 4.0])
    >>> td.optim.clip_grad_norm([w], 1.0), w.grad.round(4).tolist()   # returns the norm before clipping
    (5.0, [0.6, 0.8])
    """
    grads = [p.grad for p in _param_list(params, "clip_grad_norm") if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    scale = float(max_norm) / (total + eps)
    if scale < 1.0:
        for g in grads:
            g *= scale
    return total


class EMA:
    """Exponential moving average of parameters:  s <- decay * s + (1 - decay) * p after each step.

    ``EMA(model, decay)`` (or a list of parameters) copies the current weights as the
    first average. Call ``update()`` after every ``optimizer.step()``; sample with the
    averaged weights via ``copy_to(model)`` or, keeping the training weights,
    ``with ema.average_parameters(model): ...``. ``state_dict()`` is
    {"decay", "num_updates", "shadow.<parameter name>"}.

    warmup=True uses decay_n = min(decay, (1 + n) / (10 + n)) at update n (0.1, 0.18, ...,
    reaching 0.999 after ~9,000 updates), as TensorFlow's ExponentialMovingAverage with
    num_updates does: with a fixed 0.999 a 2,000-step run's average still holds
    0.999^2000 = 14% of the random initial weights.

    >>> w = td.nn.Parameter(np.array([0.0]))
    >>> ema = td.optim.EMA([w], decay=0.9)
    >>> w.data[...] = 1.0; ema.update()                       # s = 0.9 * 0 + 0.1 * 1
    >>> with ema.average_parameters():
    ...     print(w.data.round(6).tolist())
    [0.1]
    >>> w.data.tolist()                                       # the training weights come back afterwards
    [1.0]
    """

    def __init__(self, model_or_params, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay!r}")
        if isinstance(model_or_params, Module):
            named = model_or_params.named_parameters()
        else:
            named = list(enumerate(_param_list(model_or_params, "EMA")))
        self.names = [str(name) for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.data.copy() for p in self.params]
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses (see warmup)."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self) -> None:
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params):
            s *= d
            s += (1.0 - d) * p.data
        self.num_updates += 1

    def _targets(self, target) -> list:
        params = self.params if target is None else (
            target.parameters() if isinstance(target, Module) else _param_list(target, "EMA.copy_to"))
        if len(params) != len(self.shadow) or any(p.shape != s.shape for p, s in zip(params, self.shadow)):
            raise ValueError(f"EMA target has parameters {[p.shape for p in params]}, "
                             f"expected {[s.shape for s in self.shadow]}")
        return params

    def copy_to(self, target=None) -> None:
        """Write the averages into ``target`` (a Module or parameter list; default: the tracked ones)."""
        for p, s in zip(self._targets(target), self.shadow):
            p.data[...] = s

    @contextlib.contextmanager
    def average_parameters(self, target=None):
        """Within the block ``target`` holds the averaged weights; afterwards its own return."""
        params = self._targets(target)
        saved = [p.data.copy() for p in params]
        self.copy_to(params)
        try:
            yield
        finally:
            for p, keep in zip(params, saved):
                p.data[...] = keep

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                **{f"shadow.{n}": s.copy() for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state_dict) -> None:
        expected = {"decay": None, "num_updates": None,
                    **{f"shadow.{n}": s.shape for n, s in zip(self.names, self.shadow)}}
        _check_flat_state(state_dict, expected, "EMA")
        self.decay, self.num_updates = float(state_dict["decay"]), int(state_dict["num_updates"])
        for n, s in zip(self.names, self.shadow):
            s[...] = state_dict[f"shadow.{n}"]


def linear_warmup_lr(step: int, base_lr: float, warmup_steps: int, decay_steps: int | None = None) -> float:
    """lr for update ``step`` (0-based): a linear warm-up, then optionally a cosine decay.

        warm-up:  base_lr * min(1, (step + 1) / warmup_steps)           (DDPM: 5000 steps)
        decay:    base_lr * (1 + cos(pi * p)) / 2,  p = (step - warmup_steps) / (decay_steps - warmup_steps)

    The cosine decay (Loshchilov & Hutter 2017, SGDR, without restarts) runs from the end
    of the warm-up down to 0 at update ``decay_steps``; None keeps base_lr after warm-up.
    A short run gains most from it: the last updates are small, so the final weights
    sit near a minimum instead of bouncing around it. warmup_steps = 0: no warm-up.

    >>> [td.optim.linear_warmup_lr(s, 1.0, warmup_steps=4, decay_steps=8) for s in (0, 3, 6, 8)]
    [0.25, 1.0, 0.5, 0.0]
    """
    lr = float(base_lr) if warmup_steps <= 0 else float(base_lr) * min(1.0, (step + 1) / warmup_steps)
    if decay_steps is not None and step >= warmup_steps:
        progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
        lr = float(base_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


class LinearWarmup:
    """Sets ``optimizer.lr`` from ``linear_warmup_lr`` (warm-up, then optional cosine decay to
    ``decay_steps``). Like a PyTorch scheduler: the lr for the first update is set at
    construction; call ``step()`` after each ``optimizer.step()``.

    >>> opt = td.optim.SGD([td.nn.Parameter(np.zeros(1))], lr=1.0)
    >>> schedule = td.optim.LinearWarmup(opt, warmup_steps=2)
    >>> first = opt.lr; schedule.step(); first, opt.lr
    (0.5, 1.0)
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, decay_steps: int | None = None):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if decay_steps is not None and (not isinstance(decay_steps, (int, np.integer)) or decay_steps < warmup_steps):
            raise ValueError(f"decay_steps must be None or an integer >= warmup_steps ({warmup_steps}), "
                             f"got {decay_steps!r}")
        self.optimizer, self.warmup_steps = optimizer, int(warmup_steps)
        self.decay_steps = None if decay_steps is None else int(decay_steps)
        self.base_lr, self.step_count = optimizer.lr, 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        return linear_warmup_lr(step, self.base_lr, self.warmup_steps, self.decay_steps)

    def step(self) -> None:
        self.step_count += 1
        self.optimizer.lr = self.lr_at(self.step_count)

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "step": self.step_count,
                "decay_steps": -1 if self.decay_steps is None else self.decay_steps}

    def load_state_dict(self, state_dict) -> None:
        expected = {"base_lr": None, "warmup_steps": None, "step": None}
        _check_flat_state({k: v for k, v in state_dict.items() if k != "decay_steps"}, expected, "LinearWarmup")
        self.base_lr, self.warmup_steps = float(state_dict["base_lr"]), int(state_dict["warmup_steps"])
        decay = int(state_dict.get("decay_steps", -1))
        self.decay_steps = None if decay < 0 else decay
        self.step_count = int(state_dict["step"])
        self.optimizer.lr = self.lr_at(self.step_count)
