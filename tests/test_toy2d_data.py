"""Tests for tinydiff.data.toy2d: densities against closed forms, samplers against moments."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinydiff.data import (DATASETS, Checkerboard, Gaussian, GaussianMixture, SwissRoll, TwoMoons,
                           make_dataset)


def grid(lo, hi, n):
    """Midpoints of an n x n grid on [lo, hi]^2 and the area of one cell."""
    h = (hi - lo) / n
    c = lo + h * (np.arange(n) + 0.5)
    gx, gy = np.meshgrid(c, c, indexing="ij")
    return np.stack([gx, gy], axis=-1), h * h                       # [n, n, 2]


# ---------------------------------------------------------------- densities
@pytest.mark.parametrize("ds, lo, hi", [
    (GaussianMixture(), -3.0, 3.0),                                  # the 8-mode ring of the toy examples, std 0.1
    (GaussianMixture(means=[[0, 0], [1, 0.5], [-1, 1]], std=0.6, weights=[0.2, 0.5, 0.3]), -6, 6),
    (Gaussian(mean=(0.3, -0.2), std=0.5), -4.0, 4.0),
    (Checkerboard(), -2.5, 2.5),
])
def test_log_prob_integrates_to_one(ds, lo, hi):
    x, cell = grid(lo, hi, 500)
    total = np.exp(ds.log_prob(x)).sum() * cell
    assert total == pytest.approx(1.0, abs=2e-3)


def naive_mixture_log_prob(x, means, std, weights):
    """log sum_k w_k N(x; mu_k, std^2 I), one point at a time, straight from the definition."""
    out = []
    for p in x:
        dens = 0.0
        for mu, w in zip(means, weights):
            sq = float(np.sum((p - mu) ** 2))
            dens += w * math.exp(-sq / (2 * std ** 2)) / (2 * math.pi * std ** 2) ** (len(p) / 2)
        out.append(math.log(dens))
    return np.array(out)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 5), std=st.floats(0.3, 2.0), seed=st.integers(0, 2 ** 31))
def test_log_prob_matches_naive_twin(k, std, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, 2)) * 2
    weights = rng.uniform(0.1, 1.0, size=k)
    ds = GaussianMixture(means=means, std=std, weights=weights)
    x = rng.normal(size=(7, 2)) * 2
    want = naive_mixture_log_prob(x, ds.means, ds.std, ds.weights)
    np.testing.assert_allclose(ds.log_prob(x), want, rtol=1e-10, atol=1e-10)


def test_log_prob_is_stable_far_from_every_mode():
    ds = GaussianMixture()                                            # std 0.1: exp underflows
    x = np.array([[100.0, 0.0], [0.0, -50.0]])
    lp = ds.log_prob(x)
    assert np.all(np.isfinite(lp))
    # far away only the nearest mode matters: log(1/8) + log N(x; mu_nearest, 0.01 I)
    nearest = np.array([[2.0, 0.0], [0.0, -2.0]])
    want = math.log(1 / 8) - np.sum((x - nearest) ** 2, 1) / 0.02 - math.log(2 * math.pi * 0.01)
    np.testing.assert_allclose(lp, want, rtol=1e-12)


def test_log_prob_keeps_dtype_and_batch_shape():
    ds = GaussianMixture()
    assert ds.log_prob(np.zeros((4, 3, 2), np.float32)).dtype == np.float32
    assert ds.log_prob(np.zeros((4, 3, 2))).shape == (4, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 2\]"):
        ds.log_prob(np.zeros((5, 3)))


def test_checkerboard_log_prob_is_zero_on_light_squares_and_outside():
    cb = Checkerboard(n_cells=4, half_width=2.0)                      # cells of width 1
    lp = cb.log_prob(np.array([[-1.5, -1.5], [-0.5, -1.5], [2.5, 0.0], [-1.5, -0.5]]))
    assert lp[0] == pytest.approx(-math.log(8.0))                     # square (0, 0): dark
    assert np.isneginf(lp[1:]).all()                                  # (1, 0) light, outside, (0, 1) light


# ---------------------------------------------------------------- entropies
def test_gaussian_entropy_is_exact_and_matches_monte_carlo():
    g = Gaussian(std=0.7)
    assert g.entropy_bits() == pytest.approx(math.log2(2 * math.pi * math.e * 0.49))
    est, se = g.entropy_bits_mc(100_000, np.random.default_rng(1))
    assert abs(est - g.entropy_bits()) < 4 * se
    # the mixture's quadrature, run on this one-component mixture, reproduces the closed form
    assert GaussianMixture.entropy_bits(g) == pytest.approx(g.entropy_bits(), abs=1e-9)


@pytest.mark.parametrize("ds", [
    GaussianMixture(),
    GaussianMixture(std=1.0),                                         # strongly overlapping modes
    GaussianMixture(means=[[0, 0], [1.5, 0]], std=0.5, weights=[0.8, 0.2]),
])
def test_mixture_entropy_matches_monte_carlo(ds):
    est, se = ds.entropy_bits_mc(200_000, np.random.default_rng(2))
    assert abs(ds.entropy_bits() - est) < 4 * se
    assert ds.entropy_bits(n_nodes=32) == pytest.approx(ds.entropy_bits(n_nodes=96), abs=1e-5)


def test_separated_equal_modes_add_log2_k_bits():
    # the 8 modes are 15 std apart, so H = log2(8) + H(one Gaussian of std 0.1)
    assert GaussianMixture().entropy_bits() == pytest.approx(3 + Gaussian(std=0.1).entropy_bits(),
                                                             abs=1e-9)


def test_checkerboard_entropy():
    cb = Checkerboard()
    assert cb.entropy_bits() == 3.0                                   # 8 dark squares of area 1
    x = cb.sample(1000, np.random.default_rng(0))
    assert np.mean(-cb.log_prob(x) / math.log(2)) == pytest.approx(3.0)


# ---------------------------------------------------------------- samplers
def test_eight_gaussians_defaults_are_seed_000():
    ds = make_dataset("8gaussians")
    k = np.arange(8)
    np.testing.assert_allclose(ds.means, 2 * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], 1))
    assert ds.std == 0.1
    np.testing.assert_allclose(ds.weights, np.full(8, 1 / 8))


@pytest.mark.parametrize("ds", [
    GaussianMixture(),
    GaussianMixture(means=[[0, 0], [3, 1]], std=0.4, weights=[0.7, 0.3]),
    Gaussian(mean=(1.0, -2.0), std=0.3),
])
def test_mixture_sample_moments(ds):
    n = 200_000
    x = ds.sample(n, np.random.default_rng(3), dtype=np.float64)
    mean = ds.weights @ ds.means                                      # sum_k w_k mu_k
    cov = (ds.means.T * ds.weights) @ ds.means - np.outer(mean, mean) + ds.std ** 2 * np.eye(2)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.02 * np.abs(cov).max())


def test_mixture_picks_components_with_their_weights():
    ds = GaussianMixture(means=[[-5, 0], [0, 0], [5, 0]], std=0.1, weights=[0.1, 0.3, 0.6])
    n = 50_000
    x = ds.sample(n, np.random.default_rng(4))
    frac = np.bincount(np.argmin(np.abs(x[:, :1] - ds.means[:, 0]), axis=1), minlength=3) / n
    assert np.all(np.abs(frac - ds.weights) < 5 * np.sqrt(ds.weights * (1 - ds.weights) / n))


@pytest.mark.parametrize("ds, var", [
    (SwissRoll(), [1.0, 1.0]),                                        # standardized
    (SwissRoll(noise=3.0), [1.0, 1.0]),                               # noise is part of the scale
    (TwoMoons(noise=0.1), None),
    (Checkerboard(), [4 / 3, 4 / 3]),                                 # uniform on [-2, 2] per axis
])
def test_other_datasets_have_zero_mean_and_known_variance(ds, var):
    x = ds.sample(200_000, np.random.default_rng(5), dtype=np.float64)
    assert np.all(np.abs(x.mean(0)) < 5 * x.std(0) / np.sqrt(len(x)))
    if var is not None:
        np.testing.assert_allclose(x.var(0), var, rtol=0.02)


def test_swiss_roll_lies_on_its_spiral_without_noise():
    roll = SwissRoll(noise=0.0, standardize=False)
    x = roll.sample(1000, np.random.default_rng(6), dtype=np.float64)
    s = np.linalg.norm(x, axis=1)                                     # |(s cos s, s sin s)| = s
    assert np.all((s >= 1.5 * np.pi - 1e-9) & (s <= 4.5 * np.pi + 1e-9))
    np.testing.assert_allclose(x, np.stack([s * np.cos(s), s * np.sin(s)], 1), atol=1e-9)


def test_moons_lie_on_two_unit_half_circles_without_noise():
    x = TwoMoons(noise=0.0).sample(2000, np.random.default_rng(7), dtype=np.float64)
    upper = np.abs(np.linalg.norm(x - [-0.5, -0.25], axis=1) - 1) < 1e-9
    lower = np.abs(np.linalg.norm(x - [0.5, 0.25], axis=1) - 1) < 1e-9
    assert np.all(upper | lower)
    assert abs(upper.mean() - 0.5) < 0.05


def test_checkerboard_samples_only_on_dark_squares():
    cb = Checkerboard(n_cells=6, half_width=3.0)
    assert np.all(np.isfinite(cb.log_prob(cb.sample(5000, np.random.default_rng(8)))))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_is_seeded_float32_and_shaped(name):
    ds = make_dataset(name)
    a = ds.sample(500, np.random.default_rng(9))
    b = ds.sample(500, np.random.default_rng(9))
    c = ds.sample(500, np.random.default_rng(10))
    assert a.shape == (500, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert ds.sample(0, np.random.default_rng(0)).shape == (0, 2)
    assert ds.sample(3, np.random.default_rng(0), dtype=np.float64).dtype == np.float64


def test_make_dataset_names_and_errors():
    assert isinstance(make_dataset("Swiss-Roll", noise=0.2), SwissRoll)
    assert make_dataset("8gaussians", std=0.05).std == 0.05
    with pytest.raises(ValueError, match=r"unknown dataset name 'spiral'.*checkerboard"):
        make_dataset("spiral")


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        GaussianMixture().sample(3, 0)
    with pytest.raises(ValueError, match="std must be a positive"):
        GaussianMixture(std=0.0)
    with pytest.raises(ValueError, match="weights must be 8 non-negative"):
        GaussianMixture(weights=[1, 2])
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        SwissRoll().sample(-1, np.random.default_rng(0))
