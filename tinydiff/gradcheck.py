"""Gradient checking: compare autograd with central finite differences.

For a function f of arrays x_1..x_n we check the gradient of the scalar
L = sum(f(x) * P), where P is a fixed random projection (so every output element
matters, not just their sum), against

    dL/dx[i] ~ (L(x + h e_i) - L(x - h e_i)) / (2h),    error O(h^2).

Use float64: with h = 1e-6 the float32 round-off would swamp the signal.
This is the oracle behind every gradient test in tinydiff; learners can use it
on their own layers.
"""
from __future__ import annotations

import numpy as np

from .engine import Tensor


def _objective(f, arrays, projection_rng_seed):
    out = f(*[Tensor(a) for a in arrays])
    data = out.data if isinstance(out, Tensor) else np.asarray(out)
    proj = np.random.default_rng(projection_rng_seed).standard_normal(data.shape)
    return float((data * proj).sum()), proj


def numerical_grad(f, arrays, eps: float = 1e-6, seed: int = 0) -> list:
    """Central-difference gradients of sum(f(*arrays) * P) w.r.t. each array (float64).

    >>> x = np.array([1.0, 2.0])
    >>> numeric = td.gradcheck.numerical_grad(lambda a: a * a, [x])[0]
    >>> analytic = td.gradcheck.autograd_grad(lambda a: a * a, [x])[0]
    >>> bool(np.allclose(numeric, analytic, atol=1e-6))
    True
    """
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):                       # a test utility: loops are fine here
            keep = a[i]
            a[i] = keep + eps
            plus, _ = _objective(f, arrays, seed)
            a[i] = keep - eps
            minus, _ = _objective(f, arrays, seed)
            a[i] = keep
            g[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


def autograd_grad(f, arrays, seed: int = 0) -> list:
    """Gradients of sum(f(*arrays) * P) by the engine's backward pass.

    >>> [g.shape for g in td.gradcheck.autograd_grad(lambda a, b: a @ b, [np.ones((2, 3)), np.ones((3, 4))])]
    [(2, 3), (3, 4)]
    """
    tensors = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = f(*tensors)
    proj = np.random.default_rng(seed).standard_normal(out.shape)
    (out * proj).sum().backward()
    return [t.grad if t.grad is not None else np.zeros_like(t.data) for t in tensors]


def assert_grad_close(f, arrays, atol: float = 1e-6, rtol: float = 1e-5, eps: float = 1e-6) -> None:
    """Raise AssertionError naming the input and the worst element if autograd and
    finite differences disagree.

    >>> td.gradcheck.assert_grad_close(lambda a: (a * a).tanh(), [np.array([0.3, -1.2])])   # silent when right
    """
    for k, (auto, num) in enumerate(zip(autograd_grad(f, arrays), numerical_grad(f, arrays, eps))):
        if not np.allclose(auto, num, atol=atol, rtol=rtol):
            worst = np.unravel_index(np.argmax(np.abs(auto - num)), auto.shape) if auto.ndim else ()
            raise AssertionError(
                f"gradient of input {k} (shape {auto.shape}) differs at {worst}: "
                f"autograd {auto[worst]!r} vs finite differences {num[worst]!r}")
