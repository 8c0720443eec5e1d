"""Schedules against closed forms written out in the test, their validation, and extract."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff.schedules import (betas_for_alpha_bar, cosine_beta_schedule, extract,
                                linear_beta_schedule, logsnr_beta_schedule, validate_betas)

FAST = settings(max_examples=30, deadline=None)


def cumprod_loop(betas):
    """alpha_bar by an explicit running product (the oracle for np.cumprod)."""
    out, running = [], 1.0
    for b in betas:
        running *= 1.0 - float(b)
        out.append(running)
    return np.array(out)


def test_linear_is_ddpm_and_the_seed_schedule():
    betas = linear_beta_schedule(1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == 1e-4 and betas[-1] == pytest.approx(0.02, rel=1e-15)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    # The seed notebook's schedule np.linspace(1e-4, 0.05, 100) is a linear schedule.
    np.testing.assert_array_equal(linear_beta_schedule(100, 1e-4, 0.05), np.linspace(1e-4, 0.05, 100))


@FAST
@given(T=st.integers(1, 2000), kind=st.sampled_from(["linear", "cosine"]))
def test_alpha_bar_strictly_decreasing_inside_unit_interval(T, kind):
    betas = linear_beta_schedule(T) if kind == "linear" else cosine_beta_schedule(T)
    ab = cumprod_loop(betas)
    assert np.all((ab > 0) & (ab < 1))
    assert np.all(np.diff(ab) < 0)


@FAST
@given(T=st.integers(1, 2000), s=st.floats(0.0, 0.1), max_beta=st.floats(0.5, 0.999))
def test_cosine_alpha_bar_is_f_t_over_f_0_before_clipping(T, s, max_beta):
    """Nichol & Dhariwal eq. 17, paper step t = code index t - 1, evaluated with math.cos."""
    betas = cosine_beta_schedule(T, s=s, max_beta=max_beta)
    assert betas.max() <= max_beta

    def f(step):
        return math.cos((step / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = np.array([f(i + 1) / f(0) for i in range(T)])
    clipped = np.flatnonzero(betas >= max_beta)
    first_clipped = clipped[0] if clipped.size else T
    ab = cumprod_loop(betas)
    np.testing.assert_allclose(ab[:first_clipped], expected[:first_clipped], rtol=1e-9)


@FAST
@given(T=st.integers(2, 1000), hi=st.floats(-2.0, 18.0), drop=st.floats(0.5, 25.0))
def test_logsnr_schedule_has_log_snr_falling_linearly(T, hi, drop):
    """Kingma et al. 2021: log(alpha_bar / (1 - alpha_bar)) runs linearly from logsnr_max to logsnr_min,
    checked from a running product of (1 - beta) and the logit written out here."""
    betas = logsnr_beta_schedule(T, logsnr_max=hi, logsnr_min=hi - drop)
    ab = cumprod_loop(betas)
    np.testing.assert_allclose(np.log(ab / (1 - ab)), np.linspace(hi, hi - drop, T), rtol=0, atol=1e-6)


def test_logsnr_schedule_resolves_small_betas_and_rejects_bad_ends():
    betas = logsnr_beta_schedule(40)
    assert betas[0] == pytest.approx(1 / (1 + math.exp(14)), rel=1e-12)     # 1 - sigmoid(14), no cancellation
    assert logsnr_beta_schedule(1, 3.0, -3.0)[0] == pytest.approx(1 / (1 + math.exp(3)), rel=1e-12)  # T = 1: one step, to logsnr_max
    with pytest.raises(ValueError, match="logsnr_max.*above logsnr_min = 2.0, got 1.0"):
        logsnr_beta_schedule(10, logsnr_max=1.0, logsnr_min=2.0)
    with pytest.raises(ValueError, match="logsnr_max.*got inf"):
        logsnr_beta_schedule(10, logsnr_max=float("inf"))


def test_cosine_clips_only_the_last_step_by_default():
    betas = cosine_beta_schedule(1000)
    assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999)
    assert np.all(np.diff(betas) > 0)                      # cosine betas rise monotonically


def test_betas_for_alpha_bar_telescopes():
    betas = betas_for_alpha_bar(10, lambda tau: 1.0 - 0.9 * tau, max_beta=0.999)
    np.testing.assert_allclose(cumprod_loop(betas), 1.0 - 0.9 * np.arange(1, 11) / 10, rtol=1e-12)


@pytest.mark.parametrize("betas, needle", [
    ([[0.1, 0.2]], "shape (1, 2)"),
    ([], "empty"),
    ([0.1, float("nan"), 0.2], "betas[1] = nan"),
    ([0.1, 0.2, float("inf")], "betas[2] = inf"),
    ([0.0, 0.1], "betas[0] = 0.0"),
    ([0.1, 1.0], "betas[1] = 1.0"),
    ([0.1, 0.2, -0.3], "betas[2] = -0.3"),
    ([0.5, 1.5], "betas[1] = 1.5"),
])
def test_invalid_schedules_name_the_entry(betas, needle):
    with pytest.raises(ValueError, match="betas") as info:
        validate_betas(betas)
    assert needle in str(info.value)


@FAST
@given(betas=hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(1e-6, 0.99)),
       data=st.data(), bad=st.sampled_from([0.0, 1.0, -0.5, 2.0, float("nan"), float("-inf")]))
def test_one_bad_beta_anywhere_is_reported_with_index_and_value(betas, data, bad):
    i = data.draw(st.integers(0, len(betas) - 1))
    betas = betas.copy()
    betas[i] = bad
    with pytest.raises(ValueError) as info:
        validate_betas(betas)
    assert f"betas[{i}] = {bad!r}" in str(info.value)


@pytest.mark.parametrize("T", [0, -3, 2.5, True, "10"])
def test_schedule_lengths_must_be_positive_ints(T):
    with pytest.raises(ValueError, match=r"T: expected a positive int.*" + repr(T).replace("'", ".")):
        linear_beta_schedule(T)
    with pytest.raises(ValueError, match="T: expected"):
        cosine_beta_schedule(T)


def test_bad_schedule_arguments_are_named():
    with pytest.raises(ValueError, match=r"betas\[0\] = -0\.1"):
        linear_beta_schedule(10, beta_start=-0.1)
    with pytest.raises(ValueError, match=r"betas\[9\] = 1\.0"):
        linear_beta_schedule(10, beta_end=1.0)
    with pytest.raises(ValueError, match="max_beta.*1.5"):
        cosine_beta_schedule(10, max_beta=1.5)


@FAST
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), data=st.data())
def test_extract_broadcasts_per_example_values(shape, data):
    T = 7
    arr = np.arange(T, dtype=np.float64) * 10.0
    t = data.draw(hnp.arrays(np.int64, shape[0], elements=st.integers(0, T - 1)))
    out = extract(arr, t, shape)
    assert out.shape == (shape[0],) + (1,) * (len(shape) - 1)
    full = np.broadcast_to(out, shape)
    for b in range(shape[0]):                               # naive twin: one example at a time
        assert np.all(full[b] == arr[t[b]])


def test_extract_rejects_bad_timesteps():
    arr = np.zeros(5)
    with pytest.raises(ValueError, match="0..4, got 5"):
        extract(arr, np.array([0, 5]), (2, 3))
    with pytest.raises(ValueError, match="0..4, got -1"):
        extract(arr, np.array([-1, 0]), (2, 3))
    with pytest.raises(ValueError, match="int array.*float64"):
        extract(arr, np.array([0.0, 1.0]), (2, 3))
    with pytest.raises(ValueError, match="one timestep per example"):
        extract(arr, np.array([0, 1, 2]), (2, 3))
