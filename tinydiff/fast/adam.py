"""Adam's update over all parameters at once: one flat buffer, split over the threads.

What it computes: exactly ``tinydiff.optim.Adam`` (and ``AdamW``) as ``Optimizer.step`` runs
it, parameter by parameter, with ``Adam._update`` (tinydiff/optim.py: read it first). The
same NumPy operations in the same order on the same float32 (or float64) values, so the
result is bit for bit the plain one; tests/test_optim.py holds it to that in both dtypes.

Why it is faster. The plain step makes ~13 NumPy passes per parameter array, one array
after another on one core. Here the optimizer's moments m and v live in ONE flat array each
(the per-parameter state entries are views into them, so ``state_dict`` and checkpoints are
unchanged), and the range of all parameter entries is cut into blocks of at most ``BLOCK``
entries that the threads of ``parallel.py`` take whole: per block, each parameter piece's
gradient is copied into a flat buffer, the thirteen passes run on the block (its five arrays
stay in the L2 cache), and the update is subtracted from the parameter pieces. Every element
gets the same operations as in the plain step, so blocks can fall anywhere. On one thread
this is no faster than the plain loop (measured, one core: 2.8 vs 2.5 ms for the 583,713
MNIST-UNET parameters, whose arrays are cache-sized already); what it buys is the split
over the cores.

It takes over only the common case: every parameter with a gradient has C-contiguous data of
one dtype and the same step count (they were all updated together so far), and there are at
least ``MIN_PARAMETERS`` of them. Anything else (a parameter that skipped steps, mixed dtypes,
a small model) returns False and the plain step runs. The size limit is measured: one Adam
step of a UNet on 2 idle cores, fused against plain, took 1.07 vs 0.84 ms at 147,665
parameters (the MNIST lesson's), 1.78 vs 1.67 ms at 585,121 and 6.19 vs 6.64 ms at 2,329,409
(``Adam.step`` timed 30 times after 3 warm-up steps, the better of two rounds); the 148k-
parameter ToyMLP's training step was 10% slower with it (2.75 vs 2.49 ms at batch 256).
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from .parallel import parallel_for

BLOCK = 1 << 16          # most entries per block: the five arrays of one block fit in the L2 cache
MIN_PARAMETERS = 1 << 20  # fewer parameters in all: the plain step is as fast or faster (measured below)


class _Flat:
    """The flat moments of one set of parameters, and where each parameter sits in them."""

    def __init__(self, params, states, dtype):
        sizes = [p.data.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.ids = [id(p) for p in params]
        n = self.offsets[-1]
        self.m, self.v, self.g, self.tmp = (np.zeros(n, dtype) for _ in range(4))
        for k, (p, state) in enumerate(zip(params, states)):
            lo, hi = self.offsets[k], self.offsets[k + 1]
            for name, flat in (("exp_avg", self.m), ("exp_avg_sq", self.v)):
                if name in state:                            # carry over the moments so far
                    flat[lo:hi] = state[name].reshape(-1)
                state[name] = flat[lo:hi].reshape(p.shape)   # the state entry is a view from now on

    def owns(self, params, states) -> bool:
        """Still the layout of these parameters, with their state entries still our views?"""
        return (self.ids == [id(p) for p in params]
                and all(s["exp_avg"].base is self.m and s["exp_avg_sq"].base is self.v for s in states))


def adam_step(opt) -> bool:
    """One Adam (or AdamW) step of ``opt`` over all its parameters with a gradient, threaded.
    Returns False, changing nothing, when the plain per-parameter step must run instead.

    >>> w = td.nn.Parameter(np.array([1.0, -1.0]))
    >>> (w * w).sum().backward()
    >>> td.fast.adam.adam_step(td.optim.Adam([w], lr=0.1))          # 2 parameters: the plain step's job
    False
    >>> w = td.nn.Parameter(np.tile([1.0, -1.0], td.fast.adam.MIN_PARAMETERS // 2))
    >>> (w * w).sum().backward()
    >>> td.fast.adam.adam_step(td.optim.Adam([w], lr=0.1)), w.data[:2].round(6).tolist()   # the plain step's numbers
    (True, [0.9, -0.9])
    """
    live = [(p, s) for p, s in zip(opt.params, opt.state) if p.grad is not None]
    if not live:
        return True
    params, states = [p for p, _ in live], [s for _, s in live]
    if sum(p.data.size for p in params) < MIN_PARAMETERS:
        return False
    dtype = params[0].data.dtype
    steps = {s.get("step", 0) for s in states}
    if (len(steps) != 1 or any(p.data.dtype != dtype or p.grad.dtype != dtype or not p.data.flags.c_contiguous
                               or p.grad.shape != p.shape for p in params)):
        return False
    flat = getattr(opt, "_flat", None)
    if flat is None or not flat.owns(params, states):
        flat = opt._flat = _Flat(params, states, dtype)
    t = steps.pop() + 1
    for s in states:
        s["step"] = t
    lr, b1, b2, eps, wd = opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay
    bias1, bias2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    offsets = flat.offsets
    sqrt_bias2, step_size = math.sqrt(bias2), lr / bias1

    def pieces(lo, hi):
        """(parameter index, its flat array, range within it, range in the flat buffers) in [lo, hi)."""
        k = bisect.bisect_right(offsets, lo) - 1
        while k < len(params) and offsets[k] < hi:
            a, b = max(lo, offsets[k]), min(hi, offsets[k + 1])
            if a < b:
                yield k, a - offsets[k], b - offsets[k], a, b
            k += 1

    def block(lo, hi):
        # the same operations, in the same order, as Adam._update
        g, m, v, tmp = flat.g[lo:hi], flat.m[lo:hi], flat.v[lo:hi], flat.tmp[lo:hi]
        for k, a, b, fa, fb in pieces(lo, hi):
            p = params[k].data.reshape(-1)[a:b]
            if opt.decoupled:
                p *= 1.0 - lr * wd                               # AdamW: decay the weights directly
            flat.g[fa:fb] = params[k].grad.reshape(-1)[a:b]
            if not opt.decoupled and wd:
                flat.g[fa:fb] += wd * p                          # computed as g + wd p, as the plain step
        np.multiply(g, 1.0 - b1, out=tmp)
        m *= b1
        m += tmp                                                 # m_t = b1 m_{t-1} + (1 - b1) g
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp                                                 # v_t = b2 v_{t-1} + (1 - b2) g^2
        np.sqrt(v, out=tmp)
        tmp /= sqrt_bias2
        tmp += eps                                               # sqrt(v_hat) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        for k, a, b, fa, fb in pieces(lo, hi):
            p = params[k].data.reshape(-1)[a:b]
            p -= flat.tmp[fa:fb]

    n = offsets[-1]
    size = min(BLOCK, max(1 << 12, -(-n // 8)))                # and at least ~8 blocks to share out

    def work(lo, hi):                                            # blocks lo..hi-1, each small enough for L2
        for i in range(lo, hi):
            block(i * size, min(n, (i + 1) * size))

    parallel_for(work, -(-n // size), work=12 * n)
    return True
