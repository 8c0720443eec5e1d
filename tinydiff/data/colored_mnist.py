"""Coloured MNIST: each digit drawn in one colour of a fixed palette, for two-attribute models.

A grey MNIST digit (intensity k / 255 in [0, 1]) becomes an RGB image by multiplying its
intensity with a palette colour c (an RGB triple whose brightest channel is 1):

    x[channel, i, j] = c[channel] * intensity[i, j]            3 x 28 x 28 on black

so every example carries two labels, ``y = [digit, colour]``, and a model conditioned on
both (``UNet(in_channels=3, num_classes=(10, 6))``) can be asked for any of the 10 x 6
combinations. Nothing is stored: colours are drawn on the fly from the Generator the
Trainer passes (``ColoredMNIST.sample(n, rng)``), so a seed fixes every batch, and a
resumed run sees the same batches as an uninterrupted one.

Held-out pairs test whether a model composes attributes it has only seen apart. By default
digit d is never shown in colour ``d % 6`` (``HELD_OUT``: the diagonal of the digit x
colour grid, 10 of the 60 pairs), so each digit is seen in 5 colours and each colour with
8 or 9 digits, and the 10 held-out pairs can still be asked for at sampling time.

Two measurements read a generated image back (``examples/color_digits.py``):

    to_grey(images)          the brightest channel: for c * intensity with max(c) = 1 it is
                             the intensity itself, the grey digit the MNIST scorer reads
    nearest_colour(images)   the palette colour nearest to the mean colour of the stroke
                             pixels (brightest channel >= 0.5), after scaling that mean so
                             its brightest channel is 1: faint and bright strokes of one
                             colour read the same
"""
from __future__ import annotations

import numpy as np

from ..checks import check_count, check_rng

# The palette, in hue order around the colour wheel; every colour's brightest channel is 1.
PALETTE = np.array([
    [1.00, 0.15, 0.15],     # 0 red
    [1.00, 0.90, 0.10],     # 1 yellow
    [0.15, 1.00, 0.15],     # 2 green
    [0.10, 0.95, 1.00],     # 3 cyan
    [0.25, 0.45, 1.00],     # 4 blue (lightened: pure blue on black is hard to see)
    [1.00, 0.20, 1.00],     # 5 magenta
], dtype=np.float64)
COLOUR_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")
NUM_DIGITS = 10
# Digit d is never drawn in colour d % 6 while training: one held-out colour per digit.
HELD_OUT = tuple((d, d % len(PALETTE)) for d in range(NUM_DIGITS))
STROKE_THRESHOLD = 0.5      # a pixel is stroke when its brightest channel reaches this


def _check_palette(palette) -> np.ndarray:
    p = np.asarray(palette, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 2 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"palette: expected RGB colours [K >= 2, 3] in [0, 1], got shape {p.shape}")
    if not np.allclose(p.max(axis=1), 1.0):
        raise ValueError("palette: every colour's brightest channel must be 1 (so to_grey recovers the "
                         f"intensity), got maxima {p.max(axis=1).round(3).tolist()}")
    return p


def held_out_mask(held_out=HELD_OUT, num_colours: int = len(PALETTE)) -> np.ndarray:
    """bool [10, num_colours]: True where the (digit, colour) pair is held out of training.

    held_out: pairs (digit, colour). Every digit must keep at least one colour and every
    colour at least one digit, or the model could never learn that label at all.

    >>> mask = td.data.held_out_mask()
    >>> mask.shape, int(mask.sum()), [int(c) for c in mask.argmax(axis=1)]   # colour d % 6 for digit d
    ((10, 6), 10, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    """
    mask = np.zeros((NUM_DIGITS, num_colours), dtype=bool)
    for pair in held_out:
        d, c = (int(v) for v in pair)
        if not (0 <= d < NUM_DIGITS and 0 <= c < num_colours):
            raise ValueError(f"held_out: pair {tuple(pair)} is not a (digit 0..9, colour 0..{num_colours - 1})")
        mask[d, c] = True
    if mask.all(axis=1).any() or mask.all(axis=0).any():
        raise ValueError("held_out: every digit needs at least one colour, and every colour one digit, left "
                         f"for training; got digits {np.flatnonzero(mask.all(axis=1)).tolist()} and colours "
                         f"{np.flatnonzero(mask.all(axis=0)).tolist()} with none")
    return mask


def colorize(images, colours, palette=PALETTE) -> np.ndarray:
    """Grey digits times palette colours: x = c * intensity, in model space [-1, 1].

    images: uint8 [N, 28, 28] (intensity k / 255); colours: int [N], indices into palette.
    Returns float32 [N, 3, 28, 28] in [-1, 1] (x = 2 c intensity - 1: black is -1).

    >>> x = td.data.colorize(np.full((1, 2, 2), 255, np.uint8), np.array([0]))   # full-intensity red
    >>> x.shape, [round(float(v), 2) for v in x[0, :, 0, 0]]
    ((1, 3, 2, 2), [1.0, -0.7, -0.7])
    """
    palette = _check_palette(palette)
    images, colours = np.asarray(images), np.asarray(colours)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"images: expected uint8 [N, H, W], got {images.dtype} with shape {images.shape}")
    if colours.shape != (len(images),) or colours.dtype.kind not in "iu" or (
            colours.size and (colours.min() < 0 or colours.max() >= len(palette))):
        raise ValueError(f"colours: expected {len(images)} ints in 0..{len(palette) - 1}, got {colours!r}")
    intensity = images.astype(np.float32) / np.float32(255.0)                    # [N, H, W]
    rgb = palette.astype(np.float32)[colours][:, :, None, None] * intensity[:, None]   # [N, 3, H, W]
    return rgb * np.float32(2.0) - np.float32(1.0)


