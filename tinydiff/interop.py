"""NumPy functions on Tensors: ``np.exp(t)``, ``ndarray * t``, ``np.concatenate([t, u])``
return Tensors that keep the graph.

NumPy asks an argument's type before it computes: a ufunc (``np.exp``, ``np.add``, ...)
calls ``Tensor.__array_ufunc__`` (NEP 13), any other function (``np.where``,
``np.concatenate``, ...) calls ``Tensor.__array_function__`` (NEP 18). Both land here and
map the NumPy name onto the engine's own operation, which owns the derivative. A name
not in the tables returns ``NotImplemented``, so NumPy raises a TypeError instead of
silently dropping the gradient. Comparisons pass through on the raw arrays: they have
no gradient.

This is what lets ``tinydiff.gaussian`` stay pure NumPy (pure math has no model or state) and still train
models: ``normal_kl`` written with ``np.exp`` differentiates when handed Tensors.
"""
from __future__ import annotations

from .engine import Tensor, concat, stack, unwrap, where


def _maximum(a, b):
    return where(unwrap(a) >= unwrap(b), a, b)


def _minimum(a, b):
    return where(unwrap(a) <= unwrap(b), a, b)


def _clip(x, lo=None, hi=None, **_):
    return Tensor(x).clip(lo, hi) if not isinstance(x, Tensor) else x.clip(unwrap(lo), unwrap(hi))


COMPARISONS = {"greater", "greater_equal", "less", "less_equal", "equal", "not_equal",
               "isfinite", "isnan", "isinf", "sign"}
UFUNCS = {
    "add": Tensor.__add__, "subtract": Tensor.__sub__, "multiply": Tensor.__mul__,
    "divide": Tensor.__truediv__, "true_divide": Tensor.__truediv__, "power": Tensor.__pow__,
    "matmul": Tensor.__matmul__, "negative": Tensor.__neg__, "exp": Tensor.exp, "log": Tensor.log,
    "sqrt": Tensor.sqrt, "tanh": Tensor.tanh, "absolute": Tensor.abs, "square": lambda x: x * x,
    "maximum": _maximum, "minimum": _minimum, "clip": _clip,
}
FUNCTIONS = {
    "where": where, "clip": _clip, "concatenate": concat, "stack": stack,
    "sum": lambda x, axis=None, keepdims=False: x.sum(axis=axis, keepdims=keepdims),
    "mean": lambda x, axis=None, keepdims=False: x.mean(axis=axis, keepdims=keepdims),
    "reshape": lambda x, shape: x.reshape(shape),
    "transpose": lambda x, axes=None: x.transpose(*(axes or ())),
}


def array_ufunc(ufunc, method, *inputs, **kwargs):
    """``Tensor.__array_ufunc__``: a plain call of a ufunc with at least one Tensor input.

    >>> x = td.Tensor(np.array([0.0, 1.0]), requires_grad=True)
    >>> y = np.exp(x)                        # NumPy's ufunc returns a Tensor that keeps the graph
    >>> type(y).__name__, y.requires_grad
    ('Tensor', True)
    """
    if method != "__call__" or kwargs:                  # reductions, out=..., where=...: not supported
        return NotImplemented
    name = ufunc.__name__
    if name in COMPARISONS:                             # no gradient through a comparison
        return ufunc(*(unwrap(x) for x in inputs))
    fn = UFUNCS.get(name)
    if fn is None:
        return NotImplemented
    first = next(x for x in inputs if isinstance(x, Tensor))
    if name == "power" and not isinstance(inputs[1], Tensor):   # a constant exponent: the pow primitive
        return inputs[0] ** inputs[1] if isinstance(inputs[0], Tensor) else fn(first.lift(inputs[0]), inputs[1])
    return fn(*(first.lift(x) for x in inputs))


def array_function(func, args, kwargs):
    """``Tensor.__array_function__``: a NumPy function with a Tensor among its arguments.

    >>> x = td.Tensor(np.array([3.0, -1.0]), requires_grad=True)
    >>> np.maximum(x, 0.0).sum().backward()  # a NumPy function on a Tensor, differentiated
    >>> x.grad.tolist()
    [1.0, 0.0]
    """
    fn = FUNCTIONS.get(func.__name__)
    if fn is None:
        return NotImplemented
    return fn(*args, **kwargs)


# Installed on the class when tinydiff is imported (tinydiff/__init__.py imports this
# module), so that the engine itself never imports NumPy's dispatch: imports point one way.
def _tensor_array_ufunc(self, ufunc, method, *inputs, **kwargs):
    return array_ufunc(ufunc, method, *inputs, **kwargs)


def _tensor_array_function(self, func, types, args, kwargs):
    return array_function(func, args, kwargs)


Tensor.__array_ufunc__ = _tensor_array_ufunc
Tensor.__array_function__ = _tensor_array_function
