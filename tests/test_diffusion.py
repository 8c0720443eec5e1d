"""GaussianDiffusion's q, posterior and p against closed forms computed here, independently:
running products in plain Python, Bayes' rule as a product of Gaussians, analytic and
finite-difference gradients, and a per-example loop as the naive twin of the batched code."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff import Tensor
from tinydiff.diffusion import GaussianDiffusion
from tinydiff.samplers import ddpm_sample_loop
from tinydiff.schedules import linear_beta_schedule

FAST = settings(max_examples=30, deadline=None)
schedules = hnp.arrays(np.float64, st.integers(2, 40), elements=st.floats(1e-4, 0.5))
MEAN_TYPES = ["eps", "x0", "v", "mean"]
VAR_TYPES = ["fixed_small", "fixed_large", "learned", "learned_range"]


def alpha_bars(betas):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) by a running product (0-based t)."""
    out, running = [], 1.0
    for b in betas:
        running *= 1.0 - float(b)
        out.append(running)
    return out


def random_data(rng, B=5, D=(3, 2), dtype=np.float64):
    return rng.standard_normal((B,) + D).astype(dtype)


# ---------------------------------------------------------------- forward process
@FAST
@given(betas=schedules, data=st.data())
def test_composed_q_steps_give_closed_form_coefficients(betas, data):
    """Applying q_step t+1 times maps x_0 to N(prod sqrt(alpha) x_0, 1 - prod alpha)."""
    d = GaussianDiffusion(betas)
    t = data.draw(st.integers(0, len(betas) - 1))
    ones = np.ones((1, 1))
    coef, var = 1.0, 0.0                                     # x_s = coef x_0 + N(0, var)
    for s in range(t + 1):
        step_mean, step_var, step_log_var = d.q_step_mean_variance(ones, np.array([s]))
        coef, var = coef * step_mean.item(), step_mean.item() ** 2 * var + step_var.item()
        assert step_log_var.item() == pytest.approx(math.log(betas[s]), rel=1e-14)
    prod_sqrt_alpha = 1.0
    for b in betas[:t + 1]:
        prod_sqrt_alpha *= math.sqrt(1 - b)
    ab = alpha_bars(betas)[t]
    assert coef == pytest.approx(prod_sqrt_alpha, rel=1e-13)
    assert var == pytest.approx(1 - ab, rel=1e-11)
    mean, variance, log_variance = d.q_mean_variance(ones, np.array([t]))
    assert mean.item() == pytest.approx(prod_sqrt_alpha, rel=1e-13)
    assert variance.item() == pytest.approx(1 - ab, rel=1e-11)
    assert log_variance.item() == pytest.approx(math.log(1 - ab), rel=1e-10, abs=1e-10)


@FAST
@given(betas=schedules, seed=st.integers(0, 2 ** 32 - 1))
def test_composed_q_step_samples_equal_q_sample_with_the_combined_noise(betas, seed):
    """With injected noise z_s, x_t = prod sqrt(alpha) x_0 + sum_s sqrt(beta_s) prod_{r>s} sqrt(alpha_r) z_s,
    which is q_sample with eps = that sum / sqrt(1 - alpha_bar_t)."""
    d, rng = GaussianDiffusion(betas), np.random.default_rng(seed)
    T = len(betas)
    x0, z = random_data(rng, B=2), rng.standard_normal((T, 2, 3, 2))
    t = np.full(2, T - 1)
    x, combined = x0, np.zeros_like(x0)
    for s in range(T):
        x = d.q_step(x, np.full(2, s), noise=z[s])
        combined = math.sqrt(1 - betas[s]) * combined + math.sqrt(betas[s]) * z[s]
    eps = combined / math.sqrt(1 - alpha_bars(betas)[-1])
    np.testing.assert_allclose(x, d.q_sample(x0, t, noise=eps), rtol=1e-10, atol=1e-12)


def test_composed_q_step_empirical_moments():
    betas, rng = np.linspace(0.01, 0.2, 12), np.random.default_rng(0)
    d, N = GaussianDiffusion(betas), 200_000
    x0 = np.full((N, 1), 1.5)
    x = x0
    for s in range(len(betas)):
        x = d.q_step(x, np.full(N, s), rng=rng)
    ab = alpha_bars(betas)[-1]
    mean, var = math.sqrt(ab) * 1.5, 1 - ab
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / N)
    assert abs(x.var() - var) < 5 * var * math.sqrt(2 / N)


