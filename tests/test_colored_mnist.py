"""tinydiff.data.colored_mnist: the colouring, its inverse readings, the held-out set and the
seeded draws, each against a hand-made truth (a per-pixel loop, a count, a second draw)."""
import numpy as np
import pytest

import tinydiff as td
from tinydiff.data import COLOUR_NAMES, HELD_OUT, PALETTE, ColoredMNIST, colorize, held_out_mask, nearest_colour
from tinydiff.data import from_model_space, to_grey

RNG = np.random.default_rng(0)
DIGITS = RNG.integers(0, 256, size=(40, 28, 28)).astype(np.uint8)
LABELS = np.arange(40) % 10


def test_palette_has_at_least_six_colours_each_with_brightest_channel_one():
    assert len(PALETTE) >= 6 and len(COLOUR_NAMES) == len(PALETTE)
    np.testing.assert_array_equal(PALETTE.max(axis=1), 1.0)
    assert len({tuple(c) for c in PALETTE}) == len(PALETTE)


def test_colorize_is_colour_times_intensity_per_pixel():
    colours = RNG.integers(0, len(PALETTE), size=len(DIGITS))
    x = from_model_space(colorize(DIGITS, colours))                       # [N, 3, 28, 28] in [0, 1]
    n, i, j = 7, 13, 5
    for ch in range(3):                                                   # one pixel, by hand
        assert abs(x[n, ch, i, j] - PALETTE[colours[n], ch] * DIGITS[n, i, j] / 255) < 1e-6
    np.testing.assert_allclose(to_grey(x), DIGITS / 255.0, atol=1e-6)     # the grey digit comes back


@pytest.mark.parametrize("brightness", [1.0, 0.6])
def test_nearest_colour_reads_every_palette_colour_back_even_faint(brightness):
    colours = np.arange(len(DIGITS)) % len(PALETTE)
    x = from_model_space(colorize(DIGITS, colours)) * brightness
    assert np.array_equal(nearest_colour(x), colours)


def test_held_out_set_is_the_documented_diagonal_and_never_drawn():
    mask = held_out_mask()
    assert [tuple(map(int, p)) for p in np.argwhere(mask)] == [(d, d % 6) for d in range(10)] == list(HELD_OUT)
    ds = ColoredMNIST(DIGITS, LABELS)
    _, kw = ds.sample(5000, np.random.default_rng(1))
    counts = np.zeros((10, len(PALETTE)), int)
    np.add.at(counts, (kw["y"][:, 0], kw["y"][:, 1]), 1)
    assert counts[mask].sum() == 0 and (counts[~mask] > 40).all()          # every other pair is drawn
    with pytest.raises(ValueError, match="every digit needs at least one colour"):
        held_out_mask([(3, c) for c in range(6)])
    with pytest.raises(ValueError, match=r"held_out: pair \(10, 0\)"):
        held_out_mask([(10, 0)])


def test_sample_is_deterministic_from_the_generator_and_labels_match_the_pixels():
    ds = ColoredMNIST(DIGITS, LABELS, held_out=())
    x1, kw1 = ds.sample(64, np.random.default_rng(5))
    x2, kw2 = ds.sample(64, np.random.default_rng(5))
    assert np.array_equal(x1, x2) and np.array_equal(kw1["y"], kw2["y"])
    assert x1.dtype == np.float32 and x1.shape == (64, 3, 28, 28) and kw1["y"].dtype == np.int64
    assert np.array_equal(nearest_colour(from_model_space(x1)), kw1["y"][:, 1])
    # the grey-scale reading (what the scorer sees) is one of the training digits, and its label is y[:, 0]
    grey = np.round(255 * to_grey(from_model_space(x1))).astype(np.uint8)          # [64, 28, 28]
    source = [np.flatnonzero((DIGITS == g).all(axis=(1, 2))) for g in grey]
    assert all(len(i) == 1 and LABELS[i[0]] == d for i, d in zip(source, kw1["y"][:, 0]))
    x3, _ = ds.sample(64, np.random.default_rng(6))
    assert not np.array_equal(x1, x3)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="colours: expected 40 ints in 0..5"):
        colorize(DIGITS, np.full(40, 6))
    with pytest.raises(ValueError, match="images: expected uint8"):
        ColoredMNIST(DIGITS.astype(np.float32), LABELS)
    with pytest.raises(ValueError, match="palette: every colour's brightest channel must be 1"):
        colorize(DIGITS, np.zeros(40, int), palette=PALETTE * 0.5)
    with pytest.raises(ValueError, match=r"images: expected RGB images \[N, 3, H, W\]"):
        to_grey(np.zeros((2, 28, 28)))
