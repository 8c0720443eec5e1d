"""Training losses and the variational bound: oracle models, closed forms written here,
finite-difference gradients, and a known density (Gaussian data) with an exact predictor."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinydiff import Tensor
from tinydiff.diffusion import GaussianDiffusion
from tinydiff.gradcheck import assert_grad_close
from tinydiff.schedules import linear_beta_schedule

LN2 = math.log(2.0)
GRID = np.arange(256) / 127.5 - 1.0                          # 8-bit values scaled to [-1, 1]


def tables(betas):
    """alpha_bar, alpha_bar_prev and beta-tilde (clipped at t = 0), by running products."""
    ab, running = [], 1.0
    for b in betas:
        running *= 1.0 - float(b)
        ab.append(running)
    ab = np.array(ab)
    ab_prev = np.append(1.0, ab[:-1])
    beta_tilde = betas * (1 - ab_prev) / (1 - ab)
    beta_tilde[0] = beta_tilde[1]
    return ab, ab_prev, beta_tilde


def per_example(x):
    return x.reshape(x.shape[0], -1).mean(axis=1)


def eps_oracle(betas, x0):
    """Knows x0: returns the exact noise that produced x_t."""
    ab = tables(betas)[0]

    def model(x_t, t):
        a = ab[t].reshape((-1,) + (1,) * (x0.ndim - 1))
        return (x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)
    return model


def tanh_cdf(z):
    return 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


# ---------------------------------------------------------------- the bound with an oracle
@pytest.mark.parametrize("decoder", ["continuous", "discretized"])
def test_oracle_makes_every_kl_zero_and_the_bound_prior_plus_decoder(decoder):
    betas, rng = linear_beta_schedule(100, 1e-4, 0.1), np.random.default_rng(0)
    d = GaussianDiffusion(betas, "eps", "fixed_small", loss_type="kl", decoder_nll=decoder)
    x0 = GRID[rng.integers(0, 256, (4, 2, 3, 3))]
    x0[0, 0, 0, :2] = -1.0, 1.0                              # both edge bins present
    calls = []
    out = d.calc_bpd_loop(eps_oracle(betas, x0), x0, rng=rng, progress=lambda i, T: calls.append(i))
    assert calls == list(range(1, 101))
    np.testing.assert_allclose(out["vb"][:, 1:], 0.0, atol=1e-9)        # L_{t-1} = 0 for t >= 1
    np.testing.assert_allclose(out["total_bpd"], out["prior_bpd"] + out["vb"][:, 0], rtol=1e-12)
    np.testing.assert_allclose(out["x0_mse"], 0.0, atol=1e-18)
    # Closed forms: the decoder mean is exactly x0, with variance beta-tilde_1.
    ab, _, beta_tilde = tables(betas)
    sigma = math.sqrt(beta_tilde[0])
    if decoder == "continuous":
        decoder_bpd = np.full(4, 0.5 * math.log(2 * math.pi * sigma ** 2) / LN2)
    else:                                                     # edges: Phi(h/sigma); inside: Phi(h/s) - Phi(-h/s)
        h = 1 / 255
        p = np.where(np.abs(x0) > 0.999, tanh_cdf(h / sigma), tanh_cdf(h / sigma) - tanh_cdf(-h / sigma))
        decoder_bpd = per_example(-np.log(p)) / LN2
    np.testing.assert_allclose(out["vb"][:, 0], decoder_bpd, rtol=1e-9)
    a = ab[-1]
    prior = per_example(0.5 * (a * x0 ** 2 - a - math.log(1 - a))) / LN2   # KL(N(sqrt(a) x0, 1-a) || N(0, 1))
    np.testing.assert_allclose(out["prior_bpd"], prior, rtol=1e-6)
    np.testing.assert_allclose(out["total_bits"], out["total_bpd"] * 18, rtol=1e-12)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_bound_with_exact_predictor_on_gaussian_data(var_type):
    """Data N(mu, s^2 I) in 2-D, T = 1000: the exact eps* = sqrt(1-ab)(x_t - sqrt(ab) mu)/(ab s^2 + 1-ab).
    calc_bpd_loop's bits per point must lie above the true NLL and match the expected bound,
    computed here in closed form: with m = the exact mean, E KL_t = 1/2 [log(sig2/bt) + bt/sig2 - 1
    + coef1^2 Var(x0|x_t)/sig2], Var(x0|x_t) = s^2(1-ab)/(ab s^2 + 1-ab), decoder likewise.
    Measured gap (bound - true NLL) for s = 0.5: 0.822 bits/dim with fixed_small (beta-tilde
    underestimates the reverse variance at small t, and that costs ~ sum 1/(4t^2) nats, not
    shrinking with T) and 0.165 bits/dim with fixed_large; Monte Carlo with 4e4 values gave
    0.816 +- 0.013 and 0.158 +- 0.011."""
    mu, s, betas = np.array([0.3, -0.5]), 0.5, linear_beta_schedule(1000)
    d = GaussianDiffusion(betas, "eps", var_type, loss_type="kl")
    ab, ab_prev, beta_tilde = tables(betas)

    def exact_eps(x_t, t):
        a = ab[t][:, None]
        return np.sqrt(1 - a) * (x_t - np.sqrt(a) * mu) / (a * s * s + 1 - a)

    rng = np.random.default_rng(1)
    x0 = mu + s * rng.standard_normal((2000, 2))
    out = d.calc_bpd_loop(exact_eps, x0, rng=rng)
    true_nll_bits = (0.5 * np.log(2 * np.pi * s * s) + 0.5 * ((x0 - mu) / s) ** 2).sum(axis=1) / LN2
    gap = out["total_bits"] - true_nll_bits                 # bits per 2-D point
    stderr = gap.std() / math.sqrt(gap.size)

    sig2 = beta_tilde.copy() if var_type == "fixed_small" else np.append(beta_tilde[0], betas[1:])
    coef1 = betas * np.sqrt(ab_prev) / (1 - ab)
    var_x0 = s * s * (1 - ab) / (ab * s * s + 1 - ab)
    bt = betas * (1 - ab_prev) / (1 - ab)
    kl = 0.5 * (np.log(sig2[1:] / bt[1:]) + bt[1:] / sig2[1:] - 1 + coef1[1:] ** 2 * var_x0[1:] / sig2[1:])
    decoder = 0.5 * np.log(2 * np.pi * sig2[0]) + 0.5 * var_x0[0] / sig2[0]     # coef1[0] = 1
    prior = 0.5 * (ab[-1] * (mu ** 2 + s * s) - ab[-1] - np.log(1 - ab[-1]))   # per dimension [2]
    expected_gap = (2 * (kl.sum() + decoder) + prior.sum() - 2 * 0.5 * np.log(2 * np.pi * np.e * s * s)) / LN2
    assert expected_gap > 0
    assert gap.mean() > 0
    assert abs(gap.mean() - expected_gap) < 4 * stderr
    assert expected_gap / 2 == pytest.approx({"fixed_small": 0.822, "fixed_large": 0.165}[var_type], abs=1e-3)


# ---------------------------------------------------------------- training_losses values
def test_mse_loss_is_l_simple():
    betas, rng = linear_beta_schedule(50), np.random.default_rng(2)
    d = GaussianDiffusion(betas)
    x0, noise, t = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2)), np.array([0, 1, 25, 49])
    assert set(d.training_losses(eps_oracle(betas, x0), x0, t, noise=noise)) == {"loss", "mse"}
    np.testing.assert_allclose(d.training_losses(eps_oracle(betas, x0), x0, t, noise=noise)["loss"], 0, atol=1e-20)
    zero = d.training_losses(lambda x, tt: 0 * x, x0, t, noise=noise)
    np.testing.assert_allclose(zero["mse"], per_example(noise ** 2), rtol=1e-14)


@pytest.mark.parametrize("decoder", ["continuous", "discretized"])
def test_kl_loss_matches_ddpm_eq_11_mean(decoder):
    """vb at t > 0 = KL(q || p) with p's mean by DDPM eq. 11, mu = (x_t - beta/sqrt(1-ab) eps)/sqrt(alpha),
    and q's by Bayes' rule; at t = 0 the decoder NLL. Both written here with the test's own tables."""
    betas, rng = linear_beta_schedule(30, 1e-3, 0.2), np.random.default_rng(3)
    d = GaussianDiffusion(betas, loss_type="kl", decoder_nll=decoder)
    x0, noise, t = GRID[rng.integers(0, 256, (5, 4))], rng.standard_normal((5, 4)), np.array([0, 1, 2, 15, 29])
    model = lambda x_t, tt: 0.7 * x_t + 0.1
    terms = d.training_losses(model, x0, t, noise=noise)
    ab, ab_prev, beta_tilde = (v[t][:, None] for v in tables(betas))
    beta = betas[t][:, None]
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise
    p_mean = (x_t - beta / np.sqrt(1 - ab) * model(x_t, t)) / np.sqrt(1 - beta)
    with np.errstate(divide="ignore", invalid="ignore"):    # row t = 0 (ab_prev = 1) is the decoder's, unused
        precision = (1 - beta) / beta + 1 / (1 - ab_prev)
        q_mean = (np.sqrt(1 - beta) * x_t / beta + np.sqrt(ab_prev) * x0 / (1 - ab_prev)) / precision
        kl = 0.5 * (np.log(beta_tilde * precision) + 1 / (precision * beta_tilde) - 1
                    + (q_mean - p_mean) ** 2 / beta_tilde)
    sigma = np.sqrt(beta_tilde[0])
    if decoder == "continuous":
        nll0 = 0.5 * np.log(2 * np.pi * sigma ** 2) + 0.5 * ((x0[0] - p_mean[0]) / sigma) ** 2
    else:
        upper = np.where(x0[0] > 0.999, 1.0, tanh_cdf((x0[0] + 1 / 255 - p_mean[0]) / sigma))
        lower = np.where(x0[0] < -0.999, 0.0, tanh_cdf((x0[0] - 1 / 255 - p_mean[0]) / sigma))
        nll0 = -np.log(upper - lower)
    np.testing.assert_allclose(terms["vb"][1:], kl[1:].mean(axis=1) / LN2, rtol=1e-9)
    np.testing.assert_allclose(terms["vb"][0], nll0.mean() / LN2, rtol=1e-9)
    assert terms["loss"] is terms["vb"] and set(terms) == {"loss", "vb"}