@FAST
@given(betas=schedules, data=st.data())
def test_q_posterior_is_bayes_rule(betas, data):
    """q(x_{t-1}|x_t,x_0) proportional to q(x_t|x_{t-1}) q(x_{t-1}|x_0), as a product of Gaussians in x_{t-1}:
    q(x_t|x_{t-1}) = N(x_{t-1}; x_t / sqrt(alpha_t), beta_t / alpha_t) up to a constant."""
    d = GaussianDiffusion(betas)
    t = data.draw(st.integers(1, len(betas) - 1))
    x0, x_t = data.draw(st.floats(-3, 3)), data.draw(st.floats(-3, 3))
    alpha, ab_prev = 1 - betas[t], alpha_bars(betas)[t - 1]
    precision = alpha / betas[t] + 1 / (1 - ab_prev)
    mean = (math.sqrt(alpha) * x_t / betas[t] + math.sqrt(ab_prev) * x0 / (1 - ab_prev)) / precision
    got_mean, got_var, got_log_var = d.q_posterior_mean_variance(
        np.array([[x0]]), np.array([[x_t]]), np.array([t]))
    assert got_var.item() == pytest.approx(1 / precision, rel=1e-10)
    assert got_log_var.item() == pytest.approx(-math.log(precision), rel=1e-10, abs=1e-12)
    assert got_mean.item() == pytest.approx(mean, rel=1e-9, abs=1e-12)


def test_q_posterior_at_t0_is_a_point_mass_with_clipped_log_variance():
    betas = linear_beta_schedule(10)
    d = GaussianDiffusion(betas)
    x0, x_t = np.array([[0.7]]), np.array([[-2.0]])
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, np.array([0]))
    assert mean.item() == pytest.approx(0.7, rel=1e-14) and var.item() == 0.0
    ab = alpha_bars(betas)
    assert log_var.item() == pytest.approx(math.log(betas[1] * (1 - ab[0]) / (1 - ab[1])), rel=1e-12)


# ---------------------------------------------------------------- changes of parametrisation
@FAST
@given(betas=schedules, seed=st.integers(0, 2 ** 32 - 1))
def test_predictions_invert_q_sample(betas, seed):
    d, rng = GaussianDiffusion(betas), np.random.default_rng(seed)
    x0, eps = random_data(rng), random_data(rng)
    t = rng.integers(0, len(betas), 5)
    x_t = d.q_sample(x0, t, noise=eps)
    # Recovering x0 divides by sqrt(alpha_bar): round-off grows like 1/sqrt(alpha_bar_t).
    tol = 1e-13 / np.sqrt(np.array(alpha_bars(betas))[t]).reshape(-1, 1, 1) * 10
    np.testing.assert_allclose(d.predict_x0_from_eps(x_t, t, eps), x0, rtol=0, atol=tol.max())
    np.testing.assert_allclose(d.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.predict_x0_from_v(x_t, t, d.velocity(x0, t, eps)), x0, atol=1e-12)
    mean = d.q_posterior_mean_variance(x0, x_t, t)[0]
    np.testing.assert_allclose(d.predict_x0_from_mean(x_t, t, mean), x0, atol=tol.max() * 1e2)


