"""Classifier-free guidance (Ho & Salimans 2022): trade diversity for fidelity to a label.

One network learns both eps(x_t, t, y) and eps(x_t, t, null): in training each label is
replaced by a "null" label with probability p (``drop_labels``; the UNet gives every
attribute one extra class for it). At sampling time the two predictions are extrapolated
away from the unconditional one (Ho & Salimans 2022, eq. 6, with their w):

    eps_w = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null)
          = eps(null) + (1 + w) (eps(y) - eps(null))

w = 0 is the conditional model itself; larger w pushes samples toward what makes the label
likely (in score terms: grad log p(x_t | y) + w grad log p(y | x_t), an implicit classifier).
``ClassifierFreeGuidance(model, w)`` is itself a model, so every sampler takes it.

**Negative prompts** (Stable Diffusion's practice): replace the null condition by something
to steer away from, ``ClassifierFreeGuidance(model, w, negative=ids)``:

    eps_w = eps(x_t, t, neg) + (1 + w) (eps(x_t, t, y) - eps(x_t, t, neg))

The unconditional pass is a special negative (the empty prompt), and the formula is the same
``joint_guidance`` with eps(neg) in place of eps(null): the guided step moves toward what
makes y likely *and* away from what makes neg likely. (Stable Diffusion's ``guidance_scale``
is the weight 1 + w: 7.5 there is w = 6.5 here.) w = -1 is the model asked for neg alone.

With several attributes (a digit and a colour) there are two ways to guide:

    joint     eps(null, null) + (1 + w) (eps(d, c) - eps(null, null))           one scale w
    composed  eps(null, null) + sum_a (1 + w_a) (eps(attribute a only) - eps(null, null))
              (compositional guidance, Liu et al. 2022, the AND operator)  one scale per attribute

``joint_guidance`` and ``composed_guidance`` are these two equations on arrays (written with
the weight 1 + w); ``ClassifierFreeGuidance`` makes the model calls and applies them (its
``__call__`` writes eq. 6 out in one line; tests/test_guidance.py ties it to joint_guidance).

Liu et al. and some codebases write the weight as 1 + w (so "weight 1" = no guidance); the
scales here are always Ho & Salimans's w, 0 = no guidance. Both halves (or all 1 + n
variants) run as ONE batched forward pass. With a learned variance (output 2C channels)
only the first C channels, the eps prediction, are guided; the variance channels come from
the conditional pass (joint) or the unconditional one (composed), as in GLIDE. A model that
predicts v or x_0 is guided the same way: both forms weigh the predictions with weights that
sum to 1, and eps is affine in v (or x_0) at a fixed x_t, so the guided v gives the guided eps.
"""
from __future__ import annotations

import numpy as np

from .checks import check_rng
from .engine import unwrap


def _as_matrix(y, n_attributes: int) -> np.ndarray:
    """Labels int [B] or [B, n] -> int [B, n]."""
    y = np.asarray(unwrap(y))
    if y.dtype.kind not in "iu":
        raise TypeError(f"y: expected integer labels, got dtype {y.dtype}")
    if y.ndim == 1 and n_attributes == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != n_attributes:
        raise ValueError(f"y: expected labels [B] or [B, {n_attributes}] for {n_attributes} attribute(s), "
                         f"got shape {y.shape}")
    return y