def test_hybrid_loss_is_mse_plus_lambda_T_vb():
    betas, rng = linear_beta_schedule(40), np.random.default_rng(4)
    d = GaussianDiffusion(betas, model_var_type="learned_range", loss_type="hybrid")
    x0, noise, t = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), np.array([0, 5, 39])
    terms = d.training_losses(lambda x, tt: np.concatenate([0.5 * x, np.tanh(x)], 1), x0, t, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"}
    np.testing.assert_allclose(terms["loss"], terms["mse"] + 0.001 * 40 * terms["vb"], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_type, var_type", [("mse", "fixed_small"), ("kl", "fixed_large"),
                                                 ("kl", "learned"), ("hybrid", "learned_range")])
def test_losses_keep_dtype_and_are_finite_at_both_ends(dtype, loss_type, var_type):
    T, rng = 100, np.random.default_rng(5)
    d = GaussianDiffusion(linear_beta_schedule(T), "eps", var_type, loss_type, decoder_nll="discretized")
    x0 = GRID[rng.integers(0, 256, (2, 3, 2, 2))].astype(dtype)
    width = 6 if var_type.startswith("learned") else 3
    w = Tensor(np.full((1, width, 1, 1), 0.3, dtype), requires_grad=True)
    model = lambda x, t: Tensor(np.concatenate([x, x], 1)[:, :width]) * w
    terms = d.training_losses(model, x0, np.array([0, T - 1]), rng=rng)
    for v in terms.values():
        assert isinstance(v, Tensor) and v.dtype == dtype and v.shape == (2,) and np.all(np.isfinite(v.data))
    terms["loss"].mean().backward()
    assert w.grad.dtype == dtype and np.all(np.isfinite(w.grad))
    bpd = d.calc_bpd_loop(model, x0, rng=rng)
    assert all(v.dtype == dtype and np.all(np.isfinite(v)) for k, v in bpd.items() if k not in ("t", "weights"))