@FAST
@given(betas=schedules, seed=st.integers(0, 2 ** 32 - 1))
def test_score_from_eps_is_grad_log_q(betas, seed):
    d, rng = GaussianDiffusion(betas), np.random.default_rng(seed)
    x0, eps = random_data(rng, B=3, D=(2,)), random_data(rng, B=3, D=(2,))
    t = rng.integers(0, len(betas), 3)
    x_t = d.q_sample(x0, t, noise=eps)
    ab = np.array(alpha_bars(betas))[t].reshape(-1, 1)

    def log_q(x):                                            # log N(x; sqrt(ab) x0, (1 - ab) I), summed
        return (-0.5 * (x - np.sqrt(ab) * x0) ** 2 / (1 - ab) - 0.5 * np.log(2 * np.pi * (1 - ab))).sum()

    analytic = -(x_t - np.sqrt(ab) * x0) / (1 - ab)
    score = d.score_from_eps(x_t, t, eps)
    np.testing.assert_allclose(score, analytic, rtol=1e-8, atol=1e-8)
    h, fd = 1e-5, np.zeros_like(x_t)
    for i in np.ndindex(x_t.shape):                          # central differences, one coordinate at a time
        e = np.zeros_like(x_t)
        e[i] = h
        fd[i] = (log_q(x_t + e) - log_q(x_t - e)) / (2 * h)
    np.testing.assert_allclose(score, fd, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- reverse process p
def oracle_output(d, x0, x_t, t, eps, var_channels=None):
    """What a perfect model of each mean type outputs, plus optional variance channels."""
    pred = {"eps": eps, "x0": x0, "v": d.velocity(x0, t, eps),
            "mean": d.q_posterior_mean_variance(x0, x_t, t)[0]}[d.model_mean_type]
    return pred if var_channels is None else np.concatenate([pred, var_channels], axis=1)


@pytest.mark.parametrize("mean_type", MEAN_TYPES)
@pytest.mark.parametrize("var_type", VAR_TYPES)
def test_p_mean_variance_with_perfect_predictions(mean_type, var_type):
    betas, rng = linear_beta_schedule(50, 1e-3, 0.2), np.random.default_rng(0)
    d = GaussianDiffusion(betas, mean_type, var_type, loss_type="kl")
    x0, eps = random_data(rng), random_data(rng)
    t = np.array([0, 1, 7, 30, 49])
    x_t = d.q_sample(x0, t, noise=eps)
    v_raw = rng.uniform(-1, 1, x0.shape)
    learned = var_type.startswith("learned")
    out = d.p_mean_variance(lambda x, tt: oracle_output(d, x0, x, tt, eps, v_raw if learned else None), x_t, t)
    true_mean = d.q_posterior_mean_variance(x0, x_t, t)[0]
    np.testing.assert_allclose(out["mean"], true_mean, atol=1e-9)
    np.testing.assert_allclose(out["pred_x0"], x0, atol=1e-8)
    np.testing.assert_allclose(out["pred_eps"], eps, atol=1e-8)
    np.testing.assert_allclose(out["variance"], np.exp(out["log_variance"]), rtol=1e-12)
    # Expected log-variances, from formulas written here (index 0 = paper's step 1).
    ab = np.array(alpha_bars(betas))
    ab_prev = np.append(1.0, ab[:-1])
    beta_tilde = betas * (1 - ab_prev) / (1 - ab)
    beta_tilde[0] = beta_tilde[1]                           # the clip at t = 0
    col = (slice(None), None, None)
    expected = {"fixed_small": np.log(beta_tilde)[t][col] + 0 * x0,
                "fixed_large": np.log(np.append(beta_tilde[1], betas[1:]))[t][col] + 0 * x0,
                "learned": v_raw,
                "learned_range": (v_raw + 1) / 2 * np.log(betas)[t][col]
                + (1 - v_raw) / 2 * np.log(beta_tilde)[t][col]}[var_type]
    np.testing.assert_allclose(out["log_variance"], expected, rtol=1e-12)


def test_learned_range_endpoints_are_beta_tilde_and_beta():
    betas = linear_beta_schedule(20, 1e-3, 0.1)
    d = GaussianDiffusion(betas, model_var_type="learned_range", loss_type="hybrid")
    x = np.zeros((1, 2))
    t = np.array([5])
    for v_raw, table in [(1.0, np.log(betas)), (-1.0, d.posterior_log_variance_clipped)]:
        out = d.p_mean_variance(lambda x_t, tt: np.concatenate([x_t, np.full_like(x_t, v_raw)], 1), x, t)
        np.testing.assert_allclose(out["log_variance"], table[5], rtol=1e-14)


@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_pred_eps_consistent_with_clipped_pred_x0(mean_type):
    d, rng = GaussianDiffusion(linear_beta_schedule(30), mean_type), np.random.default_rng(3)
    x_t, t = 3 * random_data(rng), rng.integers(0, 30, 5)
    out = d.p_mean_variance(lambda x, tt: 2 * x, x_t, t, clip_denoised=True, denoised_fn=lambda z: z * 0.9)
    assert np.abs(out["pred_x0"]).max() <= 1.0
    ab = np.array(alpha_bars(d.betas))[t].reshape(-1, 1, 1)
    np.testing.assert_allclose(np.sqrt(ab) * out["pred_x0"] + np.sqrt(1 - ab) * out["pred_eps"], x_t, atol=1e-10)


def test_p_mean_variance_on_tensor_output_keeps_the_graph():
    d = GaussianDiffusion(linear_beta_schedule(10), model_var_type="learned_range", loss_type="hybrid")
    x_t = random_data(np.random.default_rng(0), B=2, D=(2,)).astype(np.float32)
    w = Tensor(np.full((1, 4), 0.5, np.float32), requires_grad=True)
    out = d.p_mean_variance(lambda x, t: Tensor(np.concatenate([x, x], 1)) * w, x_t, np.array([0, 9]))
    for k in ("mean", "log_variance", "pred_x0"):
        assert isinstance(out[k], Tensor) and out[k].dtype == np.float32
    (out["mean"].sum() + out["log_variance"].sum()).backward()
    assert w.grad.shape == (1, 4) and np.all(w.grad != 0)


def test_wrong_model_output_shape_is_named():
    d = GaussianDiffusion(linear_beta_schedule(10), model_var_type="learned", loss_type="kl")
    with pytest.raises(ValueError, match=r"expected shape \(2, 6, 4\).*'learned'.*got \(2, 3, 4\)"):
        d.p_mean_variance(lambda x, t: x, np.zeros((2, 3, 4)), np.array([0, 1]))


def test_p_sample_batched_equals_per_example_loop_and_no_noise_at_t0():
    d, rng = GaussianDiffusion(linear_beta_schedule(40), model_var_type="fixed_large"), np.random.default_rng(5)
    x_t, z = random_data(rng), random_data(rng)
    t = np.array([0, 3, 0, 39, 17])
    model = lambda x, tt: np.tanh(x) * (1 + tt.reshape(-1, 1, 1) / 40)   # any deterministic model
    batched = d.p_sample(model, x_t, t, noise=z)["sample"]
    for b in range(5):                                        # naive twin
        one = d.p_mean_variance(model, x_t[b:b + 1], t[b:b + 1])
        sigma = 0.0 if t[b] == 0 else np.exp(0.5 * one["log_variance"])
        np.testing.assert_allclose(batched[b:b + 1], one["mean"] + sigma * z[b:b + 1], rtol=1e-12)
    assert np.array_equal(batched[0], d.p_mean_variance(model, x_t, t)["mean"][0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ddpm_sample_loop_progress_trajectory_dtype_and_seed(dtype):
    d = GaussianDiffusion(linear_beta_schedule(8, 1e-3, 0.3))
    calls, model = [], lambda x, t: 0.5 * x
    x_T = np.random.default_rng(1).standard_normal((3, 2)).astype(dtype)
    x0, traj = ddpm_sample_loop(d, model, (3, 2), np.random.default_rng(2), progress=lambda i, T: calls.append((i, T)),
                               return_trajectory=True, noise=x_T, dtype=dtype)
    assert calls == [(i, 8) for i in range(1, 9)]
    assert traj.shape == (9, 3, 2) and traj.dtype == dtype and x0.dtype == dtype
    assert np.array_equal(traj[0], x_T) and np.array_equal(traj[-1], x0)
    again = ddpm_sample_loop(d, model, (3, 2), np.random.default_rng(2), noise=x_T, dtype=dtype)
    assert np.array_equal(again, x0)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_sample_loop_with_exact_eps_samples_the_gaussian(var_type):
    """Data N(mu, s^2): eps*(x_t) = sqrt(1-ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab) is exact,
    so ancestral samples have mean mu and std s up to the error of fixed variances. Measured
    with 1e5 samples, T = 1000 linear: std - s = -0.0027 (fixed_small), +0.0020 (fixed_large);
    with T = 200 (beta_end = 0.1) fixed_small gives -0.016, which is why T = 1000 here."""
    mu, s, betas = 0.5, 0.3, linear_beta_schedule(1000)
    d, ab = GaussianDiffusion(betas, model_var_type=var_type), np.array(alpha_bars(betas))

    def model(x, t):
        a = ab[t][:, None]
        return np.sqrt(1 - a) * (x - np.sqrt(a) * mu) / (a * s * s + 1 - a)
    x = ddpm_sample_loop(d, model, (20_000, 1), np.random.default_rng(0), dtype=np.float64)
    assert abs(x.mean() - mu) < 0.01 and abs(x.std() - s) < 0.008     # standard errors: 0.002 and 0.0015


# ---------------------------------------------------------------- dtypes, edges, validation
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_function_keeps_dtype_and_is_finite_at_both_ends(dtype):
    T = 100
    for var_type in VAR_TYPES:
        d = GaussianDiffusion(linear_beta_schedule(T), "eps", var_type, loss_type="kl")
        rng = np.random.default_rng(0)
        x0, eps = random_data(rng, B=2, dtype=dtype), random_data(rng, B=2, dtype=dtype)
        t = np.array([0, T - 1])
        x_t = d.q_sample(x0, t, noise=eps)
        results = [x_t, d.q_step(x0, t, noise=eps), *d.q_step_mean_variance(x0, t), *d.q_mean_variance(x0, t),
                   *d.q_posterior_mean_variance(x0, x_t, t), d.predict_x0_from_eps(x_t, t, eps),
                   d.predict_eps_from_x0(x_t, t, x0), d.score_from_eps(x_t, t, eps),
                   d.predict_x0_from_v(x_t, t, eps), d.velocity(x0, t, eps), d.predict_x0_from_mean(x_t, t, x0)]
        width = 6 if var_type.startswith("learned") else 3
        model = lambda x, tt: np.concatenate([x, x], 1)[:, :width] * 0.1
        results += list(d.p_mean_variance(model, x_t, t).values())
        results += list(d.p_sample(model, x_t, t, noise=eps).values())
        for r in results:
            assert r.dtype == dtype and np.all(np.isfinite(r)), (var_type, r.dtype)


def test_buffers_are_float64_and_follow_their_formulas():
    betas = linear_beta_schedule(30, 1e-3, 0.2)
    d, ab = GaussianDiffusion(betas.astype(np.float32)), np.array(alpha_bars(betas.astype(np.float32)))
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1"):
        assert getattr(d, name).dtype == np.float64
    np.testing.assert_allclose(d.alphas_cumprod, ab, rtol=1e-14)
    np.testing.assert_allclose(d.alphas_cumprod_prev[1:], ab[:-1], rtol=1e-14)
    np.testing.assert_allclose(d.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / ab - 1), rtol=1e-12)
    ab_prev = np.append(1.0, ab[:-1])
    np.testing.assert_allclose(d.posterior_mean_coef1, d.betas * np.sqrt(ab_prev) / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(d.posterior_mean_coef2, np.sqrt(1 - d.betas) * (1 - ab_prev) / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(d.posterior_variance, d.betas * (1 - ab_prev) / (1 - ab), rtol=1e-12)


@pytest.mark.parametrize("kwargs, needle", [
    ({"model_mean_type": "epsilon"}, "model_mean_type.*'epsilon'"),
    ({"model_var_type": "small"}, "model_var_type.*'small'"),
    ({"loss_type": "l2"}, "loss_type.*'l2'"),
    ({"decoder_nll": "bits"}, "decoder_nll.*'bits'"),
    ({"model_var_type": "learned_range"}, "loss_type='mse'.*'learned_range'.*hybrid"),
])
def test_options_are_validated(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GaussianDiffusion(linear_beta_schedule(10), **kwargs)


def test_invalid_inputs_name_the_value():
    d = GaussianDiffusion(linear_beta_schedule(10))
    with pytest.raises(ValueError, match=r"betas\[3\] = 1\.2"):
        GaussianDiffusion([0.1, 0.2, 0.3, 1.2])
    with pytest.raises(ValueError, match="alpha_bar underflows"):
        GaussianDiffusion(np.full(2000, 0.5))
    with pytest.raises(ValueError, match="0..9, got 10"):
        d.q_sample(np.zeros((2, 3)), np.array([0, 10]), noise=np.zeros((2, 3)))
    with pytest.raises(TypeError, match="dtype int64"):
        d.q_sample(np.zeros((2, 3), np.int64), np.array([0, 1]), noise=np.zeros((2, 3)))
    with pytest.raises(TypeError, match="rng"):
        d.q_sample(np.zeros((2, 3)), np.array([0, 1]))
