"""td.sde, td.ode and td.likelihood against independent truths: the discrete schedule, DDIM,
finite differences, closed-form Gaussians and the exact density of the 8-mode mixture."""
import math

import numpy as np
import pytest

import tinydiff as td
from tinydiff import likelihood as L
from tinydiff import ode
from tinydiff.sde import VPSDE, ode_drift, ode_sample_loop, score_fn, sde_sample_loop, time_grid

MIX = td.oracles.eight_gaussians()


def linear(T=1000):
    return td.GaussianDiffusion(td.linear_beta_schedule(T))


# ---------------------------------------------------------------- the continuous schedule
@pytest.mark.parametrize("betas", [td.linear_beta_schedule(1000), td.cosine_beta_schedule(1000),
                                   td.linear_beta_schedule(50, 1e-3, 0.3)])
def test_the_continuous_schedule_is_the_discrete_one_at_every_step(betas):
    """ab(k / T) is the running product alphas_cumprod[k - 1] (computed here by a loop), and the
    integral of beta(t) over step k (Gauss-Legendre, 5 nodes: exact for the quadratic piece) is
    -log(1 - beta_k), so exp(-int beta) gives it back; beta is positive and continuous."""
    sde = VPSDE(td.GaussianDiffusion(betas))
    T, running = len(betas), 1.0
    for k in range(1, T + 1):
        running *= 1.0 - betas[k - 1]
        assert sde.alpha_bar(k / T) == pytest.approx(running, rel=1e-9)
    nodes, weights = np.polynomial.legendre.leggauss(5)
    k = np.arange(T)[:, None]
    integral = np.sum(weights * sde.beta((k + (nodes + 1) / 2) / T), axis=1) / (2 * T)
    np.testing.assert_allclose(integral, -np.log1p(-betas), rtol=1e-9)
    fine = np.linspace(0, 1, 20 * T + 1)
    assert np.all(sde.beta(fine) > 0)
    assert np.max(np.abs(sde.beta(np.arange(1, T) / T + 1e-12) - sde.beta(np.arange(1, T) / T - 1e-12))) < 1e-6 * T
    np.testing.assert_allclose(sde.sigma(fine) ** 2 + sde.alpha_bar(fine), 1.0, rtol=1e-12)


def test_ddpm_linear_schedule_becomes_song_et_al_beta_of_t():
    """Song et al. 2021 (eq. 32 and App. B): DDPM's linear betas are beta(t) = 0.1 + 19.9 t as T grows;
    the gap is one step's worth of beta (20 / T) plus -log(1 - b) - b ~ b^2 / 2 per step (<= 1% of beta)."""
    t = np.linspace(0.01, 1.0, 50)
    for T in (1000, 10000):
        sde = VPSDE(td.GaussianDiffusion(td.linear_beta_schedule(T, 0.1 / T, 20.0 / T)))
        np.testing.assert_allclose(sde.beta(t), 0.1 + 19.9 * t, rtol=0.011, atol=21.0 / T)


def test_bad_times_are_refused():
    with pytest.raises(ValueError, match="t_min, t_max"):
        VPSDE(linear(), t_min=0.0)
    with pytest.raises(TypeError, match="GaussianDiffusion"):
        VPSDE("linear")
    with pytest.raises(ValueError, match="respaced"):
        VPSDE(td.respace(linear(), 10))
    with pytest.raises(ValueError, match="steps"):
        time_grid(VPSDE(linear()), 0)
    with pytest.raises(ValueError, match="hutchinson"):
        L.ode_log_likelihood(VPSDE(linear()), lambda x, t: -x, np.zeros((1, 2)), divergence="hutchinson")


# ---------------------------------------------------------------- the score of every parametrisation
def test_the_score_is_the_same_from_an_eps_an_x0_and_a_v_model():
    """The oracle's eps- and x0-networks (and v built from them) give one score, = the exact one."""
    d_eps = linear(100)
    oracle = td.oracles.GaussianMixtureOracle(*MIX, diffusion=d_eps)
    sde = VPSDE(d_eps)
    x, t = np.random.default_rng(0).standard_normal((64, 2)), 0.37             # t between two steps
    t_k = 0.37 * 100 - 1                                                    # the real step: 36 + 0.0
    exact = oracle.score(x, np.full(64, int(round(t_k))))
    s_eps = score_fn(sde, oracle.eps_model())(x, t)
    s_x0 = score_fn(VPSDE(td.GaussianDiffusion(d_eps.betas, model_mean_type="x0")), oracle.x0_model())(x, t)

    def v_model(x_t, steps):
        a, s = np.sqrt(d_eps.alphas_cumprod[steps])[:, None], np.sqrt(1 - d_eps.alphas_cumprod[steps])[:, None]
        return a * oracle.eps(x_t, steps) - s * oracle.x0_mean(x_t, steps)
    s_v = score_fn(VPSDE(td.GaussianDiffusion(d_eps.betas, model_mean_type="v")), v_model)(x, t)
    for s in (s_eps, s_x0, s_v):
        np.testing.assert_allclose(s, exact, rtol=1e-6, atol=1e-8)


