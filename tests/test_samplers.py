"""Samplers with exact oracles as models.

For Gaussian data N(mu, s^2 I) and the exact eps oracle, every sampler here is an affine map
plus Gaussian noise per step, so its output is exactly Gaussian with moments given by a scalar
recursion (`law_*` below, written from the papers' equations, independently of samplers.py).
Samples must match that law within sampling error (tight: catches implementation bugs), and
the law must match the data up to each sampler's discretisation bias, which the recursion
measures (e.g. fixed_small on 50 of 1000 steps: std -11%, a property of the method, not a bug).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinydiff.diffusion import GaussianDiffusion
from tinydiff.oracles import GaussianMixtureOracle, eight_gaussians
from tinydiff.guidance import ClassifierFreeGuidance
from tinydiff.samplers import (ddim_sample_loop, ddim_step, ddpm_sample_loop, langevin_sample_loop,
                               langevin_step, respace, respaced_betas, sample, space_timesteps)
from tinydiff.schedules import linear_beta_schedule

MU, S = np.array([1.0, -0.5]), 0.5


def ddpm(T=1000, **kwargs):
    """DDPM's linear schedule 1e-4..0.02 rescaled to T steps (improved-diffusion); T > 20."""
    return GaussianDiffusion(linear_beta_schedule(T, 0.1 / T, 20.0 / T), **kwargs)


# ---------------------------------------------------------------- exact laws for Gaussian data
def _eps_affine(ab):
    """eps*(x) = sqrt(1-ab)(x - sqrt(ab) mu)/v = ea x + eb; x0_hat(x) = xa x + xb."""
    v = ab * S * S + 1 - ab
    ea, eb = math.sqrt(1 - ab) / v, -math.sqrt(1 - ab) * math.sqrt(ab) * MU / v
    return ea, eb, (1 - math.sqrt(1 - ab) * ea) / math.sqrt(ab), -math.sqrt(1 - ab) * eb / math.sqrt(ab)


def law_ancestral(ab_kept, variance="fixed_small"):
    """Mean [2] and std of DDPM ancestral sampling on the chain through ab_kept (any stride)."""
    m, v = np.zeros(2), 1.0
    for i in range(len(ab_kept) - 1, -1, -1):
        ab, abp = ab_kept[i], ab_kept[i - 1] if i > 0 else 1.0
        beta = 1 - ab / abp
        c1, c2 = math.sqrt(abp) * beta / (1 - ab), math.sqrt(1 - beta) * (1 - abp) / (1 - ab)   # DDPM eq. 7
        ea, eb, xa, xb = _eps_affine(ab)
        post = S * S * (1 - ab) / (ab * S * S + 1 - ab)                                      # Var[x0|x_t]
        sigma2 = {"fixed_small": beta * (1 - abp) / (1 - ab),
                  "optimal": beta * (1 - abp) / (1 - ab) + c1 * c1 * post}[variance] if i > 0 else 0.0
        a = c1 * xa + c2
        m, v = a * m + c1 * xb, a * a * v + sigma2
    return m, math.sqrt(v)


def law_ddim(ab_kept, eta):
    """Song et al. eq. 12 with sigma from eq. 16, as a recursion on mean and variance."""
    m, v = np.zeros(2), 1.0
    for i in range(len(ab_kept) - 1, -1, -1):
        ab, abp = ab_kept[i], ab_kept[i - 1] if i > 0 else 1.0
        sigma = eta * math.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
        direction = math.sqrt(max(1 - abp - sigma ** 2, 0.0))
        ea, eb, xa, xb = _eps_affine(ab)
        a = math.sqrt(abp) * xa + direction * ea
        m, v = a * m + math.sqrt(abp) * xb + direction * eb, a * a * v + sigma ** 2
    return m, math.sqrt(v)