def to_grey(images) -> np.ndarray:
    """The brightest channel of RGB images [N, 3, H, W] in [0, 1] -> [N, H, W].

    For a palette colour (brightest channel 1) times an intensity this is the intensity:
    the grey digit the MNIST scorer was trained on, whatever the colour. (A luminance
    weighting would turn a blue digit into a faint one.)

    >>> td.data.to_grey(np.array([[[[0.2]], [[0.5]], [[0.1]]]])).tolist()
    [[[0.5]]]
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images: expected RGB images [N, 3, H, W], got shape {x.shape}")
    return x.max(axis=1)


def nearest_colour(images, palette=PALETTE, threshold: float = STROKE_THRESHOLD) -> np.ndarray:
    """The palette index nearest to each image's stroke colour, int64 [N] (-1: no stroke).

    images: RGB [N, 3, H, W] in [0, 1]. Stroke pixels are those whose brightest channel is at
    least ``threshold``; their mean colour m is scaled to m / max(m), so that its brightest
    channel is 1 like the palette's, and compared with every palette colour by Euclidean
    distance. An image with no stroke pixel (a blank sample) gets -1, which never matches.

    >>> img = np.zeros((2, 3, 4, 4)); img[0, :, 1:3, 1:3] = 0.7 * td.data.PALETTE[4][:, None, None]
    >>> td.data.nearest_colour(img).tolist()                  # a faint blue square; a blank image
    [4, -1]
    """
    palette = _check_palette(palette)
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images: expected RGB images [N, 3, H, W] in [0, 1], got shape {x.shape}")
    stroke = x.max(axis=1) >= threshold                                         # [N, H, W]
    count = stroke.sum(axis=(1, 2))                                             # [N]
    mean = (x * stroke[:, None]).sum(axis=(2, 3)) / np.maximum(count, 1)[:, None]   # [N, 3]
    mean = mean / np.maximum(mean.max(axis=1, keepdims=True), 1e-12)
    distance = np.linalg.norm(mean[:, None, :] - palette[None], axis=2)         # [N, K]
    return np.where(count > 0, distance.argmin(axis=1), -1).astype(np.int64)


class ColoredMNIST:
    """MNIST digits in palette colours, drawn on the fly: ``sample(n, rng)`` -> (x, {"y": y}).

    Args:
        images: uint8 [N, 28, 28] grey digits; labels: int [N] digits 0..9.
        held_out: (digit, colour) pairs never drawn (default ``HELD_OUT``: colour d % 6 for
            digit d; () holds nothing out).
        palette: RGB [K, 3], each colour's brightest channel 1 (default ``PALETTE``, K = 6).

    ``sample`` draws n digits uniformly (with replacement), then for each a colour uniformly
    among those its digit may take; x is float32 [n, 3, 28, 28] in [-1, 1] and y is int64
    [n, 2] = (digit, colour), the labels of ``UNet(num_classes=(10, K))``. A Trainer given
    this dataset passes its own Generator, so the seed fixes every batch.

    >>> ds = td.data.ColoredMNIST(np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3]))
    >>> x, kw = ds.sample(5, np.random.default_rng(0))
    >>> x.shape, kw["y"].shape, bool(ds.allowed[kw["y"][:, 0], kw["y"][:, 1]].all())   # never a held-out pair
    ((5, 3, 28, 28), (5, 2), True)
    """

    def __init__(self, images, labels, held_out=HELD_OUT, palette=PALETTE):
        self.images = np.asarray(images)
        self.labels = np.asarray(labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 3 or len(self.images) == 0:
            raise ValueError(f"images: expected uint8 [N >= 1, 28, 28], got {self.images.dtype} "
                             f"with shape {self.images.shape}")
        if self.labels.shape != (len(self.images),) or self.labels.dtype.kind not in "iu" or (
                self.labels.min() < 0 or self.labels.max() >= NUM_DIGITS):
            raise ValueError(f"labels: expected {len(self.images)} digits 0..9, got {self.labels!r}")
        self.palette = _check_palette(palette)
        self.held_out = tuple(tuple(int(v) for v in pair) for pair in held_out)
        self.allowed = ~held_out_mask(self.held_out, len(self.palette))          # [10, K]
        # choices[d, :counts[d]] lists the colours digit d may take, for a vectorised draw.
        self.counts = self.allowed.sum(axis=1)
        self.choices = np.array([np.flatnonzero(row).tolist() + [0] * (len(row) - row.sum())
                                 for row in self.allowed], dtype=np.int64)

    @property
    def num_colours(self) -> int:
        return len(self.palette)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, n: int, rng):
        """n coloured digits and their labels: (x [n, 3, 28, 28] float32, {"y": int64 [n, 2]}).
        Draws from rng: the digit indices [n], then one colour choice per digit [n]."""
        n, rng = check_count(n), check_rng(rng)
        idx = rng.integers(0, len(self.images), size=n)
        digits = self.labels[idx].astype(np.int64)
        colours = self.choices[digits, rng.integers(0, self.counts[digits])]
        x = colorize(self.images[idx], colours, self.palette)
        return x, {"y": np.stack([digits, colours], axis=1)}

    def __repr__(self):
        return f"ColoredMNIST(n={len(self)}, colours={self.num_colours}, held_out={len(self.held_out)} pairs)"
