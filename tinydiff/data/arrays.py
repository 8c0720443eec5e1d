"""Batches from arrays held in memory, in epochs.

An epoch visits every example once in a random order; the next epoch draws a new order.
This is what "training on MNIST" usually means, and it sees every digit equally often,
where drawing with replacement would leave ~37% of them out of any one epoch.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_count, check_rng


class EpochSampler:
    """``EpochSampler(x)`` or ``EpochSampler(x, y)``; ``sampler(rng, n)`` returns the next n
    examples of the current epoch: x[idx] [n, *D], or (x[idx], {"y": y[idx]}) with labels.

    A batch that runs past the end of an epoch continues in the next one, whose order is
    drawn from ``rng`` (the trainer's Generator) at that moment. The order and the
    position are the sampler's state (``state_dict``), saved in checkpoints so that a
    resumed run sees exactly the batches the uninterrupted one would have seen.

    >>> sampler = td.data.EpochSampler(np.arange(5)[:, None], np.arange(5))
    >>> rng = np.random.default_rng(0)
    >>> x, kw = sampler(rng, 3)
    >>> x.shape, sorted(kw)
    ((3, 1), ['y'])
    >>> _ = sampler(rng, 3); sampler.epoch                    # the 6th example starts a second epoch
    2
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None):
        x = np.asarray(x)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x: expected a non-empty array [N, *D], got shape {x.shape}")
        if y is not None:
            y = np.asarray(y)
            if len(y) != len(x):
                raise ValueError(f"y: expected one label per example ({len(x)}), got {len(y)}")
        self.x, self.y = x, y
        self.order = np.zeros(0, dtype=np.int64)          # the current epoch's permutation
        self.position = 0                                 # how much of it has been served
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.x)

    def _batch(self, idx):
        return self.x[idx] if self.y is None else (self.x[idx], {"y": self.y[idx]})

    def peek(self, n: int):
        """The first n examples in stored order (for checking the data format); no state changes."""
        return self._batch(np.arange(min(n, len(self.x))))

    def __call__(self, rng, n: int):
        rng, n = check_rng(rng), check_count(n)
        parts, need = [], n
        while need > 0:
            if self.position == len(self.order):          # start a new epoch
                self.order = rng.permutation(len(self.x))
                self.position, self.epoch = 0, self.epoch + 1
            take = self.order[self.position:self.position + need]
            parts.append(take)
            self.position += len(take)
            need -= len(take)
        return self._batch(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))

    def state_dict(self) -> dict:
        return {"order": self.order.copy(), "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        order = np.asarray(state.get("order", np.zeros(0, dtype=np.int64)), dtype=np.int64)
        position, epoch = int(state["position"]), int(state["epoch"])
        if len(order) not in (0, len(self.x)) or not 0 <= position <= len(order):
            raise ValueError(f"data state: an epoch order of {len(order)} at position {position} does not fit "
                             f"{len(self.x)} examples; was the checkpoint made with other data?")
        self.order, self.position, self.epoch = order, position, epoch