def test_between_two_steps_the_network_is_interpolated_linearly():
    """At t between steps k and k+1 the model sees both integer steps, weighted by the distance."""
    sde = VPSDE(linear(100))
    calls = []

    def model(x, t):
        calls.append(np.asarray(t))
        return np.broadcast_to(t[:, None].astype(np.float64), x.shape) * np.ones_like(x)
    eps = -score_fn(sde, model)(np.zeros((3, 2)), 0.4525) * sde.sigma(0.4525)     # real step 44.25
    np.testing.assert_allclose(eps, 44.25)
    assert sorted(set(calls[0].tolist())) == [44, 45]


# ---------------------------------------------------------------- the solvers
def test_solvers_converge_at_their_order():
    """dy/dt = -2 t y, y(0) = 1: y(1) = e^-1. Halving h divides the error by 2^order."""
    f, exact = (lambda t, y: -2 * t * y), math.exp(-1)
    for method, order in (("euler", 1), ("heun", 2), ("rk4", 4)):
        errs = [abs(ode.solve_fixed(f, np.ones((1, 1)), np.linspace(0, 1, n + 1), method)["y"][0, 0] - exact)
                for n in (20, 40)]
        assert errs[0] / errs[1] == pytest.approx(2 ** order, rel=0.15), method
    for tol in (1e-4, 1e-8):
        sol = ode.rk45(f, np.ones((1, 1)), 0.0, 1.0, rtol=tol, atol=tol)
        assert abs(sol["y"][0, 0] - exact) < 10 * tol and sol["nfe"] == 6 * (len(sol["times"]) - 1 + sol["rejected"]) + 2
    back = ode.rk45(f, np.full((1, 1), exact), 1.0, 0.0, rtol=1e-9, atol=1e-9)      # time running down
    assert back["y"][0, 0] == pytest.approx(1.0, abs=1e-7)


def test_ode_sampler_meets_ddim_in_the_many_step_limit():
    """DDIM (eta = 0) is Euler's method for the probability-flow ODE in x / sqrt(ab) (Song, Meng &
    Ermon 2021, sec. 4.3): from the same noise, with the exact score, it approaches the RK45 solution."""
    d = linear(1000)
    model = td.oracles.GaussianMixtureOracle(*MIX, diffusion=d).eps_model()
    noise = np.random.default_rng(3).standard_normal((200, 2))
    x_ode, nfe = ode_sample_loop(d, model, (200, 2), None, noise=noise, rtol=1e-6, atol=1e-6, return_nfe=True,
                                 dtype=np.float64)
    err = {k: np.mean(np.abs(td.ddim_sample_loop(d, model, (200, 2), np.random.default_rng(0), steps=k, noise=noise,
                                                 dtype=np.float64) - x_ode)) for k in (50, 200, 1000)}
    assert err[1000] < err[200] < err[50] and err[1000] < 0.01, err
    assert err[1000] < err[50] / 4
    heun = ode_sample_loop(d, model, (200, 2), None, noise=noise, method="heun", steps=200, dtype=np.float64)
    assert np.mean(np.abs(heun - x_ode)) < 0.01 and nfe > 50


def test_sde_and_ode_samplers_find_all_eight_modes_with_the_exact_score():
    d = linear(1000)
    model = td.oracles.GaussianMixtureOracle(*MIX, diffusion=d).eps_model()
    for x in (sde_sample_loop(d, model, (800, 2), np.random.default_rng(0), steps=200),
              ode_sample_loop(d, model, (800, 2), np.random.default_rng(0), method="rk4", steps=50)):
        assert td.metrics.mode_coverage(x, MIX[0], 0.1) == 8
        assert td.metrics.mode_precision(x, MIX[0], 0.1) > 0.9


