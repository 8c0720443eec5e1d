"""A reverse-mode automatic differentiation engine over ``numpy.ndarray``.

A :class:`Tensor` wraps an array (``.data``) and, when it takes part in a computation
that needs gradients, remembers its parents and a ``backward`` closure. Calling
``loss.backward()`` visits the graph in reverse topological order and hands each
node's gradient to its closure, which returns the gradients of its parents.

Only these **primitives** have a hand-written backward; each backward sits right
next to its forward::

    add  sub  mul  div  pow(scalar)  matmul
    exp  log  tanh  sigmoid  relu
    sum  max  reshape  transpose  getitem  concat  where  astype

Everything else is **composed** from them and needs no backward of its own:
neg, sqrt, abs, mean, clip, stack, pow with a Tensor exponent, and in
``tinydiff.functional`` softmax, log-softmax and logsumexp.

Three rules make the gradients right:

1. *Topological order.* A node's gradient is complete only when every node that
   uses it has been visited, so we sort the graph once and walk it backwards.
2. *Accumulation.* A tensor used twice gets the sum of both contributions.
3. *Undoing broadcasting.* If ``a`` of shape (3, 1) was broadcast against (3, 4),
   the gradient flowing back has shape (3, 4); :func:`unbroadcast` sums it back to (3, 1).

The engine imports only NumPy, and two things live outside it so that this file stays
the textbook: ``tinydiff/interop.py`` installs NumPy's dispatch
hooks (``np.exp(t)`` returns a Tensor with gradients, so the pure-NumPy math in
``tinydiff.gaussian`` trains models without knowing Tensors exist), and ops with a
hand-written backward of their own are built on ``Tensor.from_op`` outside this file:
the plain convolution in ``tinydiff/nn/conv.py`` and the fast kernels in ``tinydiff/fast``.

Gradients are kept only on leaves (tensors you created with ``requires_grad=True``);
intermediate gradients are freed as soon as they have been passed on, as in PyTorch.
"""
from __future__ import annotations

import contextlib

import numpy as np

_GRAD_ENABLED = True


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record no graph (for sampling and evaluation).

    >>> w = td.Tensor(np.array([2.0]), requires_grad=True)
    >>> with td.no_grad():
    ...     y = w * 3.0
    >>> y.requires_grad, (w * 3.0).requires_grad
    (False, True)
    """
    global _GRAD_ENABLED
    previous, _GRAD_ENABLED = _GRAD_ENABLED, False
    try:
        yield
    finally:
        _GRAD_ENABLED = previous


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()``: whether new operations record a graph.

    >>> with td.no_grad():
    ...     print(td.engine.is_grad_enabled())
    False
    """
    return _GRAD_ENABLED


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added or stretched, giving ``shape``.

    >>> g = np.ones((4, 3))                  # the gradient of a (3,) bias added to a (4, 3) batch
    >>> td.engine.unbroadcast(g, (3,)).tolist()
    [4.0, 4.0, 4.0]
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:                                   # leading axes that broadcasting prepended
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:                                   # size-1 axes that were stretched
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