def law_langevin(ab_kept, n_each, lr):
    """Song & Ermon Algorithm 1 in y = x/sqrt(ab) with score -eps*/sigma, then the Tweedie step."""
    sig = np.sqrt((1 - ab_kept) / ab_kept)
    m, v = np.zeros(2), 1.0 / ab_kept[-1]
    for i in range(len(ab_kept) - 1, -1, -1):
        ea, eb, _, _ = _eps_affine(ab_kept[i])
        sa, sb = -ea * math.sqrt(ab_kept[i]) / sig[i], -eb / sig[i]       # score(y) = sa y + sb
        alpha = lr * (sig[i] / sig[0]) ** 2
        for _ in range(n_each):
            a = 1 + alpha / 2 * sa
            m, v = a * m + alpha / 2 * sb, a * a * v + alpha
    ea, eb, _, _ = _eps_affine(ab_kept[0])
    a = 1 - sig[0] ** 2 * ea * math.sqrt(ab_kept[0]) / sig[0]
    return a * m - sig[0] * eb, abs(a) * math.sqrt(v)


def assert_moments(x, mean, std, k=4.5):
    """Sample mean per dim within k standard errors std/sqrt(n); sample std within k std/sqrt(2n)."""
    n = x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(axis=0) - mean), k * std / math.sqrt(n))
    np.testing.assert_array_less(np.abs(x.std(axis=0) - std), k * std / math.sqrt(2 * n))


def gaussian_setup(T=1000):
    d = ddpm(T)
    return d, GaussianMixtureOracle(MU, S, diffusion=d).eps_model()


N = 4000   # mean se = 0.5/sqrt(4000) = 0.008, std se = 0.0056 (1.1% of s)


def test_ancestral_matches_its_law_and_recovers_data():
    d, model = gaussian_setup(1000)
    x = ddpm_sample_loop(d, model, (N, 2), np.random.default_rng(0), dtype=np.float64)
    mean, std = law_ancestral(d.alphas_cumprod)
    assert abs(std / S - 1) < 0.01                        # discretisation bias at T = 1000: -0.8%
    assert_moments(x, mean, std)
    assert_moments(x, MU, S)


def test_strided_fixed_small_matches_law_and_optimal_variance_recovers_data():
    """50 of 1000 steps: fixed_small is 11% too narrow (Nichol & Dhariwal's motivation for
    learning sigma); the optimal variance (learned_range oracle on the respaced chain) is exact."""
    d, model = gaussian_setup(1000)
    steps = space_timesteps(1000, 50)
    x = ddpm_sample_loop(d, model, (N, 2), np.random.default_rng(1), steps=steps, dtype=np.float64)
    mean, std = law_ancestral(d.alphas_cumprod[steps])
    assert std / S - 1 < -0.1
    assert_moments(x, mean, std)
    d50r = respace(ddpm(1000, model_var_type="learned_range", loss_type="kl"), steps)
    best = GaussianMixtureOracle(MU, S, diffusion=d50r).learned_range_model()
    x = ddpm_sample_loop(d50r, best, (N, 2), np.random.default_rng(2), dtype=np.float64)
    mean, std = law_ancestral(d.alphas_cumprod[steps], "optimal")
    assert abs(std / S - 1) < 1e-3
    assert_moments(x, mean, std)
    assert_moments(x, MU, S)


@pytest.mark.parametrize("eta, steps, bias", [(0.0, None, 0.005), (1.0, None, 0.01),
                                                   (0.0, "ddim50", 0.06), (1.0, "ddim50", 0.12)])
def test_ddim_matches_its_law(eta, steps, bias):
    """Full chain: recovers the data (eta = 0 within 0.5%: the ODE; its mean is off by
    ~s sqrt(ab_T) |mu| from starting at N(0, I) instead of q(x_T)). 50 steps: its law."""
    d, model = gaussian_setup(1000)
    x = ddim_sample_loop(d, model, (N, 2), np.random.default_rng(3), eta=eta, steps=steps,
                         dtype=np.float64)
    mean, std = law_ddim(d.alphas_cumprod[space_timesteps(1000, steps or 1000)], eta)
    assert abs(std / S - 1) < bias
    assert_moments(x, mean, std)
    if steps is None:
        assert_moments(x, MU, S)