# ---------------------------------------------------------------- gradients (engine)
@pytest.mark.parametrize("loss_type", ["mse", "kl"])
def test_training_losses_gradients_match_finite_differences(loss_type):
    betas, rng = linear_beta_schedule(20, 1e-3, 0.2), np.random.default_rng(6)
    d = GaussianDiffusion(betas, loss_type=loss_type)
    x0, noise, t = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), np.array([0, 3, 10, 19])
    assert_grad_close(lambda w: d.training_losses(lambda x, tt: x * w, x0, t, noise=noise)["loss"],
                      [np.array([[0.8, -0.3]])])


def test_hybrid_vb_gradient_does_not_flow_through_the_mean():
    """Model output [x_t * w_mean, x_t * w_var]. In the hybrid loss, w_mean must get the gradient of
    the MSE only and w_var the gradient of lambda T vb computed with the mean explicitly detached."""
    betas, rng = linear_beta_schedule(20, 1e-3, 0.2), np.random.default_rng(7)
    d = GaussianDiffusion(betas, model_var_type="learned_range", loss_type="hybrid")
    x0, noise, t = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), np.array([0, 3, 10, 19])
    x_t = d.q_sample(x0, t, noise=noise)
    wm0, wv0 = np.array([[0.8, -0.3]]), np.array([[0.2, 0.5]])

    def leaves():
        return Tensor(wm0.copy(), requires_grad=True), Tensor(wv0.copy(), requires_grad=True)

    w_mean, w_var = leaves()
    model = lambda x, tt: np.concatenate([x * w_mean, x * w_var], axis=1)
    d.training_losses(model, x0, t, noise=noise)["loss"].sum().backward()

    m, v = leaves()                                           # the MSE alone, written out
    (((noise - x_t * m) ** 2).mean(axis=1)).sum().backward()
    np.testing.assert_allclose(w_mean.grad, m.grad, rtol=1e-12)

    m, v = leaves()                                           # vb with the mean explicitly detached
    frozen = np.concatenate([Tensor(x_t * wm0), x_t * v], axis=1)
    (0.001 * 20 * d.vb_terms_bpd(frozen, x0, x_t, t)["output"]).sum().backward()
    np.testing.assert_allclose(w_var.grad, v.grad, rtol=1e-12)

    m, v = leaves()                                           # without the detach the mean would get more
    live = np.concatenate([x_t * m, x_t * v], axis=1)
    d.vb_terms_bpd(live, x0, x_t, t)["output"].sum().backward()
    assert np.abs(m.grad).max() > 1e-3

    # and w_var's gradient of the full hybrid loss matches finite differences
    assert_grad_close(lambda wv: d.training_losses(lambda x, tt: np.concatenate([x * wm0, x * wv], 1),
                                                   x0, t, noise=noise)["loss"], [wv0])


