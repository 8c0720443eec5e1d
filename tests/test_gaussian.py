"""Gaussian math against 1-D formulas written with `math`, Monte Carlo, and finite differences."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff import Tensor
from tinydiff.gaussian import (approx_standard_normal_cdf, discretized_gaussian_log_likelihood,
                               gaussian_log_likelihood, normal_kl, standard_normal_noise)
from tinydiff.gradcheck import assert_grad_close

FAST = settings(max_examples=30, deadline=None)
means = st.floats(-3, 3)
logvars = st.floats(-8, 3)


def kl_1d(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) in terms of variances (not log-variances), with math."""
    return math.log(math.sqrt(v2) / math.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


@FAST
@given(m1=means, lv1=logvars, m2=means, lv2=logvars)
def test_normal_kl_matches_1d_formula_and_is_nonnegative(m1, lv1, m2, lv2):
    kl = normal_kl(np.float64(m1), np.float64(lv1), np.float64(m2), np.float64(lv2))
    assert kl == pytest.approx(kl_1d(m1, math.exp(lv1), m2, math.exp(lv2)), rel=1e-9, abs=1e-12)
    assert kl >= -1e-12


@FAST
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5), elements=means),
       hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5), elements=logvars))
def test_normal_kl_is_zero_for_equal_gaussians(m, lv):
    lv = np.broadcast_to(lv.flat[0], m.shape)
    np.testing.assert_allclose(normal_kl(m, lv, m.copy(), lv.copy()), 0.0, atol=1e-15)


def test_normal_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    m1, s1, m2, s2 = 0.3, 0.7, -0.4, 1.3
    x = m1 + s1 * rng.standard_normal(400_000)
    log_ratio = (-np.log(s1) - 0.5 * ((x - m1) / s1) ** 2) - (-np.log(s2) - 0.5 * ((x - m2) / s2) ** 2)
    estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(x.size)
    exact = normal_kl(m1, 2 * math.log(s1), m2, 2 * math.log(s2))
    assert abs(estimate - exact) < 4 * stderr


def test_normal_kl_broadcasts_and_keeps_float32():
    m = np.zeros((4, 3, 2), np.float32)
    out = normal_kl(m, np.zeros((4, 1, 1), np.float32), np.float32(0.5), np.zeros((1, 3, 1), np.float32))
    assert out.shape == (4, 3, 2) and out.dtype == np.float32
    assert np.allclose(out, 0.125)


@FAST
@given(x=means, m=means, log_scale=st.floats(-5, 2))
def test_gaussian_log_likelihood_is_the_normal_log_density(x, m, log_scale):
    s = math.exp(log_scale)
    expected = -math.log(s * math.sqrt(2 * math.pi)) - (x - m) ** 2 / (2 * s * s)
    assert gaussian_log_likelihood(np.float64(x), np.float64(m), np.float64(log_scale)) == pytest.approx(
        expected, rel=1e-10, abs=1e-10)


def test_approx_cdf_against_erf():
    """Page's tanh formula vs the exact Phi = (1 + erf(x / sqrt 2)) / 2: max error 1.8e-4."""
    x = np.linspace(-8, 8, 16001)
    exact = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    err = np.abs(approx_standard_normal_cdf(x) - exact)
    assert err.max() < 1.8e-4 and err.max() > 1e-4          # the documented size, not just "small"
    np.testing.assert_allclose(approx_standard_normal_cdf(-x), 1 - approx_standard_normal_cdf(x), atol=1e-15)


def tanh_cdf(z):
    """The same tanh approximation, written with math (the oracle for the discretized bins)."""
    return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


GRID = np.arange(256) / 127.5 - 1.0                          # the 256 values of an 8-bit pixel in [-1, 1]


@FAST
@given(mean=st.floats(-1.2, 1.2), log_scale=st.floats(math.log(0.02), math.log(1.5)))
def test_discretized_bins_are_cdf_differences_that_sum_to_one(mean, log_scale):
    """Every bin probability equals Phi(upper) - Phi(lower) with Page's tanh Phi (computed
    here with math.tanh), the edge bins reach to -inf / +inf, and the 256 sum to 1."""
    s = math.exp(log_scale)
    log_p = discretized_gaussian_log_likelihood(GRID, np.float64(mean), np.float64(log_scale))
    expected = []
    for k, x in enumerate(GRID):
        upper = 1.0 if k == 255 else tanh_cdf((x + 1 / 255 - mean) / s)
        lower = 0.0 if k == 0 else tanh_cdf((x - 1 / 255 - mean) / s)
        expected.append(upper - lower)
    expected = np.array(expected)
    p = np.exp(log_p)
    visible = expected > 1e-10                               # below that the 1e-12 floor may act
    np.testing.assert_allclose(p[visible], expected[visible], rtol=1e-7, atol=1e-14)
    assert np.all(p[~visible] < 1e-9)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_discretized_close_to_exact_erf_bins():
    """Against the exact CDF (math.erf) the bins differ by at most two CDF errors (2 x 1.8e-4)."""
    mean, s = 0.1, 0.05
    log_p = discretized_gaussian_log_likelihood(GRID, mean, math.log(s))

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    exact = np.array([(1.0 if k == 255 else phi((x + 1 / 255 - mean) / s))
                      - (0.0 if k == 0 else phi((x - 1 / 255 - mean) / s)) for k, x in enumerate(GRID)])
    assert np.abs(np.exp(log_p) - exact).max() < 3.6e-4


def test_discretized_float32_and_finite_far_tails():
    x = GRID.astype(np.float32)
    out = discretized_gaussian_log_likelihood(x, np.float32(5.0), np.float32(-6.0))   # mean far off, sigma tiny
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert out.min() == pytest.approx(math.log(1e-12), rel=1e-5)


def test_gradients_flow_through_tensors():
    """The same NumPy code on engine Tensors gives autograd gradients equal to finite differences."""
    rng = np.random.default_rng(1)
    m1, m2 = rng.standard_normal((2, 3, 4))
    lv1, lv2 = rng.uniform(-2, 1, (2, 3, 4))
    assert_grad_close(lambda a, b, c, d: normal_kl(a, b, c, d), [m1, lv1, m2, lv2])
    x = rng.standard_normal((3, 4))
    assert_grad_close(lambda m, ls: gaussian_log_likelihood(x, m, ls), [m1, lv1 / 2])
    x8 = GRID[rng.integers(0, 256, (3, 4))]
    x8[0, :2] = -1.0, 1.0                                     # include both edge bins
    assert_grad_close(lambda m, ls: discretized_gaussian_log_likelihood(x8, m, ls),
                      [x8 + rng.uniform(-0.05, 0.05, x8.shape), rng.uniform(-4, -2, x8.shape)])
    assert isinstance(normal_kl(Tensor(m1), lv1, m2, lv2), Tensor)


def test_standard_normal_noise_injects_checks_and_draws():
    noise = np.ones((2, 3))
    assert standard_normal_noise((2, 3), np.float64, noise=noise) is noise
    with pytest.raises(ValueError, match=r"noise: expected shape \(2, 3\).*\(3, 2\)"):
        standard_normal_noise((2, 3), np.float64, noise=np.ones((3, 2)))
    with pytest.raises(TypeError, match="rng"):
        standard_normal_noise((2, 3), np.float64)
    draw = standard_normal_noise((2, 3), np.float32, rng=np.random.default_rng(0))
    assert draw.dtype == np.float32 and draw.shape == (2, 3)
