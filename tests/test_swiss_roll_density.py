"""SwissRoll.log_prob and entropy_bits: the density of the roll as an integral over the curve,
against a brute-force twin, a normalisation check, Monte Carlo and the thin-roll closed form."""
import math

import numpy as np
import pytest

from tinydiff.data import SwissRoll


def naive_log_prob(ds, x, n_grid=400_000):
    """log of (1/(b - a)) integral_a^b N(x; c(s), noise^2 I) ds by the trapezoid rule on a fine
    uniform grid in s, one point at a time (raw, unstandardized coordinates)."""
    a, b = ds.t_range
    s = np.linspace(a, b, n_grid)
    curve = np.stack([s * np.cos(s), s * np.sin(s)], axis=1)
    out = []
    for p in x:
        dens = np.exp(-((p - curve) ** 2).sum(axis=1) / (2 * ds.noise ** 2)) / (2 * math.pi * ds.noise ** 2)
        trapezoid = (dens[1:] + dens[:-1]).sum() * 0.5 * (s[1] - s[0])                  # uniform grid
        out.append(math.log(trapezoid / (b - a)))
    return np.array(out)


@pytest.mark.parametrize("noise", [0.05, 0.5])
def test_log_prob_matches_brute_force_twin(noise):
    ds = SwissRoll(noise=noise, standardize=False)
    rng = np.random.default_rng(0)
    x = ds.sample(6, rng, dtype=np.float64)
    x[0] = ds.sample(1, rng, dtype=np.float64)[0] + 3 * noise          # a few stds off the roll
    s_end = ds.t_range[0]
    x[1] = [s_end * math.cos(s_end), s_end * math.sin(s_end)]            # at an end: half the mass is cut off
    np.testing.assert_allclose(ds.log_prob(x), naive_log_prob(ds, x), rtol=0, atol=1e-6)


def test_standardized_density_integrates_to_one():
    ds = SwissRoll(noise=0.5)
    h = 5.0 / 400
    c = -2.5 + h * (np.arange(400) + 0.5)
    grid = np.stack(np.meshgrid(c, c, indexing="ij"), axis=-1)           # [400, 400, 2]
    assert np.exp(ds.log_prob(grid)).sum() * h * h == pytest.approx(1.0, abs=1e-3)


def test_standardizing_shifts_log_prob_and_entropy_by_the_log_jacobian():
    raw, std = SwissRoll(noise=0.2, standardize=False), SwissRoll(noise=0.2)
    x = std.sample(5, np.random.default_rng(1), dtype=np.float64)
    log_det = np.log(std.scale).sum()
    np.testing.assert_allclose(std.log_prob(x), raw.log_prob(std.mean + std.scale * x) + log_det, rtol=1e-12)
    assert std.entropy_bits() == pytest.approx(raw.entropy_bits() - log_det / math.log(2), abs=1e-9)


@pytest.mark.parametrize("noise", [0.01, 0.2, 1.0, 2.0])
def test_entropy_matches_monte_carlo(noise):
    ds = SwissRoll(noise=noise)
    n = 1000 if noise < 0.05 else 10_000
    nll = -ds.log_prob(ds.sample(n, np.random.default_rng(2), dtype=np.float64)) / math.log(2)
    assert abs(nll.mean() - ds.entropy_bits()) < 4 * nll.std(ddof=1) / math.sqrt(n)


@pytest.mark.parametrize("noise", [0.2, 1.0, 2.0, pytest.param(0.01, marks=pytest.mark.slow)])
def test_entropy_default_rule_matches_a_finer_rule(noise):
    """The default quadrature is converged: 2x the nodes along the curve, 1.7-2x across it."""
    ds = SwissRoll(noise=noise)
    assert ds.entropy_bits() == pytest.approx(ds.entropy_bits(n_s=256, n_z=12 if noise <= 0.25 else 40), abs=1e-5)


def test_thin_roll_entropy_is_position_along_the_curve_plus_gaussian_across_it():
    """H ~ log2(b - a) + E_s[log2 |c'(s)|] + 1/2 log2(2 pi e noise^2) - log2(scale_x scale_y),
    |c'(s)| = sqrt(1 + s^2): exact as noise -> 0 (curvature corrections are O(noise^2))."""
    ds = SwissRoll(noise=0.02)
    a, b = ds.t_range
    u, w = np.polynomial.legendre.leggauss(200)
    s = 0.5 * (b - a) * u + 0.5 * (a + b)
    along = math.log2(b - a) + 0.5 * (w @ np.log2(np.sqrt(1 + s ** 2)))
    across = 0.5 * math.log2(2 * math.pi * math.e * ds.noise ** 2)
    assert ds.entropy_bits() == pytest.approx(along + across - np.log2(ds.scale).sum(), abs=2e-3)


def test_log_prob_keeps_dtype_and_shape_and_rejects_a_noiseless_roll():
    ds = SwissRoll(noise=0.5)
    x = ds.sample(12, np.random.default_rng(3)).reshape(3, 4, 2)
    out = ds.log_prob(x)
    assert out.shape == (3, 4) and out.dtype == np.float32
    with pytest.raises(ValueError, match="noise=0"):
        SwissRoll(noise=0.0).log_prob(x)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 2\]"):
        ds.log_prob(np.zeros((4, 3)))