def test_calc_bpd_loop_accepts_a_tensor_model_and_reports_units():
    betas, rng = linear_beta_schedule(10, 1e-3, 0.5), np.random.default_rng(8)
    d = GaussianDiffusion(betas)
    x0 = rng.standard_normal((3, 2)).astype(np.float32)
    w = Tensor(np.ones((1, 2), np.float32), requires_grad=True)
    out = d.calc_bpd_loop(lambda x, t: Tensor(x) * w, x0, rng=rng)
    assert {k: v.shape for k, v in out.items()} == {"total_bpd": (3,), "prior_bpd": (3,), "vb": (3, 10),
                                                    "x0_mse": (3, 10), "mse": (3, 10), "total_bits": (3,),
                                                    "t": (3, 10), "weights": (10,)}
    np.testing.assert_allclose(out["total_bits"], 2 * (out["prior_bpd"] + out["vb"].sum(axis=1)), rtol=1e-5)
    with pytest.raises(TypeError, match="rng"):
        d.calc_bpd_loop(lambda x, t: x, x0)


# ---------------------------------------------------------------- which decoder, by default
def test_default_decoder_is_discretized_for_8_bit_data_and_continuous_otherwise():
    """The truth: the same bound computed with the decoder named explicitly. 8-bit data must get
    the discretized decoder and clipped x_0 (published bits/dim), real-valued data a density."""
    betas, rng = linear_beta_schedule(20, 1e-3, 0.2), np.random.default_rng(5)
    model = lambda x_t, t: 0.5 * x_t                                          # noqa: E731
    images = GRID[rng.integers(0, 256, (3, 1, 4, 4))].astype(np.float32)
    points = rng.standard_normal((3, 2)).astype(np.float32)
    auto = GaussianDiffusion(betas)
    assert auto.decoder_kind(images) == "discretized" and auto.decoder_kind(points) == "continuous"
    for x0, kind, clip in ((images, "discretized", True), (points, "continuous", False)):
        got = auto.calc_bpd_loop(model, x0, rng=np.random.default_rng(1))
        want = GaussianDiffusion(betas, decoder_nll=kind).calc_bpd_loop(model, x0, rng=np.random.default_rng(1),
                                                                         clip_denoised=clip)
        np.testing.assert_array_equal(got["vb"], want["vb"])
    assert np.all(auto.calc_bpd_loop(model, images, rng=rng)["vb"][:, 0] >= 0)    # a probability: -log P >= 0
    # one value off the grid and it is real-valued data again
    assert auto.decoder_kind(images + np.float32(0.001)) == "continuous"