class Tensor:
    """An n-dimensional array that can record how it was computed.

    ``Tensor(data, requires_grad=False)``: Python numbers and lists become float32;
    NumPy arrays and NumPy scalars keep their dtype (so float64 works for gradient checks).

    >>> x = td.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    >>> y = (x * x).sum()                    # y = x_1^2 + x_2^2
    >>> y.backward()
    >>> x.grad.tolist()                      # dy/dx = 2x
    [2.0, -4.0]
    >>> td.Tensor([1, 2]).dtype              # Python numbers become float32
    dtype('float32')
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward")

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        elif isinstance(data, np.generic):          # NumPy scalars (0-d results) keep their dtype
            data = np.asarray(data)
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data, dtype=np.float32)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"requires_grad needs a floating dtype, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None

    @classmethod
    def from_op(cls, data: np.ndarray, parents, backward) -> "Tensor":
        """Make the output of an op. ``backward(grad_out)`` returns one gradient per parent
        (or None). The graph is recorded only if grad mode is on and a parent needs it."""
        out = cls(data)
        if _GRAD_ENABLED and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = tuple(parents)
            out._backward = backward
        return out

    # ------------------------------------------------------------------ backward
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)

        order, seen, stack = [], set(), [(self, False)]
        while stack:                                # iterative post-order DFS: no recursion limit
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)

        grads = {id(self): grad}
        for node in reversed(order):                # children before parents
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:              # a leaf: keep its gradient
                g = np.array(g, dtype=node.dtype)   # own, writable copy
                node.grad = g if node.grad is None else node.grad + g
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(np.asarray(pg), parent.shape)
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    # ------------------------------------------------------------------ basics
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    T = property(lambda self: self.transpose())

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{flag})"

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def __array__(self, dtype=None, copy=None):
        if self.requires_grad:
            raise TypeError("this Tensor requires grad; use t.detach().numpy() to get its array")
        return self.data if dtype is None else self.data.astype(dtype)

    def lift(self, other) -> "Tensor":
        """``other`` as a Tensor: a Tensor as is, an array wrapped, a Python number given this
        tensor's dtype (so ``x * 2`` on float32 stays float32: no float64 creep)."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, np.ndarray):
            return Tensor(other)
        return Tensor(np.asarray(other, dtype=self.dtype if self.dtype.kind == "f" else None))

    # ------------------------------------------------------------------ primitives: arithmetic
    def __add__(self, other):
        b = self.lift(other)
        return Tensor.from_op(self.data + b.data, (self, b), lambda g: (g, g))

    def __sub__(self, other):
        b = self.lift(other)
        return Tensor.from_op(self.data - b.data, (self, b), lambda g: (g, -g))

    def __mul__(self, other):
        a, b = self, self.lift(other)
        return Tensor.from_op(a.data * b.data, (a, b), lambda g: (g * b.data if a.requires_grad else None,
                                                                 g * a.data if b.requires_grad else None))

    def __truediv__(self, other):
        a, b = self, self.lift(other)
        out = a.data / b.data
        return Tensor.from_op(out, (a, b), lambda g: (g / b.data, -g * out / b.data))

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):                    # a**b = exp(b log a), composed
            return (exponent * self.log()).exp()
        p = np.asarray(exponent, dtype=self.dtype)          # a constant exponent (scalar or array)
        a = self
        return Tensor.from_op(a.data ** p, (a,), lambda g: (g * p * a.data ** (p - 1),))

    def __matmul__(self, other):
        a, b = self, self.lift(other)
        if a.ndim == 1:                                     # (k,) @ (..., k, m): as a row, composed
            return (a.reshape(1, -1) @ b).reshape(*b.shape[:-2], b.shape[-1])
        if b.ndim == 1:                                     # (..., n, k) @ (k,): as a column
            return (a @ b.reshape(-1, 1)).reshape(a.shape[:-1])

        def backward(g):                                    # g: (..., n, m); skip unneeded GEMMs
            return (g @ np.swapaxes(b.data, -1, -2) if a.requires_grad else None,
                    np.swapaxes(a.data, -1, -2) @ g if b.requires_grad else None)

        return Tensor.from_op(a.data @ b.data, (a, b), backward)

    def __radd__(self, other):
        return self.lift(other) + self

    def __rsub__(self, other):
        return self.lift(other) - self

    def __rmul__(self, other):
        return self.lift(other) * self

    def __rtruediv__(self, other):
        return self.lift(other) / self

    def __rpow__(self, other):
        return self.lift(other) ** self

    def __rmatmul__(self, other):
        return self.lift(other) @ self

    def __neg__(self):
        return self * -1.0

    # comparisons compare data and return plain boolean arrays (no gradient through a test)
    def __lt__(self, other):
        return self.data < unwrap(other)

    def __le__(self, other):
        return self.data <= unwrap(other)

    def __gt__(self, other):
        return self.data > unwrap(other)

    def __ge__(self, other):
        return self.data >= unwrap(other)

    # ------------------------------------------------------------------ primitives: elementwise
    def exp(self):
        out = np.exp(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * out,))

    def log(self):
        x = self.data
        return Tensor.from_op(np.log(x), (self,), lambda g: (g / x,))

    def tanh(self):
        out = np.tanh(self.data)
        return Tensor.from_op(out, (self,), lambda g: (g * (1 - out * out),))

    def sigmoid(self):
        out = 0.5 * (np.tanh(0.5 * self.data) + 1)          # = 1/(1+e^-x), without overflow
        return Tensor.from_op(out, (self,), lambda g: (g * out * (1 - out),))

    def relu(self):
        x = self.data
        return Tensor.from_op(np.maximum(x, 0), (self,), lambda g: (g * (x > 0),))

    def astype(self, dtype):
        src = self.dtype
        return Tensor.from_op(self.data.astype(dtype), (self,), lambda g: (g.astype(src),))

    # ------------------------------------------------------------------ primitives: reductions
    def sum(self, axis=None, keepdims=False):
        shape = self.shape

        def backward(g):
            if axis is not None and not keepdims:
                g = np.expand_dims(g, axis)
            return (np.broadcast_to(g, shape),)

        return Tensor.from_op(self.data.sum(axis=axis, keepdims=keepdims), (self,), backward)

    def max(self, axis=None, keepdims=False):
        x = self.data
        top = x.max(axis=axis, keepdims=True)

        def backward(g):                                    # ties share the gradient equally
            if axis is not None and not keepdims:
                g = np.expand_dims(g, axis)
            mask = x == top
            return (g * mask / mask.sum(axis=axis, keepdims=True),)

        out = top if keepdims else (top.reshape(()) if axis is None else np.squeeze(top, axis))
        return Tensor.from_op(out, (self,), backward)

    # ------------------------------------------------------------------ primitives: shape
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        src = self.shape
        return Tensor.from_op(self.data.reshape(shape), (self,), lambda g: (g.reshape(src),))

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = axes or tuple(reversed(range(self.ndim)))
        inverse = tuple(np.argsort(axes))
        return Tensor.from_op(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),))

    permute = transpose

    def __getitem__(self, index):
        index = unwrap(index) if isinstance(index, Tensor) else index
        if isinstance(index, tuple):
            index = tuple(unwrap(i) for i in index)
        src, dtype = self.shape, self.dtype
        fancy = isinstance(index, (np.ndarray, list)) or (
            isinstance(index, tuple) and any(isinstance(i, (np.ndarray, list)) for i in index))

        def backward(g):
            full = np.zeros(src, dtype=dtype)
            if fancy:
                np.add.at(full, index, g)                   # repeated indices must add up
            else:
                full[index] = g
            return (full,)

        return Tensor.from_op(self.data[index], (self,), backward)

    # ------------------------------------------------------------------ composed
    def sqrt(self):
        return self ** 0.5

    def abs(self):
        return self * np.sign(self.data)

    def mean(self, axis=None, keepdims=False):
        total = self.sum(axis=axis, keepdims=keepdims)
        return total * (total.size / self.size)

    def clip(self, lo=None, hi=None):
        inside = np.ones(self.shape, dtype=bool)
        if lo is not None:
            inside &= self.data >= lo
        if hi is not None:
            inside &= self.data <= hi
        return where(inside, self, np.clip(self.data, lo, hi))


