"""GroupNorm, optionally followed by SiLU, as ONE op with a hand-written backward.

What it computes: exactly ``layers.group_norm`` (composed from primitives: read it first),
and with ``silu=True`` exactly ``silu(group_norm(x))``; tests/test_norm_fast.py ties both
to the composed versions in float64, values and gradients.

    mu, rstd = mean and 1/sqrt(var + eps) of x over each group (C/G channels, all pixels)
    z = (x - mu) * rstd * gamma_c + beta_c  =  x * a[b, c] + shift[b, c]
    y = z * sigmoid(z)        (or y = z without the SiLU)

Why it is fast:

1. *One pass out, nothing big saved.* The composed GroupNorm keeps four full-size
   temporaries alive for backward (centred x, its square, x_hat, the scaled x_hat) and
   SiLU two more. Here the forward keeps only mu and rstd ([B, G]) and the backward
   recomputes z from x, which the graph holds anyway.
2. *A closed-form backward.* With dz = dy * s (1 + z (1 - s)) (SiLU's derivative,
   s = sigmoid(z)), and per example b and channel c the sums P = sum_pixels dz and
   Q = sum_pixels dz * x,

       dbeta_c  = sum_b P[b, c]            dgamma_c = sum_b rstd (Q - mu P)
       dx = a[b, c] dz + c1[b, g] x + c2[b, g],   with, over the n = (C/G) * pixels of a group,
       S1 = sum_{c in g} gamma_c P,  S2 = sum_{c in g} gamma_c Q,
       c1 = -rstd^3 (S2 - mu S1) / n,   c2 = -rstd S1 / n - mu c1

   (the usual x_hat form of the normalisation's backward, rewritten so that x_hat is
   never stored). Three elementwise passes instead of the composed graph's dozen.
3. *Any memory layout.* x is viewed as [B, G, C/G, pixels] without a copy whether its
   memory is [B, C, H, W] or channels-last [B, H, W, C], and every output is allocated
   in the layout of x, so a channels-last convolution's output stays channels-last.
4. *Both cores.* Statistics are per example, so the work is split along the batch
   (``tinydiff.parallel``); each thread's rows are computed exactly as on one thread.
"""
from __future__ import annotations

import numpy as np

from ..engine import Tensor
from ..parallel import parallel_for


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """sigmoid(z) = (tanh(z/2) + 1)/2: no overflow for large |z|, in a new array of z's layout."""
    s = np.multiply(z, 0.5)
    np.tanh(s, out=s)
    s += 1
    s *= 0.5
    return s


def group_norm_act(x: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5,
                   silu: bool = False) -> Tensor:
    """GroupNorm of x [B, C, *S] (then SiLU if ``silu``) as one op; weight, bias: [C] Tensors or None.
    Returns [B, C, *S] in the memory layout of x."""
    xd = x.data
    B, C = xd.shape[:2]
    G, Cg = num_groups, C // num_groups
    xv = xd.reshape(B, G, Cg, -1)                           # [B, G, Cg, S]: a view for either layout
    if not np.may_share_memory(xv, xd):                     # some other layout: make it [B, C, *S]
        xd = np.ascontiguousarray(xd)
        xv = xd.reshape(B, G, Cg, -1)
    n = xv.shape[2] * xv.shape[3]
    dtype = xd.dtype
    gamma = (np.ones(C, dtype) if weight is None else weight.data).reshape(1, G, Cg, 1)
    beta = (np.zeros(C, dtype) if bias is None else bias.data).reshape(1, G, Cg, 1)
    mu = np.empty((B, G, 1, 1), dtype)
    rstd = np.empty((B, G, 1, 1), dtype)
    out = np.empty_like(xd)                                 # same memory layout as x
    ov = out.reshape(B, G, Cg, -1)                          # a view (empty_like kept the layout)

    def forward(lo, hi):
        xs = xv[lo:hi]
        m = xs.mean(axis=(2, 3), keepdims=True)             # [b, G, 1, 1]
        d = xs - m                                          # two-pass variance: no cancellation
        var = np.einsum("bgcs,bgcs->bg", d, d)[:, :, None, None] / n
        r = 1.0 / np.sqrt(var + eps)
        mu[lo:hi], rstd[lo:hi] = m, r
        d *= r * gamma
        d += beta                                           # d is now z
        if silu:
            np.multiply(d, _sigmoid(d), out=ov[lo:hi])
        else:
            ov[lo:hi] = d

    parallel_for(forward, B, work=xd.size * 4)

    def backward(g):
        gv = g.reshape(B, G, Cg, -1)
        dx = np.empty_like(xd) if x.requires_grad else None
        dxv = None if dx is None else dx.reshape(B, G, Cg, -1)
        P = np.empty((B, G, Cg, 1), dtype)                  # sum over pixels of dz
        Q = np.empty((B, G, Cg, 1), dtype)                  # sum over pixels of dz * x

        def work(lo, hi):
            xs, m, r = xv[lo:hi], mu[lo:hi], rstd[lo:hi]
            a = r * gamma                                   # [b, G, Cg, 1]
            if silu:
                z = xs * a
                z += beta - m * a                           # recompute z = x a + shift
                s = _sigmoid(z)
                dz = z                                      # dz = g s (1 + z (1 - s)), in z's buffer
                dz -= z * s
                dz += 1
                dz *= s
                dz *= gv[lo:hi]
            else:
                dz = gv[lo:hi]
            P[lo:hi] = dz.sum(axis=3, keepdims=True)
            Q[lo:hi] = np.einsum("bgcs,bgcs->bgc", dz, xs)[..., None]
            if dxv is not None:
                S1 = (gamma * P[lo:hi]).sum(axis=2, keepdims=True)   # [b, G, 1, 1]
                S2 = (gamma * Q[lo:hi]).sum(axis=2, keepdims=True)
                c1 = -r ** 3 * (S2 - m * S1) / n
                c2 = -r * S1 / n - m * c1
                out_ = dxv[lo:hi]
                np.multiply(dz, a, out=out_)
                out_ += xs * c1
                out_ += c2

        parallel_for(work, B, work=xd.size * 6)
        dgamma = dbeta = None
        if weight is not None and weight.requires_grad:
            dgamma = (rstd * (Q - mu * P)).sum(axis=0).reshape(C)
        if bias is not None and bias.requires_grad:
            dbeta = P.sum(axis=0).reshape(C)
        grads = [dx]
        if weight is not None:
            grads.append(dgamma)
        if bias is not None:
            grads.append(dbeta)
        return tuple(grads)

    parents = [x] + [p for p in (weight, bias) if p is not None]
    return Tensor.from_op(out, parents, backward)