# ---------------------------------------------------------------- divergences
def small_net(dtype=np.float64):
    return td.models.ToyMLP(data_dim=3, hidden=16, rng=np.random.default_rng(0), dtype=dtype)


def drift_of(net, sde, t=0.3):
    return lambda v: ode_drift(sde, score_fn(sde, net), v, t)


def test_exact_divergence_equals_finite_differences():
    """tr J by D backward passes against central differences of the drift in float64."""
    sde = VPSDE(linear(100))
    fn = drift_of(small_net(), sde)
    x = np.random.default_rng(1).standard_normal((5, 3))
    _, div = L.divergence_exact(fn, x)
    h, fd = 1e-5, np.zeros(5)
    for i in range(3):
        e = np.zeros((1, 3))
        e[0, i] = h
        with td.no_grad():
            fd += (fn(x + e).data[:, i] - fn(x - e).data[:, i]) / (2 * h)
    np.testing.assert_allclose(div, fd, rtol=1e-6, atol=1e-6)


def test_hutchinson_is_unbiased_with_the_variance_its_docstring_states():
    """Mean over 4,000 Rademacher probes within 4 standard errors of the exact trace; the spread of
    v^T J v is sum_{i<j} (J_ij + J_ji)^2, computed from the exact Jacobian."""
    sde = VPSDE(linear(100))
    net, n = small_net(), 4000
    x = np.repeat(np.random.default_rng(2).standard_normal((1, 3)), n, axis=0)
    _, exact = L.divergence_exact(drift_of(net, sde), x[:1])
    J = np.zeros((3, 3))                                                     # the Jacobian, row by row
    for i in range(3):
        x_t = td.Tensor(x[:1], requires_grad=True)
        out = drift_of(net, sde)(x_t)
        seed = np.zeros((1, 3))
        seed[0, i] = 1.0
        out.backward(seed)
        J[i] = x_t.grad[0]
    assert np.trace(J) == pytest.approx(exact[0], rel=1e-10)
    _, est = L.divergence_hutchinson(drift_of(net, sde), x, L.rademacher((n, 3), np.random.default_rng(3), np.float64))
    var = sum((J[i, j] + J[j, i]) ** 2 for i in range(3) for j in range(i + 1, 3))
    assert abs(est.mean() - exact[0]) < 4 * math.sqrt(var / n)
    assert est.var() == pytest.approx(var, rel=0.1)