def unwrap(x):
    """The array inside a Tensor; anything else is returned unchanged.

    >>> td.engine.unwrap(td.Tensor(np.array([1.0]))), td.engine.unwrap(3)
    (array([1.]), 3)
    """
    return x.data if isinstance(x, Tensor) else x


def tensor(data, requires_grad: bool = False) -> Tensor:
    """``Tensor(data, requires_grad)``, spelled like ``torch.tensor``.

    >>> td.tensor([[1.0, 2.0]]).shape
    (1, 2)
    """
    return Tensor(data, requires_grad=requires_grad)


def where(cond, a, b) -> Tensor:
    """Elementwise ``a if cond else b``; the gradient goes to the branch that was taken.

    >>> a = td.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> td.where(np.array([True, False]), a, 0.0).sum().backward()
    >>> a.grad.tolist()                      # only the taken branch gets a gradient
    [1.0, 0.0]
    """
    cond = np.asarray(unwrap(cond), dtype=bool)
    first = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else Tensor(np.asarray(a))
    a, b = first.lift(a), first.lift(b)
    return Tensor.from_op(np.where(cond, a.data, b.data), (a, b),
                          lambda g: (np.where(cond, g, 0), np.where(cond, 0, g)))


def concat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; backward splits the gradient at the seams.

    >>> a, b = td.Tensor(np.ones((2, 3))), td.Tensor(np.zeros((1, 3)))
    >>> td.concat([a, b], axis=0).shape
    (3, 3)
    """
    tensors = [t if isinstance(t, Tensor) else Tensor(np.asarray(t)) for t in tensors]
    seams = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    arrays = [t.data for t in tensors]
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    # the result takes the memory layout of the first input (e.g. channels-last stays so)
    out = np.empty_like(arrays[0], dtype=np.result_type(*arrays), shape=shape)
    np.concatenate(arrays, axis=axis, out=out)
    return Tensor.from_op(out, tensors, lambda g: tuple(np.split(g, seams, axis=axis)))


def stack(tensors, axis: int = 0) -> Tensor:
    """Join tensors along a new axis (composed: expand each, then concat).

    >>> td.stack([td.Tensor(np.ones(3)), td.Tensor(np.zeros(3))], axis=1).shape
    (3, 2)
    """
    tensors = [t if isinstance(t, Tensor) else Tensor(np.asarray(t)) for t in tensors]
    ax = axis if axis >= 0 else axis + tensors[0].ndim + 1
    return concat([t.reshape(*t.shape[:ax], 1, *t.shape[ax:]) for t in tensors], axis=ax)