def test_stratified_bound_is_unbiased_for_the_exact_sum():
    """calc_bpd_loop(num_timesteps=K) against the exact loop: with a model whose terms are known
    per t (deterministic x_t, so each L_t is fixed), the stratified estimate averaged over many
    draws equals the exact total; every draw keeps t = 0 exactly and one t per stratum."""
    d = GaussianDiffusion(linear_beta_schedule(50, 1e-3, 0.2), decoder_nll="discretized")
    x0 = np.linspace(-1, 1, 4 * 2 * 2).reshape(4, 1, 2, 2)
    model = lambda x, t: 0.3 * x                                                # noqa: E731
    exact = d.calc_bpd_loop(model, x0, rng=np.random.default_rng(0))
    # the bound's terms depend on the random x_t; compare expectations with many repeats
    reps = [d.calc_bpd_loop(model, x0, rng=np.random.default_rng(s), num_timesteps=8)["total_bpd"]
            for s in range(300)]
    full = [d.calc_bpd_loop(model, x0, rng=np.random.default_rng(1000 + s))["total_bpd"] for s in range(30)]
    est, ref = np.mean(reps, axis=0), np.mean(full, axis=0)
    se = np.sqrt(np.var(reps, axis=0) / len(reps) + np.var(full, axis=0) / len(full))
    assert np.all(np.abs(est - ref) < 4 * se + 1e-9), (est, ref, se)
    one = d.calc_bpd_loop(model, x0, rng=np.random.default_rng(1), num_timesteps=8)
    assert one["vb"].shape == (4, 8) and np.all(one["t"][:, 0] == 0) and one["weights"].sum() == 50
    edges = np.concatenate([[1], 1 + np.cumsum(one["weights"][1:])])
    assert np.all((one["t"][:, 1:] >= edges[:-1]) & (one["t"][:, 1:] < edges[1:]))
    assert exact["weights"].sum() == 50


def test_min_snr_weights():
    """Hang et al. 2023: min(SNR, gamma)/SNR for eps (1 where SNR <= gamma), min(SNR, gamma) for x0."""
    betas = linear_beta_schedule(100)
    d = GaussianDiffusion(betas, mse_weighting="min_snr", snr_gamma=5.0)
    ab = np.cumprod(1 - betas)
    snr = ab / (1 - ab)
    t = np.arange(100)
    np.testing.assert_allclose(d.mse_weight(t), np.minimum(snr, 5.0) / snr)
    assert d.mse_weight(np.array([99]))[0] == 1.0 and d.mse_weight(np.array([0]))[0] < 0.01
    x0d = GaussianDiffusion(betas, model_mean_type="x0", mse_weighting="min_snr")
    np.testing.assert_allclose(x0d.mse_weight(t), np.minimum(snr, 5.0))
    x0 = np.random.default_rng(0).standard_normal((100, 3))
    noise = np.random.default_rng(1).standard_normal((100, 3))
    plain = GaussianDiffusion(betas).training_losses(lambda x, tt: 0 * x, x0, t, noise=noise)
    weighted = d.training_losses(lambda x, tt: 0 * x, x0, t, noise=noise)
    np.testing.assert_allclose(weighted["loss"], plain["mse"] * np.minimum(snr, 5.0) / snr)