def drop_labels(y, p: float, null_labels, rng) -> np.ndarray:
    """Replace each label by its attribute's null label with probability p, independently.

    y: int [B] or [B, n_attributes]; null_labels: int or one per attribute (the UNet's
    ``null_labels``); rng: numpy.random.Generator. Returns a new array shaped like y.
    Each attribute drops on its own, so a two-attribute model also sees (d, null),
    (null, c) and (null, null), which composed guidance needs.

    >>> y = np.arange(8)
    >>> td.drop_labels(y, 0.5, null_labels=10, rng=np.random.default_rng(0)).tolist()   # 10 = the null label
    [0, 10, 10, 10, 4, 5, 6, 7]
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a label-dropout probability in [0, 1], got {p!r}")
    rng = check_rng(rng)
    null = np.atleast_1d(np.asarray(null_labels, dtype=np.int64))
    y_in = np.asarray(unwrap(y))
    matrix = _as_matrix(y_in, len(null))
    drop = rng.random(matrix.shape) < p                          # [B, n]
    out = np.where(drop, null[None, :], matrix)
    return out.reshape(y_in.shape).astype(y_in.dtype, copy=False)


class ClassifierFreeGuidance:
    """A guided model: ``ClassifierFreeGuidance(model, w)(x_t, t, y=labels)`` -> eps_w as above.

    Args:
        model: a conditional model called as model(x_t, t, y=labels), e.g. UNet(num_classes=10).
        scale: w (a float: joint guidance) or one w per attribute (a tuple: composed guidance).
        null_labels: the null label of each attribute; default ``model.null_labels``.
        negative: labels [n] or [B, n] to use instead of the null labels in the unconditional
            pass (joint guidance only): a negative prompt's token ids for a TextUNet.
    Returns an ndarray [B, C_out, ...] (sampling needs no graph). y=None calls the model
    unguided (nothing to guide toward).

    >>> def model(x_t, t, y):                         # eps(x, t, y): 1 for label 0, 0 for the null label 1
    ...     return np.where(y[:, :1] == 0, 1.0, 0.0) * np.ones_like(x_t)
    >>> guided = td.ClassifierFreeGuidance(model, 2.0, null_labels=1)
    >>> guided(np.zeros((1, 2)), np.array([5]), y=np.array([0])).tolist()   # (1 + w) 1 - w 0
    [[3.0, 3.0]]
    """

    def __init__(self, model, scale, null_labels=None, negative=None):
        null = getattr(model, "null_labels", None) if null_labels is None else null_labels
        if null is None or len(np.atleast_1d(null)) == 0:
            raise ValueError("null_labels: the model has no null label (is it conditional?); pass "
                             "null_labels= or build the model with num_classes=...")
        self.model = model
        self.null = np.atleast_1d(np.asarray(null, dtype=np.int64))
        self.composed = isinstance(scale, (tuple, list, np.ndarray))
        self.scales = np.atleast_1d(np.asarray(scale, dtype=np.float64))
        if not np.all(np.isfinite(self.scales)) or np.any(self.scales < -1):
            raise ValueError(f"scale: expected guidance scales w >= -1 (0 = no guidance, -1 = the unconditional "
                             f"model), got {scale!r}")
        if self.composed and len(self.scales) != len(self.null):
            raise ValueError(f"scale: composed guidance needs one scale per attribute ({len(self.null)}), "
                             f"got {scale!r}")
        self.negative = None if negative is None else np.asarray(unwrap(negative))
        if self.negative is not None and (self.composed or self.negative.dtype.kind not in "iu" or
                                          self.negative.shape[-1:] != self.null.shape):
            raise ValueError(f"negative: expected integer labels [{len(self.null)}] or [B, {len(self.null)}] with "
                             f"one guidance scale, got {self.negative.dtype} {self.negative.shape} and scale {scale!r}")

    def __call__(self, x_t, t, y=None, **model_kwargs):
        if y is None:
            return unwrap(self.model(x_t, t, **model_kwargs))
        y = _as_matrix(y, len(self.null))                           # [B, n]
        null = np.broadcast_to(self.null if self.negative is None else self.negative, y.shape)   # or neg
        C = x_t.shape[1]
        if self.composed:
            return self._composed(x_t, t, y, null, model_kwargs)
        w = self.scales[0]
        if w == 0:                                                  # w = 0: the conditional model, exactly
            return unwrap(self.model(x_t, t, y=y, **model_kwargs))
        out = self._batched(x_t, t, [y, null], model_kwargs)        # [2, B, C_out, ...], one forward pass
        eps_cond, eps_null = out[0, :, :C], out[1, :, :C]           # eps(x_t, t, y), eps(x_t, t, null or neg)
        guided = out[0].copy()                                      # variance channels (if any): the conditional pass's
        # Ho & Salimans 2022, eq. 6: eps_w = (1 + w) eps(x_t, y) - w eps(x_t, null), written as
        guided[:, :C] = eps_null + (1 + w) * (eps_cond - eps_null)  # (joint_guidance with weight 1 + w)
        return guided.astype(out.dtype, copy=False)

    def _composed(self, x_t, t, y, null, model_kwargs):
        """Composed guidance (composed_guidance): the null labels, then each attribute alone."""
        C, n = x_t.shape[1], len(self.null)
        variants = [null] + [np.where(np.arange(n) == a, y, null) for a in range(n)]
        out = self._batched(x_t, t, variants, model_kwargs)         # [1 + n, B, C_out, ...]
        guided = out[0].copy()                                      # variance channels from the unconditional pass (GLIDE)
        guided[:, :C] = composed_guidance(out[0, :, :C], out[1:, :, :C], 1 + self.scales)
        return guided.astype(out.dtype, copy=False)

    def _batched(self, x_t, t, labels, model_kwargs):
        """The model on m copies of the batch, one per label array, as ONE forward pass: [m, B, C_out, ...]."""
        B, m = x_t.shape[0], len(labels)
        kwargs = {k: (np.concatenate([v] * m) if isinstance(v, np.ndarray) and len(v) == B else v)
                  for k, v in model_kwargs.items()}
        out = unwrap(self.model(np.concatenate([x_t] * m), np.concatenate([np.asarray(t)] * m),
                                y=np.concatenate(labels), **kwargs))
        return out.reshape(m, B, *out.shape[1:])


def joint_guidance(eps_null, eps_cond, weight):
    """Classifier-free guidance with one weight on all labels at once (Ho & Salimans 2022, eq. 6):

        eps = eps(null) + weight (eps(y) - eps(null))          weight = 1 + w

    eps_null, eps_cond: [B, *D] the unconditional and the conditional predictions (for several
    attributes, eps(null, null) and eps(d, c)). weight 0 is the unconditional model, 1 the
    conditional one, above 1 extrapolates past it. ``ClassifierFreeGuidance(model, w)`` calls
    this with weight = 1 + w. Returns [B, *D].

    >>> td.guidance.joint_guidance(np.zeros(2), np.ones(2), 3.0).tolist()
    [3.0, 3.0]
    """
    return eps_null + weight * (eps_cond - eps_null)


def composed_guidance(eps_null, eps_each, weights):
    """Compositional classifier-free guidance, one weight per attribute (Liu et al. 2022,
    "Compositional Visual Generation with Composable Diffusion Models", their conjunction
    operator AND: a product of the conditionals, read as a sum of scores), for a digit d and
    a colour c:

        eps = eps(null, null) + weight_d (eps(d, null) - eps(null, null))
                              + weight_c (eps(null, c) - eps(null, null))

    eps_null: [B, *D] eps(null, null); eps_each: [n, B, *D], row a = the prediction with only
    attribute a given (the others null); weights: n numbers, one per attribute. All weights 0
    is the unconditional model; each weight says how hard its own attribute is pushed, so the
    digit and the colour can be guided separately. ``ClassifierFreeGuidance(model, (w_d, w_c))``
    calls this with weights 1 + w_a. Returns [B, *D].

    >>> eps_null, eps_each = np.zeros((1, 2)), np.array([[[1.0, 0.0]], [[0.0, 1.0]]])   # [2, 1, 2]
    >>> td.guidance.composed_guidance(eps_null, eps_each, [2.0, 0.5]).tolist()
    [[2.0, 0.5]]
    """
    eps_each = np.asarray(eps_each)
    weights = np.asarray(weights, dtype=np.float64)
    if eps_each.shape[1:] != np.shape(eps_null) or weights.shape != (len(eps_each),):
        raise ValueError(f"composed_guidance: expected eps_each [n, *eps_null.shape] = [n, "
                         f"{', '.join(map(str, np.shape(eps_null)))}] and n weights, got eps_each "
                         f"{eps_each.shape} and weights {weights.shape}")
    out = eps_null.copy()
    for eps_a, weight in zip(eps_each, weights):
        out += weight * (eps_a - eps_null)
    return out


def apply_guidance(model, guidance):
    """The model a sampler should call: ``model`` itself for guidance=None; a
    ClassifierFreeGuidance for a scale w (a number, or one per attribute); or
    ``guidance(model)`` for a function (any other guidance rule).

    >>> model = lambda x_t, t, y=None: x_t
    >>> td.guidance.apply_guidance(model, None) is model
    True
    >>> td.guidance.apply_guidance(model, lambda m: "any rule: model -> guided model")
    'any rule: model -> guided model'
    """
    if guidance is None:
        return model
    if callable(guidance):
        return guidance(model)
    return ClassifierFreeGuidance(model, guidance)
