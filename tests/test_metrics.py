"""Tests for tinydiff.metrics: hand-computed cases, a naive double-loop twin, known samplers."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinydiff.data import GaussianMixture
from tinydiff.metrics import energy_distance, mode_counts, mode_coverage, mode_precision


def naive_energy_distance(x, y):
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| with U-statistics, one pair at a time."""
    def dist(a, b):
        return math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))
    n, m = len(x), len(y)
    xy = sum(dist(a, b) for a in x for b in y) / (n * m)
    xx = sum(dist(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(dist(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return 2 * xy - xx - yy


# ---------------------------------------------------------------- energy distance
def test_energy_distance_hand_computed():
    # E|X-Y| = (0 + 1 + 1 + sqrt 2) / 4, E|X-X'| = E|Y-Y'| = 1 (one pair each, U-statistic)
    x, y = [[0, 0], [1, 0]], [[0, 0], [0, 1]]
    assert energy_distance(x, y) == pytest.approx(math.sqrt(2) / 2 - 1, abs=1e-15)
    # on a line: E|X-Y| = (1 + 3 + 1 + 1) / 4 = 1.5, E|X-X'| = E|Y-Y'| = 2  ->  3 - 4 = -1
    assert energy_distance([[0, 0], [2, 0]], [[1, 0], [3, 0]]) == pytest.approx(-1.0, abs=1e-15)
    # two far-apart point masses: 2 * 10 - 0 - 0
    assert energy_distance([[0, 0], [0, 0]], [[10, 0], [10, 0]]) == pytest.approx(20.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 9), m=st.integers(2, 9), d=st.integers(1, 3), seed=st.integers(0, 2 ** 31),
       chunk=st.sampled_from([1, 7, 1 << 21]))
def test_energy_distance_matches_naive_twin(n, m, d, seed, chunk):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 2 + 0.5
    want = naive_energy_distance(x.tolist(), y.tolist())
    assert energy_distance(x, y, chunk_pairs=chunk) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_energy_distance_is_symmetric_and_rigid_motion_invariant():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2)), rng.normal(size=(60, 2)) + [1.0, 0.0]
    e = energy_distance(x, y)
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])
    assert energy_distance(y, x) == pytest.approx(e, rel=1e-12)
    assert energy_distance(x @ rot.T + 3, y @ rot.T + 3) == pytest.approx(e, rel=1e-10)


def test_energy_distance_2000_points_separates_distributions():
    rng = np.random.default_rng(1)
    ds = GaussianMixture()
    a, b = ds.sample(2000, rng), ds.sample(2000, rng)
    same = energy_distance(a, b)
    shifted = energy_distance(a, b + np.float32(0.3))
    assert abs(same) < 0.01 and shifted > 0.05
    assert isinstance(same, float)


def test_energy_distance_input_errors():
    with pytest.raises(ValueError, match=r"y must have shape \[N, 2\]"):
        energy_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least 2 points"):
        energy_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="x must hold finite numbers"):
        energy_distance(np.array([[np.nan, 0], [0, 0]]), np.zeros((3, 2)))


# ---------------------------------------------------------------- mode metrics
MEANS = np.array([[0.0, 0.0], [10.0, 0.0]])
SAMPLES = np.array([[0, 0], [0.5, 0], [10, 2.9], [10, 3.1], [5, 0], [100, 100]])
# nearest mode:      0       0         1 (close) 1 (3.1 > 3)   tie->0, far  far


def test_mode_metrics_hand_computed():
    np.testing.assert_array_equal(mode_counts(SAMPLES, MEANS, 1.0), [2, 1])
    assert mode_precision(SAMPLES, MEANS, 1.0) == pytest.approx(3 / 6)
    # fair share N w_k = 3 per mode: a fifth of it is 0.6 samples, half of it is 1.5
    assert mode_coverage(SAMPLES, MEANS, 1.0) == 2
    assert mode_coverage(SAMPLES, MEANS, 1.0, min_fraction=0.5) == 1
    # unequal weights: mode 1's fair share 6 * 0.9 = 5.4, a fifth is 1.08 > 1 sample
    assert mode_coverage(SAMPLES, MEANS, 1.0, weights=[0.1, 0.9]) == 1
    # per-mode std: mode 1 now only accepts distances <= 1.5
    np.testing.assert_array_equal(mode_counts(SAMPLES, MEANS, [1.0, 0.5]), [2, 0])
    assert mode_precision(SAMPLES, MEANS, [1.0, 0.5]) == pytest.approx(2 / 6)
    assert mode_precision(SAMPLES, MEANS, 1.0, k=np.inf) == 1.0


@pytest.mark.parametrize("n", [10, 30, 70])
def test_mode_coverage_counts_exactly_one_fifth_as_covered(n):
    # mode 1 gets exactly a fifth of its fair share n / 2, i.e. n / 10 samples: covered
    k = n // 10
    x = np.concatenate([np.zeros((n - k, 2)), np.tile(MEANS[1], (k, 1))])
    assert mode_coverage(x, MEANS, 1.0) == 2
    x[-1] = 0.0                                                       # one sample short: not covered
    assert mode_coverage(x, MEANS, 1.0) == 1


def test_mode_metrics_on_exact_sampler_mode_collapse_and_noise():
    rng = np.random.default_rng(2)
    ds = GaussianMixture()
    n = 20_000
    x = ds.sample(n, rng)
    p = 1 - math.exp(-9 / 2)                                          # P(chi_2 <= 3) = 0.98889
    assert mode_coverage(x, ds.means, ds.std) == 8
    assert abs(mode_precision(x, ds.means, ds.std) - p) < 4 * math.sqrt(p * (1 - p) / n)
    collapsed = GaussianMixture(means=ds.means[:3], std=ds.std).sample(n, rng)
    assert mode_coverage(collapsed, ds.means, ds.std) == 3
    noise = 3.0 * rng.standard_normal((n, 2))
    assert mode_coverage(noise, ds.means, ds.std) == 0
    assert mode_precision(noise, ds.means, ds.std) < 0.1


def test_mode_metric_input_errors():
    with pytest.raises(ValueError, match="std must be a positive scalar or one positive value per mode"):
        mode_precision(SAMPLES, MEANS, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers summing to 1"):
        mode_coverage(SAMPLES, MEANS, 1.0, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match=r"samples must have shape \[N, 2\]"):
        mode_counts(np.zeros((4, 3)), MEANS, 1.0)
    with pytest.raises(ValueError, match="min_fraction"):
        mode_coverage(SAMPLES, MEANS, 1.0, min_fraction=0.0)
    with pytest.raises(ValueError, match="samples is empty"):
        mode_coverage(np.zeros((0, 2)), MEANS, 1.0)