# ---------------------------------------------------------------- the change of variables
def gaussian_case(D=3):
    """Data N(mu, S) with a full covariance: q_t = N(sqrt(ab) mu, ab S + (1 - ab) I), score in closed form."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((D, D))
    S, mu = 0.3 * A @ A.T + 0.05 * np.eye(D), rng.standard_normal(D)
    sde = VPSDE(linear(1000))

    def cov(t):
        ab = float(sde.alpha_bar(t))
        return ab * S + (1 - ab) * np.eye(D), math.sqrt(ab) * mu

    def score(x, t):                                     # -(C^-1)(x - m), written with Tensor-friendly ops
        C, m = cov(t)
        return (x - m) @ (-np.linalg.inv(C))
    return sde, score, cov, rng.multivariate_normal(mu, S, size=64)


def gaussian_log_prob(x, C, m):
    d = x - m
    return -0.5 * (len(m) * math.log(2 * math.pi) + np.linalg.slogdet(C)[1]
                   + np.einsum("bi,ij,bj->b", d, np.linalg.inv(C), d))


def test_the_flow_of_a_gaussian_gives_its_closed_form_density():
    """log p_{t_min}(x) = log p_1(x(1)) + int div: with the true q_1 as the prior the ODE gives
    log N(x; sqrt(ab) mu, ab S + (1 - ab) I) at t_min to 1e-5 nats (exact divergence); with N(0, I)
    as the prior (what a model uses) it is off by the prior's mismatch at t = 1, here ~1e-2 nats;
    Hutchinson is unbiased across probes (mean of 100 runs within 4 standard errors)."""
    sde, score, cov, x = gaussian_case()
    truth = gaussian_log_prob(x, *cov(sde.t_min))

    def with_true_prior(out):
        return gaussian_log_prob(out["z"], *cov(1.0)) + out["delta"]
    out = L.ode_log_likelihood(sde, score, x, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(with_true_prior(out), truth, atol=1e-5)
    assert 1e-4 < np.max(np.abs(out["log_prob"] - truth)) < 0.1          # the N(0, I) prior's small mismatch
    rk4 = L.ode_log_likelihood(sde, score, x, method="rk4", steps=200)
    np.testing.assert_allclose(with_true_prior(rk4), truth, atol=1e-4)
    heun = L.ode_log_likelihood(sde, score, x, method="heun", steps=200)
    assert np.max(np.abs(with_true_prior(heun) - truth)) > np.max(np.abs(with_true_prior(rk4) - truth))
    reps = np.stack([with_true_prior(L.ode_log_likelihood(sde, score, x[:8], divergence="hutchinson",
                                                          rng=np.random.default_rng(s), rtol=1e-5, atol=1e-5))
                     for s in range(100)])
    err = reps.mean(axis=0) - truth[:8]
    assert np.all(np.abs(err) < 4 * reps.std(axis=0, ddof=1) / 10 + 1e-4), err
    assert np.all(reps.std(axis=0) > 1e-3)                                # a full covariance: probes do matter


def test_the_oracle_ode_gives_back_the_true_density_of_the_mixture_and_tightening_helps():
    d = linear(1000)
    oracle = td.oracles.GaussianMixtureOracle(*MIX, diffusion=d)
    sde = VPSDE(d, t_min=1e-5)
    x = td.oracles.mixture_sample(500, *MIX, rng=np.random.default_rng(5))
    truth = td.oracles.mixture_log_prob(x, *MIX)
    gaps = []
    for tol in (1e-2, 1e-5):
        out = L.ode_log_likelihood(sde, lambda v, t: oracle.score_at(v, sde.alpha_bar(t)), x, rtol=tol, atol=tol,
                                   score_divergence=lambda v, t: oracle.score_divergence_at(v, sde.alpha_bar(t)))
        gaps.append(abs(np.mean(out["log_prob"] - truth)) / math.log(2))
    assert gaps[1] < 1e-3 and gaps[1] < gaps[0]


def test_score_divergence_at_matches_autograd_free_finite_differences():
    d = linear(100)
    oracle = td.oracles.GaussianMixtureOracle(*MIX, diffusion=d)
    x, ab, h = np.random.default_rng(6).standard_normal((7, 2)), 0.6, 1e-6
    fd = sum((oracle.score_at(x + h * np.eye(2)[i], ab)[:, i] - oracle.score_at(x - h * np.eye(2)[i], ab)[:, i]) / (2 * h)
             for i in range(2))
    np.testing.assert_allclose(oracle.score_divergence_at(x, ab), fd, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- images and seeds
def test_dequantized_bits_per_dim_is_reproducible_for_a_seed_and_counts_the_bins():
    """N(0, I) as the model of z: the bits/dim are -log2 N(z) / D + 7 for the drawn u, the same for a seed."""
    sde = VPSDE(linear(100))
    images = np.random.default_rng(7).integers(0, 256, size=(4, 1, 2, 2))
    a, _ = L.dequantized_bits_per_dim(sde, lambda x, t: -x, images, np.random.default_rng(1), divergence="hutchinson")
    b, _ = L.dequantized_bits_per_dim(sde, lambda x, t: -x, images, np.random.default_rng(1), divergence="hutchinson")
    c, _ = L.dequantized_bits_per_dim(sde, lambda x, t: -x, images, np.random.default_rng(2), divergence="hutchinson")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    z = ((images + np.random.default_rng(1).random(images.shape)) / 128 - 1).astype(np.float32).reshape(4, -1)
    expect = (0.5 * np.sum(z.astype(np.float64) ** 2, 1) + 2 * math.log(2 * math.pi)) / (4 * math.log(2)) + 7
    np.testing.assert_allclose(a, expect, rtol=1e-5)
    with pytest.raises(ValueError, match="8-bit"):
        L.dequantized_bits_per_dim(sde, lambda x, t: -x, images * 2.0, np.random.default_rng(1))


def test_samplers_are_reproducible_for_a_seed():
    d = linear(50)
    model = td.oracles.GaussianMixtureOracle(*MIX, diffusion=d).eps_model()
    for name in ("sde", "ode"):
        a, b = (td.sample(d, model, (5, 2), np.random.default_rng(0), sampler=name, steps=10) for _ in range(2))
        np.testing.assert_array_equal(a, b)
