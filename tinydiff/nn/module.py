"""``Module``: the container every layer and model is built from, as in ``torch.nn``.

A module owns **parameters** (``Parameter``: a ``Tensor`` that requires grad) and
**submodules**, both found by looking at its attributes, so that::

    class Block(Module):
        def __init__(self):
            super().__init__()
            self.norm = GroupNorm(8, 64)            # -> "norm.weight", "norm.bias"
            self.layers = ModuleList([Linear(64, 64), Linear(64, 64)])   # -> "layers.0.weight", ...

names every parameter exactly as PyTorch would ("blocks.1.norm.bias"), so a
``state_dict`` maps one to one onto the same model written in PyTorch. Like PyTorch,
a module lists its own parameters first (in the order they were assigned), then
each child's. Modules kept in a plain Python list would be invisible to that search,
so assigning one raises a TypeError pointing to ``ModuleList``.

The helpers every layer uses (default initialisation, turning inputs into Tensors)
are in ``helpers.py``; argument checks are in ``tinydiff/checks.py``.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_dtype
from ..engine import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable weight of a Module (always ``requires_grad=True``).

    >>> p = td.nn.Parameter(np.zeros((2, 3), np.float32))
    >>> p.requires_grad, p.shape
    (True, (2, 3))
    """

    __slots__ = ()

    def __init__(self, data: np.ndarray):
        super().__init__(data, requires_grad=True)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


# ---------------------------------------------------------------------- Module
class Module:
    """Base class of layers and models. Subclasses set attributes in ``__init__`` and
    define ``forward``; calling the module calls ``forward``.

    >>> class Affine(td.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.scale = td.nn.Parameter(np.ones(2, np.float32))
    ...         self.shift = td.nn.Linear(2, 2, rng=np.random.default_rng(0))
    ...     def forward(self, x):
    ...         return self.shift(x * self.scale)
    >>> m = Affine()
    >>> sorted(m.state_dict()), m.num_parameters()            # found by attribute, named by path
    (['scale', 'shift.bias', 'shift.weight'], 8)
    >>> m(np.ones((4, 2), np.float32)).shape
    (4, 2)
    """

    training = True         # class default, so a subclass that forgets super().__init__() still works

    def __init__(self):
        self.training = True

    def __setattr__(self, name, value):
        if isinstance(value, (list, tuple)) and any(isinstance(v, (Module, Parameter)) for v in value):
            raise TypeError(f"attribute {name!r} is a plain {type(value).__name__} of modules/parameters, "
                            f"whose parameters would not be found; use ModuleList({name}) instead")
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ discovery
    def named_children(self):
        """(name, module) for each direct submodule, in attribute order."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def _own_parameters(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Parameter)]

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module ("" for itself) and every descendant."""
        out = [(prefix, self)]
        for name, child in self.named_children():
            out += child.named_modules(f"{prefix}.{name}" if prefix else name)
        return out

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return [m for _, m in self.named_children()]

    def _all_named_parameters(self):
        """Every (dotted name, parameter); a parameter shared by two modules appears twice."""
        return [(f"{prefix}.{name}" if prefix else name, p)
                for prefix, module in self.named_modules() for name, p in module._own_parameters()]

    def named_parameters(self):
        """(dotted name, Parameter) pairs, e.g. ("blocks.1.norm.bias", p); shared ones listed once."""
        seen, out = set(), []
        for name, p in self._all_named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append((name, p))
        return out

    def parameters(self):
        """All parameters, each once, in ``named_parameters`` order (a list)."""
        return [p for _, p in self.named_parameters()]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """{dotted name: copy of the parameter's array}; saving it with np.savez is a checkpoint."""
        return {name: p.data.copy() for name, p in self._all_named_parameters()}

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the parameters (in place, cast to each parameter's dtype).

        Checks everything before changing anything: keys the model has but the dict
        lacks (missing), keys the dict has but the model lacks (unexpected), and shape
        mismatches are all listed in one ValueError. With ``strict=False`` missing and
        unexpected keys are allowed (shape mismatches never are). Returns
        ``(missing, unexpected)`` as PyTorch does.
        """
        own = dict(self._all_named_parameters())
        keys = list(state_dict.keys())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in keys if k not in own]
        values = {k: np.asarray(state_dict[k]) for k in keys if k in own}
        mismatched = [f"{k}: checkpoint {v.shape} vs model {own[k].shape}"
                      for k, v in values.items() if v.shape != own[k].shape]
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise ValueError(f"load_state_dict for {type(self).__name__} failed, nothing was loaded:\n  "
                             + "\n  ".join(problems))
        for k, v in values.items():
            own[k].data[...] = v
        return missing, unexpected

    # ------------------------------------------------------------------ modes and housekeeping
    def train(self, mode: bool = True) -> "Module":
        """Set ``training`` on this module and every descendant (Dropout reads it)."""
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``p.grad = None``, PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype) -> "Module":
        """Cast every parameter to ``dtype`` in place, e.g. ``model.astype(np.float64)``
        before a gradient check. Gradients are dropped; a layer that computes arrays of its own
        dtype (``SinusoidalEmbedding``) follows through ``cast_cache``. Returns the module."""
        dtype = check_dtype(dtype)
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for m in self.modules():
            m.cast_cache(dtype)
        return self

    def cast_cache(self, dtype) -> None:
        """Called by ``astype`` on every submodule: a layer holding arrays that are not
        parameters (a lookup table) recomputes them in ``dtype``. Nothing to do by default."""

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self.named_children()]
        if not lines:                                   # a leaf layer: everything on one line
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = ([self.extra_repr()] if self.extra_repr() else []) + lines
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules whose parameters are named "0.weight", "1.bias", ...

    >>> layers = td.nn.ModuleList([td.nn.Linear(2, 2, rng=np.random.default_rng(0)) for _ in range(3)])
    >>> len(layers), list(layers.state_dict())[:2]
    (3, ['0.weight', '0.bias'])
    """

    def __init__(self, modules=()):
        super().__init__()
        object.__setattr__(self, "_items", [])      # a plain list on purpose: named_children reads it
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
        self._items.append(module)
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def named_children(self):
        return [(str(i), m) for i, m in enumerate(self._items)] + super().named_children()

    def __getitem__(self, index):
        if isinstance(index, slice):
            items = self._items[index]
            return Sequential(*items) if isinstance(self, Sequential) else ModuleList(items)
        return self._items[index]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)


class Sequential(ModuleList):
    """Modules applied one after another: ``Sequential(Linear(2, 64), SiLU(), Linear(64, 2))``.

    >>> rng = np.random.default_rng(0)
    >>> net = td.nn.Sequential(td.nn.Linear(2, 64, rng=rng), td.nn.SiLU(), td.nn.Linear(64, 2, rng=rng))
    >>> net(np.ones((8, 2), np.float32)).shape, list(net.state_dict())
    ((8, 2), ['0.weight', '0.bias', '2.weight', '2.bias'])
    """

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self._items:
            x = module(x)
        return x
