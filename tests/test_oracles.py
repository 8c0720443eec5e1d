"""Gaussian-mixture oracles against quadrature, finite differences, naive loops and Tweedie,
then the variational bound of a perfect model against the true NLL of the 8-mode mixture.

Gap references (bits per 2-D point, bound minus true NLL): the product owner's figures, and a
Rao-Blackwellised estimate computed here (each bound term averaged over q(x_0|x_t) in closed
form, so its Monte Carlo error is ~0.002 instead of calc_bpd_loop's ~0.05-0.08 at 2000 points).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinydiff import Tensor
from tinydiff.diffusion import GaussianDiffusion
from tinydiff.oracles import (GaussianMixtureOracle, eight_gaussians, mixture_log_prob,
                              mixture_sample)
from tinydiff.schedules import linear_beta_schedule

FAST = settings(max_examples=20, deadline=None)
LOG2 = math.log(2.0)
MIX1D = (np.array([[-1.0], [0.5], [2.0]]), np.array([0.3, 0.1, 0.5]), np.array([0.2, 0.5, 0.3]))


def make_diffusion(T, **kwargs):
    """DDPM's linear schedule rescaled to T steps (1e-4 * 1000/T .. 0.02 * 1000/T), as in
    improved-diffusion; the product owner's T = 100 and T = 40 figures use this rescaling.
    Needs T > 20 (else beta_end >= 1)."""
    return GaussianDiffusion(linear_beta_schedule(T, 0.1 / T, 20.0 / T), **kwargs)


def trapezoid(y, x, axis=-1):
    return np.trapezoid(y, x, axis=axis) if hasattr(np, "trapezoid") else np.trapz(y, x, axis=axis)


def log_normal(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


# ---------------------------------------------------------------- mixture density
@FAST
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2 ** 31))
def test_mixture_log_prob_matches_naive_loop(K, D, seed):
    rng = np.random.default_rng(seed)
    means, stds = rng.normal(size=(K, D)), rng.uniform(0.2, 2.0, K)
    w = rng.dirichlet(np.ones(K))
    x = means[rng.integers(0, K, 5)] + rng.normal(size=(5, D))   # near a mode: no underflow in the twin
    naive = np.zeros(5)
    for b in range(5):                                   # the twin: loops, no logsumexp
        density = 0.0
        for k in range(K):
            d2 = float(np.sum((x[b] - means[k]) ** 2))
            density += w[k] * (2 * np.pi * stds[k] ** 2) ** (-D / 2) * math.exp(-d2 / (2 * stds[k] ** 2))
        naive[b] = math.log(density)
    np.testing.assert_allclose(mixture_log_prob(x, means, stds, w), naive, rtol=1e-10, atol=1e-12)


def test_mixture_sample_has_mixture_moments():
    means, stds, w = MIX1D
    x = mixture_sample(200_000, means, stds, w, rng=np.random.default_rng(0))
    mean = float(w @ means[:, 0])
    var = float(w @ (stds ** 2 + means[:, 0] ** 2)) - mean ** 2
    assert abs(x.mean() - mean) < 4 * math.sqrt(var / len(x))
    assert abs(x.var() / var - 1) < 0.02                  # 4 sd of the variance ratio is ~0.013


# ---------------------------------------------------------------- Bayes' rule by quadrature (1-D)
X0_GRID = np.linspace(-6.0, 7.0, 40001)                   # spacing 3e-4, resolves the std-0.1 mode


@FAST
@given(st.integers(0, 49), st.floats(-3, 3))
def test_marginal_and_posterior_match_quadrature(t, xt):
    """q(x_t) = int q(x_t|x_0) q(x_0) dx_0 and the moments of q(x_0|x_t), on a grid."""
    d = make_diffusion(50)
    oracle = GaussianMixtureOracle(*MIX1D, diffusion=d)
    ab = d.alphas_cumprod[t]
    joint = np.exp(log_normal(xt, math.sqrt(ab) * X0_GRID, 1 - ab)
                   + mixture_log_prob(X0_GRID[:, None], *MIX1D))
    z = trapezoid(joint, X0_GRID)
    m1 = trapezoid(joint * X0_GRID, X0_GRID) / z
    m2 = trapezoid(joint * X0_GRID ** 2, X0_GRID) / z
    x, tt = np.array([[xt]]), np.array([t])
    np.testing.assert_allclose(np.exp(oracle.log_prob(x, tt)), z, rtol=1e-6)
    mean, var = oracle.x0_posterior(x, tt)
    np.testing.assert_allclose(mean[0, 0], m1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(var[0, 0], m2 - m1 ** 2, rtol=1e-5, atol=1e-8)


@FAST
@given(st.integers(1, 49), st.floats(-3, 3))
def test_reverse_moments_match_quadrature(t, xt):
    """q(x_{t-1}|x_t) proportional to q(x_t|x_{t-1}) q(x_{t-1}), with q(x_{t-1}) the oracle's
    own marginal: an independent route to mean = c1 E[x_0|x_t] + c2 x_t, var = beta~ + c1^2 Var."""
    d = make_diffusion(50)
    oracle = GaussianMixtureOracle(*MIX1D, diffusion=d)
    beta = d.betas[t]
    centre, half = xt / math.sqrt(1 - beta), 8 * math.sqrt(beta) + 1e-9
    grid = np.linspace(centre - half - 0.5, centre + half + 0.5, 40001)
    log_prev = oracle.log_prob(grid[:, None], np.full(len(grid), t - 1))
    w = np.exp(log_normal(xt, math.sqrt(1 - beta) * grid, beta) + log_prev)
    z = trapezoid(w, grid)
    m1 = trapezoid(w * grid, grid) / z
    var = trapezoid(w * (grid - m1) ** 2, grid) / z
    mean, v = oracle.reverse_moments(np.array([[xt]]), np.array([t]))
    np.testing.assert_allclose(mean[0, 0], m1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v[0, 0], var, rtol=1e-4)


# ---------------------------------------------------------------- score, Tweedie, eps
@FAST
@given(st.integers(0, 49), st.integers(0, 2 ** 31))
def test_score_matches_finite_differences_of_log_prob(t, seed):
    rng = np.random.default_rng(seed)
    oracle = GaussianMixtureOracle(*eight_gaussians(), diffusion=make_diffusion(50))
    x, tt, h = rng.normal(size=(4, 2)) * 2, np.full(4, t), 1e-5
    fd = np.stack([(oracle.log_prob(x + h * e, tt) - oracle.log_prob(x - h * e, tt)) / (2 * h)
                   for e in np.eye(2)], axis=1)
    np.testing.assert_allclose(oracle.score(x, tt), fd, rtol=1e-5, atol=1e-5)


@FAST
@given(st.integers(0, 2 ** 31))
def test_tweedie_and_eps_identities(seed):
    """E[x_0|x_t] (mixture posterior) = (x_t + (1 - ab) score) / sqrt(ab) (Tweedie), and
    x_t = sqrt(ab) E[x_0|x_t] + sqrt(1 - ab) eps* (so eps* = E[eps|x_t])."""
    rng = np.random.default_rng(seed)
    d = make_diffusion(50)
    oracle = GaussianMixtureOracle(*eight_gaussians(), diffusion=d)
    x, t = rng.normal(size=(16, 2)) * 2, rng.integers(0, 50, 16)
    ab = d.alphas_cumprod[t][:, None]
    x0 = oracle.x0_mean(x, t)
    np.testing.assert_allclose(x0, (x + (1 - ab) * oracle.score(x, t)) / np.sqrt(ab), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.sqrt(ab) * x0 + np.sqrt(1 - ab) * oracle.eps(x, t), x, rtol=1e-10, atol=1e-10)


def test_single_gaussian_eps_closed_form():
    """K = 1: eps* = sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab)."""
    d = make_diffusion(30)
    m, s = np.array([0.7, -1.2, 0.3]), 0.4
    oracle = GaussianMixtureOracle(m, s, diffusion=d)
    x, t = np.random.default_rng(0).normal(size=(6, 3)), np.array([0, 5, 10, 20, 29, 0])
    ab = d.alphas_cumprod[t][:, None]
    expected = np.sqrt(1 - ab) * (x - np.sqrt(ab) * m) / (ab * s * s + 1 - ab)
    np.testing.assert_allclose(oracle.eps(x, t), expected, rtol=1e-12)


def test_batch_with_mixed_timesteps_matches_per_example_loop():
    d = make_diffusion(30)
    oracle = GaussianMixtureOracle(*eight_gaussians(), diffusion=d)
    rng = np.random.default_rng(1)
    x, t = rng.normal(size=(7, 2)), rng.integers(0, 30, 7)
    for name in ("score", "eps", "x0_mean"):
        batched = getattr(oracle, name)(x, t)
        looped = np.concatenate([getattr(oracle, name)(x[b:b + 1], t[b:b + 1]) for b in range(7)])
        np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_dtype_and_image_shapes():
    """float32 in -> float32 out; [B, C, H, W] data is a mixture in D = C*H*W dimensions."""
    d = make_diffusion(30)
    rng = np.random.default_rng(2)
    oracle = GaussianMixtureOracle(rng.normal(size=(3, 12)), 0.5, diffusion=d)
    x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    t = np.array([0, 3, 16, 29])
    eps = oracle.eps_model()(x, t)
    assert eps.shape == x.shape and eps.dtype == np.float32
    flat = oracle.eps(x.reshape(4, 12).astype(np.float64), t)
    np.testing.assert_allclose(eps.reshape(4, 12), flat, rtol=1e-5, atol=1e-5)
    out = oracle.mean_logvar_model()(x, t)
    assert out.shape == (4, 6, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(oracle.eps_model()(Tensor(x), t), eps)     # Tensors are read too


def test_model_callables_reproduce_reverse_moments_through_diffusion():
    """p_mean_variance of a 'mean'/'learned' diffusion fed by mean_logvar_model gives the exact
    reverse moments; learned_range gives them wherever v is inside [-1, 1], and the range's
    ends where it is clipped."""
    means, stds, w = eight_gaussians()
    rng = np.random.default_rng(3)
    t = rng.integers(0, 40, 200)
    learned = make_diffusion(40, model_mean_type="mean", model_var_type="learned", loss_type="kl")
    x = learned.q_sample(mixture_sample(200, means, stds, w, rng=rng), t, rng=rng)   # x_t ~ q(x_t)
    ranged = make_diffusion(40, model_var_type="learned_range", loss_type="kl")
    exact = GaussianMixtureOracle(means, stds, w, learned)
    mean, var = exact.reverse_moments(x, t)
    out = learned.p_mean_variance(exact.mean_logvar_model(), x, t)
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["variance"], var, rtol=1e-10)
    x0_type = make_diffusion(40, model_mean_type="x0")
    out = x0_type.p_mean_variance(GaussianMixtureOracle(means, stds, w, x0_type).x0_model(), x, t)
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-8, atol=1e-10)
    oracle = GaussianMixtureOracle(means, stds, w, ranged)
    v = oracle.learned_range_model()(x, t)[:, 2:]
    out = ranged.p_mean_variance(oracle.learned_range_model(), x, t)
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-8, atol=1e-10)
    inside = np.abs(v) < 1
    assert inside.any() and (~inside).any()               # both branches are exercised
    np.testing.assert_allclose(out["variance"][inside], var[inside], rtol=1e-8)
    lo = np.exp(ranged.posterior_log_variance_clipped[t])[:, None]
    hi = ranged.betas[t][:, None]
    ends = np.where(v == 1, hi, lo) * np.ones((1, 2))
    np.testing.assert_allclose(out["variance"][~inside], ends[~inside], rtol=1e-10)


def test_optimal_variance_exceeds_beta_exactly_when_posterior_variance_exceeds_one_minus_ab():
    """beta~ + c1^2 Var[x_0|x_t] <= beta_t  <=>  Var[x_0|x_t] <= 1 - ab_t (algebra in
    learned_range_model's docstring); the 8-mode data (per-dimension variance ~2) cross it."""
    d = make_diffusion(40)
    oracle = GaussianMixtureOracle(*eight_gaussians(), diffusion=d)
    rng = np.random.default_rng(4)
    t = rng.integers(1, 40, 500)
    x = d.q_sample(mixture_sample(500, *eight_gaussians(), rng=rng), t, rng=rng)
    _, var = oracle.reverse_moments(x, t)
    _, post_var = oracle.x0_posterior(x, t)
    above = var > d.betas[t][:, None]
    assert above.any() and (~above).any()
    np.testing.assert_array_equal(above, post_var > 1 - d.alphas_cumprod[t][:, None])


@pytest.mark.parametrize("kwargs, name", [
    (dict(means=np.ones((2, 2, 2)), stds=0.1, weights=None), "means"),
    (dict(means=np.ones((2, 2)), stds=-0.1, weights=None), "stds"),
    (dict(means=np.ones((2, 2)), stds=[0.1, 0.1, 0.1], weights=None), "stds"),
    (dict(means=np.ones((2, 2)), stds=0.1, weights=[0.3, 0.3]), "weights"),
])
def test_bad_mixture_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GaussianMixtureOracle(diffusion=make_diffusion(30), **kwargs)


def test_bad_call_arguments_name_the_argument():
    oracle = GaussianMixtureOracle(*eight_gaussians(), diffusion=make_diffusion(30))
    with pytest.raises(ValueError, match="x_t"):
        oracle.eps(np.zeros((3, 3)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="t"):
        oracle.eps(np.zeros((3, 2)), np.array([0, 1, 30]))
    with pytest.raises(TypeError, match="diffusion"):
        GaussianMixtureOracle(*eight_gaussians(), diffusion=None)


# ---------------------------------------------------------------- the bound of a perfect model
VARIANTS = {   # name: (GaussianDiffusion kwargs, oracle factory)
    "fixed_small": (dict(model_var_type="fixed_small"), "eps_model"),
    "fixed_large": (dict(model_var_type="fixed_large"), "eps_model"),
    "optimal": (dict(model_mean_type="mean", model_var_type="learned", loss_type="kl"), "mean_logvar_model"),
    "learned_range": (dict(model_var_type="learned_range", loss_type="kl"), "learned_range_model"),
}


def measured_gaps(T, n, names, seed=0):
    """calc_bpd_loop's bound minus the true NLL, bits per 2-D point: {name: (mean, standard error)}."""
    means, stds, w = eight_gaussians()
    x0 = mixture_sample(n, means, stds, w, rng=np.random.default_rng(seed))
    nll_bits = -mixture_log_prob(x0, means, stds, w) / LOG2
    gaps = {}
    for name in names:
        kwargs, factory = VARIANTS[name]
        d = make_diffusion(T, **kwargs)
        model = getattr(GaussianMixtureOracle(means, stds, w, d), factory)()
        g = d.calc_bpd_loop(model, x0, rng=np.random.default_rng(seed + 1))["total_bits"] - nll_bits
        gaps[name] = (g.mean(), g.std(ddof=1) / math.sqrt(n))
    return gaps


def rao_blackwell_gaps(T, n, seed=0):
    """E[bound] - E[NLL] in bits per point with each term averaged over q(x_0|x_t) exactly.

    For x_t ~ q(x_t) and a model whose mean is the exact reverse mean, E_{x_0|x_t} of
    KL(N(c1 x_0 + c2 x_t, beta~) || N(mean, sigma^2)) = 1/2 [log sigma^2/beta~ - 1
    + (beta~ + c1^2 Var[x_0|x_t]) / sigma^2] per dimension (t >= 1), and of the decoder
    -log N(x_0; mean, sigma^2) = 1/2 [log 2 pi sigma^2 + Var[x_0|x_0-index] / sigma^2] (t = 0).
    The conventions at t = 0 are written out here, not read from the diffusion: fixed_small
    and fixed_large both use beta~_1 (improved-diffusion's choice). Returns {name: (gap, se)}.
    """
    means, stds, w = eight_gaussians()
    d = make_diffusion(T)
    oracle = GaussianMixtureOracle(means, stds, w, d)
    rng = np.random.default_rng(seed)
    b, pv, c1 = d.betas, d.posterior_variance, d.posterior_mean_coef1
    fixed = {"fixed_small": np.append(pv[1], pv[1:]), "fixed_large": np.append(pv[1], b[1:])}
    total = {k: 0.0 for k in ("fixed_small", "fixed_large", "optimal")}
    var_sum = dict.fromkeys(total, 0.0)
    for t in range(T):
        x0 = mixture_sample(n, means, stds, w, rng=rng)
        tt = np.full(n, t)
        _, post_var = oracle.x0_posterior(d.q_sample(x0, tt, rng=rng), tt)        # [n, 2]
        for name in total:
            sigma2 = pv[t] + c1[t] ** 2 * post_var if name == "optimal" else fixed[name][t]
            if t == 0:
                term = 0.5 * (np.log(2 * np.pi * sigma2) + post_var / sigma2)
            else:
                term = 0.5 * (np.log(sigma2 / pv[t]) - 1 + (pv[t] + c1[t] ** 2 * post_var) / sigma2)
            term = np.broadcast_to(term, post_var.shape).sum(axis=1) / LOG2
            total[name] += term.mean()
            var_sum[name] += term.var() / n
    x0 = mixture_sample(n, means, stds, w, rng=rng)
    prior = d.prior_bpd(x0) * 2
    # The true NLL's per-point sd is ~1.44 bits: 100 n points (in chunks) make its error small.
    nll = np.concatenate([-mixture_log_prob(mixture_sample(10 * n, means, stds, w, rng=rng), means, stds, w)
                          for _ in range(10)]) / LOG2
    extra = prior.var() / n + nll.var() / len(nll)
    return {k: (total[k] + prior.mean() - nll.mean(), math.sqrt(var_sum[k] + extra)) for k in total}


def test_bound_is_never_below_true_nll_fast():
    """(a) For every parametrisation the bound on -log p(x_0) is >= the true NLL (T = 100)."""
    for name, (gap, se) in measured_gaps(100, 2000, VARIANTS).items():
        assert gap >= -3 * se, f"{name}: gap {gap:.3f} +- {se:.3f} bits is below 0"


def test_calc_bpd_loop_agrees_with_rao_blackwellised_bound():
    """The bound machinery (GaussianDiffusion.calc_bpd_loop) against an independent low-variance computation (T = 40)."""
    measured = measured_gaps(40, 4000, ("fixed_small", "fixed_large", "optimal"))
    reference = rao_blackwell_gaps(40, 8000)
    for name, (gap, se) in measured.items():
        ref, ref_se = reference[name]
        assert abs(gap - ref) < 4 * math.hypot(se, ref_se), (name, gap, se, ref, ref_se)


# Stated figures (bits per point). Tolerance for calc_bpd_loop: 4 standard errors of its
# per-point mean (CLT; false alarm ~6e-5 per check) plus 0.02 bits for the precision of the
# stated figures themselves: they are given to 2 decimals and "about", and the
# Rao-Blackwellised reference differs from them by up to 0.014 bits (see the report).
STATED = {1000: {"fixed_small": 1.46, "fixed_large": 0.36, "optimal": 0.00},
          100: {"optimal": 0.05}, 40: {"optimal": 0.17}}


@pytest.mark.parametrize("T", [100, 40])
def test_optimal_variance_gap_small_T(T):
    for name, (gap, se) in measured_gaps(T, 2000, STATED[T]).items():
        assert gap >= -3 * se
        assert abs(gap - STATED[T][name]) < 4 * se + 0.02, (T, name, gap, se)


@pytest.mark.slow
def test_gaps_at_T1000_match_stated_figures():
    """(a) and (b) at T = 1000 over 2000 points (about 10 s)."""
    measured = measured_gaps(1000, 2000, STATED[1000])
    for name, (gap, se) in measured.items():
        assert gap >= -3 * se, (name, gap, se)
        assert abs(gap - STATED[1000][name]) < 4 * se + 0.02, (name, gap, se)


@pytest.mark.slow
def test_rao_blackwellised_gaps_at_T1000_match_stated_figures():
    """The precise reference (se ~0.0015 bits) against the stated figures, 0.02 bits."""
    for name, (gap, se) in rao_blackwell_gaps(1000, 20000).items():
        assert abs(gap - STATED[1000][name]) < 0.02, (name, gap, se)