# ---------------------------------------------------------------- eps_loss, DDPM Algorithm 1 written out
@settings(max_examples=40, deadline=None)
@given(weighting=st.sampled_from(["none", "min_snr"]), T=st.integers(2, 200), seed=st.integers(0, 2 ** 32 - 1))
def test_eps_loss_is_the_general_loss_with_an_eps_target_and_the_papers_formula(weighting, T, seed):
    """td.eps_loss against two truths, float64: the general training_losses' "mse" term of a hybrid
    diffusion (prediction = the first C channels, target = eps, picked by the general branch), and
    || eps - eps_theta(sqrt(ab) x0 + sqrt(1 - ab) eps, t) ||^2 / D with ab a running product."""
    from tinydiff import eps_loss
    rng = np.random.default_rng(seed)
    betas = rng.uniform(1e-4, 0.1, T)
    d = GaussianDiffusion(betas, mse_weighting=weighting)
    hybrid = GaussianDiffusion(betas, model_var_type="learned_range", loss_type="hybrid", mse_weighting=weighting)
    x0, eps, t = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2)), rng.integers(0, T, 5)

    def model(x_t, tt):                                                  # any eps-prediction will do
        return np.tanh(x_t) * (1.0 + tt[:, None, None] / T)

    terms = eps_loss(d, model, x0, t, eps)
    general = hybrid.training_losses(lambda x_t, tt: np.concatenate([model(x_t, tt), 0 * x_t], 1), x0, t, noise=eps)
    np.testing.assert_array_equal(terms["mse"], general["mse"])
    ab = np.array([np.prod(1.0 - betas[:s + 1]) for s in t])[:, None, None]
    x_t = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * eps
    by_hand = ((eps - model(x_t, t)) ** 2).reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(terms["mse"], by_hand, rtol=1e-10, atol=1e-14)
    snr = ab.ravel() / (1.0 - ab.ravel())
    weight = np.minimum(snr, 5.0) / snr if weighting == "min_snr" else 1.0
    np.testing.assert_allclose(terms["loss"], by_hand * weight, rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(d.training_losses(model, x0, t, noise=eps)["loss"], terms["loss"])


def test_diffusion_loss_runs_algorithm_1_through_eps_loss(monkeypatch):
    """What the Trainer calls: t, then eps, then the label-dropout mask from one generator, and
    the loss of losses.eps_loss on them (the same numbers, drawn here by hand in that order)."""
    import tinydiff.objectives as objectives
    from tinydiff.guidance import drop_labels
    from tinydiff.objectives import DiffusionLoss, make_diffusion
    d = make_diffusion("eps", linear_beta_schedule(40), mse_weighting="min_snr")
    seen = []
    original = objectives.eps_loss
    monkeypatch.setattr(objectives, "eps_loss", lambda *a, **k: seen.append(a[3]) or original(*a, **k))

    def model(x_t, tt, y):
        return 0.3 * x_t + 0.01 * np.asarray(y)[:, None]

    x0, y = np.random.default_rng(0).standard_normal((16, 2)), np.arange(16) % 10
    loss, logs = DiffusionLoss(d, label_dropout=0.5, null_labels=10)(model, (x0, {"y": y}), np.random.default_rng(7))
    rng = np.random.default_rng(7)
    t = rng.integers(0, 40, size=16)
    eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
    y_dropped = drop_labels(y, 0.5, 10, rng)
    want = original(d, lambda x_t, tt: model(x_t, tt, y_dropped), x0, t, eps)
    assert len(seen) == 1 and np.array_equal(seen[0], t)
    assert float(np.mean(loss)) == float(np.mean(want["loss"])) and logs["mse"] == float(np.mean(want["mse"]))