def test_langevin_matches_its_law_fast():
    d, model = gaussian_setup(100)
    lr = (1 - d.alphas_cumprod[0]) / d.alphas_cumprod[0]  # alpha_t = sigma_t^2 at every level
    x = langevin_sample_loop(d, model, (N, 2), np.random.default_rng(4), n_steps_each=5, step_lr=lr,
                             dtype=np.float64)
    mean, std = law_langevin(d.alphas_cumprod, 5, lr)
    assert 0.04 < std / S - 1 < 0.1                       # too few steps: 6.7% too wide
    assert_moments(x, mean, std)


@pytest.mark.slow
def test_langevin_recovers_data_with_many_steps():
    d, model = gaussian_setup(1000)
    x = langevin_sample_loop(d, model, (N, 2), np.random.default_rng(5), n_steps_each=10, step_lr=1e-4,
                             dtype=np.float64)
    mean, std = law_langevin(d.alphas_cumprod, 10, 1e-4)
    assert abs(std / S - 1) < 0.01                        # +0.86%, below one standard error
    assert_moments(x, mean, std)
    assert_moments(x, MU, S)


# ---------------------------------------------------------------- exact identities between samplers
def test_ddim_eta1_is_ancestral_fixed_small_draw_for_draw():
    d, model = gaussian_setup(50)
    a = ddpm_sample_loop(d, model, (64, 2), np.random.default_rng(6), dtype=np.float64)
    b = ddim_sample_loop(d, model, (64, 2), np.random.default_rng(6), eta=1.0, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_strided_ddim_eta1_is_ancestral_on_the_respaced_chain():
    d, model = gaussian_setup(1000)
    steps = space_timesteps(1000, "ddim25")
    a = ddpm_sample_loop(respace(d, steps), model, (64, 2), np.random.default_rng(7), dtype=np.float64)
    b = ddim_sample_loop(d, model, (64, 2), np.random.default_rng(7), eta=1.0, steps=steps, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------- respacing
@settings(max_examples=30, deadline=None)
@given(st.integers(21, 1000), st.data())
def test_respaced_betas_reproduce_alpha_bar_at_kept_steps(T, data):
    spec = data.draw(st.one_of(st.integers(1, T), st.builds(lambda k: f"ddim{k}", st.sampled_from(
        [len(range(0, T, s)) for s in range(1, T + 1)]))))
    d = ddpm(T)
    steps = space_timesteps(T, spec)
    new = respace(d, steps)
    # Exact up to rounding: 1 - beta_i = 1 - (1 - r) carries an absolute error ~1e-16, so
    # relative 1e-12, absolute 1e-15 (a tiny final alpha_bar, ~1e-8 at T = 21, is absolute-limited).
    np.testing.assert_allclose(new.alphas_cumprod, d.alphas_cumprod[steps], rtol=1e-12, atol=1e-15)
    assert new.num_timesteps == len(steps) and new.model_var_type == d.model_var_type
    np.testing.assert_array_equal(new.timestep_map, steps)


def test_space_timesteps_specs():
    np.testing.assert_array_equal(space_timesteps(1000, "ddim50"), np.arange(0, 1000, 20))
    s = space_timesteps(1000, 50)
    assert len(s) == 50 and s[0] == 0 and s[-1] == 999 and np.all(np.diff(s) > 0)
    np.testing.assert_array_equal(space_timesteps(10, "10"), np.arange(10))
    np.testing.assert_array_equal(space_timesteps(10, [7, 0, 3]), [0, 3, 7])
    np.testing.assert_allclose(respaced_betas(np.array([0.9, 0.5, 0.2]), np.array([0, 2])), [0.1, 1 - 0.2 / 0.9])
    for bad in (0, 11, "ddim7", "fifty", [3, 3], [0, 10]):
        with pytest.raises(ValueError, match="spec"):
            space_timesteps(10, bad)
    with pytest.raises(ValueError, match="steps"):
        respace(ddpm(30), "ddim7")


def improved_diffusion_space_timesteps(num_timesteps, section_count):
    """improved-diffusion's respace.space_timesteps(num_timesteps, [section_count]), transcribed."""
    frac_stride = 1 if section_count <= 1 else (num_timesteps - 1) / (section_count - 1)
    cur_idx, taken_steps = 0.0, []
    for _ in range(section_count):
        taken_steps.append(round(cur_idx))
        cur_idx += frac_stride
    return set(taken_steps)


def test_space_timesteps_matches_improved_diffusion_for_every_count():
    """The truth: improved-diffusion's own loop. Ties round half to even (166.5 -> 166), where the
    old floor(x + 1/2) gave 167 and disagreed for 308 of K = 2..1000."""
    for T in (1000, 4000, 37):
        for K in range(2, min(T, 1000) + 1):
            assert set(space_timesteps(T, K).tolist()) == improved_diffusion_space_timesteps(T, K), (T, K)
    assert space_timesteps(1000, 25)[4] == 166
    diffusers = sum(set(np.linspace(0, 999, K).round().astype(int).tolist()) != set(space_timesteps(1000, K).tolist())
                    for K in range(2, 1001))
    assert diffusers == 278                                      # the number the docstring states


def test_respaced_chain_calls_the_model_with_original_timesteps():
    """The chain counts 0..K-1 and maps them back itself, also when respaced twice."""
    seen = []
    d = respace(ddpm(100), [0, 20, 40, 60])
    d.run_model(lambda x, t: seen.append(t.copy()) or x, np.zeros((3, 2)), np.array([2, 0, 1]))
    np.testing.assert_array_equal(seen[0], [40, 0, 20])
    twice = respace(d, [1, 3])                                   # steps 1 and 3 of the chain: 20 and 60
    twice.run_model(lambda x, t: seen.append(t.copy()) or x, np.zeros((2, 2)), np.array([0, 1]))
    np.testing.assert_array_equal(seen[1], [20, 60])
    np.testing.assert_allclose(twice.alphas_cumprod, ddpm(100).alphas_cumprod[[20, 60]], rtol=1e-12)


# ---------------------------------------------------------------- vectorised steps vs naive loops
def test_ddim_and_langevin_steps_match_per_example_loop():
    d = ddpm(100)
    model = GaussianMixtureOracle(*eight_gaussians(), diffusion=d).eps_model()
    rng = np.random.default_rng(8)
    B = 6
    x, noise = rng.normal(size=(B, 2)), rng.normal(size=(B, 2))
    t = np.array([0, 1, *rng.integers(2, 100, B - 2)])
    step = np.full((B, 1), 0.01)
    fast = ddim_step(d, model, x, t, eta=0.7, noise=noise)["sample"]
    fast_y, fast_score = langevin_step(d, model, x, t, step, noise=noise)
    for b in range(B):                                    # the twin: one example at a time
        one = slice(b, b + 1)
        slow = ddim_step(d, model, x[one], t[one], eta=0.7, noise=noise[one])["sample"]
        np.testing.assert_allclose(fast[one], slow, rtol=1e-12)
        slow_y, slow_score = langevin_step(d, model, x[one], t[one], 0.01, noise=noise[one])
        np.testing.assert_allclose(fast_y[one], slow_y, rtol=1e-12)
        np.testing.assert_allclose(fast_score[one], slow_score, rtol=1e-12)


# ---------------------------------------------------------------- the 8-mode mixture
SAMPLERS = {
    "ancestral": lambda d, m, r: ddpm_sample_loop(d, m, (800, 2), r),
    "strided50": lambda d, m, r: ddpm_sample_loop(d, m, (800, 2), r, steps=50),
    "ddim_eta0": lambda d, m, r: ddim_sample_loop(d, m, (800, 2), r, eta=0.0, steps="ddim50"),
    "ddim_eta1": lambda d, m, r: ddim_sample_loop(d, m, (800, 2), r, eta=1.0, steps="ddim50"),
    "langevin": lambda d, m, r: langevin_sample_loop(d, m, (800, 2), r, n_steps_each=5, step_lr=1e-4,
                                                     steps=100),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_covers_all_eight_modes(name):
    """Nearest-mode counts: each of 8 modes >= 50 of 800 (expected 100, binomial sd 9.4),
    and >= 90% of samples within 0.5 (5 stds) of a mode. float32 throughout."""
    means, stds, w = eight_gaussians()
    d = ddpm(1000)
    x = SAMPLERS[name](d, GaussianMixtureOracle(means, stds, w, d).eps_model(), np.random.default_rng(9))
    assert x.dtype == np.float32 and x.shape == (800, 2)
    dist = np.linalg.norm(x[:, None, :] - means[None], axis=-1)    # [800, 8]
    counts = np.bincount(dist.argmin(axis=1), minlength=8)
    assert counts.min() >= 50, counts
    assert (dist.min(axis=1) < 0.5).mean() >= 0.9


@pytest.mark.parametrize("name", ["ddim_eta0", "ddim_eta1", "langevin"])
def test_same_seed_same_samples(name):
    d, model = gaussian_setup(1000)
    run = SAMPLERS[name]
    a, b = run(d, model, np.random.default_rng(10)), run(d, model, np.random.default_rng(10))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(d, model, np.random.default_rng(11)))


def test_progress_and_trajectory():
    d, model = gaussian_setup(50)
    calls = []
    x, traj = ddim_sample_loop(d, model, (4, 2), np.random.default_rng(0), steps=10,
                               progress=lambda i, n: calls.append((i, n)), return_trajectory=True)
    assert calls == [(i, 10) for i in range(1, 11)] and traj.shape == (11, 4, 2)
    np.testing.assert_array_equal(traj[-1], x)
    calls.clear()
    y, traj = langevin_sample_loop(d, model, (4, 2), np.random.default_rng(0), n_steps_each=2, steps=5,
                                   progress=lambda i, n: calls.append((i, n)), return_trajectory=True)
    assert calls == [(i, 10) for i in range(1, 11)] and traj.shape == (6, 4, 2) and y.dtype == np.float32


def test_bad_arguments_name_the_argument():
    d, model = gaussian_setup(50)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample_loop(d, model, (2, 2), rng, eta=1.5)
    with pytest.raises(ValueError, match="n_steps_each"):
        langevin_sample_loop(d, model, (2, 2), rng, n_steps_each=0)
    with pytest.raises(ValueError, match="step_lr"):
        langevin_sample_loop(d, model, (2, 2), rng, step_lr=-1.0)
    with pytest.raises(TypeError, match="rng"):
        ddim_sample_loop(d, model, (2, 2), None)


# ---------------------------------------------------------------- DDPM eq. 11, the readable step
def paper_eq11(betas, var_type, x, t, eps, z):
    """DDPM eq. 11 plus sigma_t z, evaluated from the betas alone in float64 (alpha_bar as a
    running product), independently of the diffusion's tables and of samplers.py."""
    b = betas[t][:, None]
    ab = np.array([np.prod(1.0 - betas[:s + 1]) for s in t])[:, None]
    ab_prev = np.array([np.prod(1.0 - betas[:s]) for s in t])[:, None]
    variance = b if var_type == "fixed_large" else (1.0 - ab_prev) / (1.0 - ab) * b
    sigma = np.where(t[:, None] > 0, np.sqrt(variance), 0.0)            # z = 0 at the last step
    return (x - b / np.sqrt(1.0 - ab) * eps) / np.sqrt(1.0 - b) + sigma * z


@settings(max_examples=40, deadline=None)
@given(var_type=st.sampled_from(["fixed_small", "fixed_large"]), T=st.integers(2, 120),
       seed=st.integers(0, 2 ** 32 - 1))
def test_eq11_step_is_the_general_step_and_the_papers_formula(var_type, T, seed):
    """samplers.ddpm_step (eq. 11 written out) equals, in float64 and for the same z: the general
    step reverse.p_sample (mu-tilde of the predicted x_0, DDPM eq. 7, through p_mean_variance),
    and eq. 11 computed here from the betas; every t, the last step t = 0 among them."""
    from tinydiff.samplers import ddpm_step
    rng = np.random.default_rng(seed)
    betas = rng.uniform(1e-4, 0.2, T)
    d = GaussianDiffusion(betas, model_mean_type="eps", model_var_type=var_type)
    x, z = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    t = np.append(0, rng.integers(0, T, 5))

    def model(x_t, tt):                                                 # any eps-prediction will do
        return np.tanh(x_t) * (1.0 + tt[:, None] / T)

    readable = ddpm_step(d, model, x, t, noise=z)
    general = d.p_sample(model, x, t, noise=z)["sample"]
    np.testing.assert_allclose(readable, general, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(readable, paper_eq11(betas, var_type, x, t, model(x, t), z), rtol=1e-9, atol=1e-11)


def test_the_ddpm_loop_takes_the_eq11_step_exactly_when_it_applies(monkeypatch):
    """eps-model with a fixed variance and nothing done to x_0_hat: ddpm_step; learned variances,
    other mean types and clipping: the general p_sample. Both loops draw the same numbers."""
    import tinydiff.samplers as samplers
    calls = []
    for name in ("ddpm_step", "p_sample"):
        original = getattr(samplers, name)
        monkeypatch.setattr(samplers, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    zero = lambda x, t: np.zeros_like(x)                                        # noqa: E731
    for kwargs, want in [({}, "ddpm_step"), ({"model_var_type": "fixed_small"}, "ddpm_step"),
                         ({"model_mean_type": "x0"}, "p_sample"), ({"model_mean_type": "v"}, "p_sample")]:
        calls.clear()
        ddpm_sample_loop(GaussianDiffusion(linear_beta_schedule(5), **kwargs), zero, (2, 2), np.random.default_rng(0))
        assert calls == [want] * 5, kwargs
    calls.clear()
    ddpm_sample_loop(GaussianDiffusion(linear_beta_schedule(5)), zero, (2, 2), np.random.default_rng(0),
                     clip_denoised=True)
    assert calls == ["p_sample"] * 5
    d = GaussianDiffusion(linear_beta_schedule(20))
    a = ddpm_sample_loop(d, lambda x, t: 0.1 * x, (8, 2), np.random.default_rng(3), dtype=np.float64)
    calls.clear()
    b = ddpm_sample_loop(d, lambda x, t: 0.1 * x, (8, 2), np.random.default_rng(3), dtype=np.float64,
                         denoised_fn=lambda x0: x0)                            # forces the general step
    assert calls == ["p_sample"] * 20
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- checks at the doors
@pytest.mark.parametrize("name, objective", [("ddpm", "eps"), ("ddpm", "hybrid"), ("ddim", "eps"),
                                             ("ddim", "hybrid"), ("langevin", "eps")])
def test_a_sampling_step_scans_for_nan_once(monkeypatch, name, objective):
    """At most one np.isfinite scan per model call (GaussianDiffusion.run_model_checked), plus one of
    the result at the end of the loop: the checks sit at the doors, not in every helper."""
    from tinydiff.objectives import make_diffusion
    d = make_diffusion(objective, linear_beta_schedule(20))
    heads = 2 if d.learned_variance else 1
    model_calls, scans, isfinite = [0], [0], np.isfinite

    def model(x, t):
        model_calls[0] += 1
        return np.concatenate([0.1 * x] * heads, axis=1)

    def counting(*args, **kwargs):
        scans[0] += 1
        return isfinite(*args, **kwargs)

    monkeypatch.setattr(np, "isfinite", counting)
    kwargs = {"n_steps_each": 1, "step_lr": 1e-6} if name == "langevin" else {}
    sample(d, model, (4, 2), np.random.default_rng(0), sampler=name, **kwargs)
    assert model_calls[0] >= 20 and scans[0] <= model_calls[0] + 1
