"""Editing (tinydiff.editing) against exact answers: perfect denoisers for Gaussian data
(tinydiff.oracles) stand in for a trained network, so every error left is the algorithm's."""
import numpy as np
import pytest

import tinydiff as td
from tinydiff.editing import ddim_invert, inpaint, repaint_schedule, sdedit, sdedit_timestep
from tinydiff.oracles import GaussianMixtureOracle, eight_gaussians, mixture_sample
from tinydiff.samplers import ddim_reverse_step, ddim_sample_loop, ddim_step, respace

D = td.GaussianDiffusion(td.cosine_beta_schedule(1000))
MEANS, STDS, WEIGHTS = eight_gaussians()
EIGHT = GaussianMixtureOracle(MEANS, STDS, WEIGHTS, diffusion=D)


def nearest_mode(x):
    return np.argmin(((x[:, None] - MEANS[None]) ** 2).sum(-1), axis=1)


# ---------------------------------------------------------------- DDIM inversion
def test_reverse_step_is_the_exact_inverse_of_ddim_step_when_eps_does_not_change():
    """With an eps that does not depend on x (so x0_hat is affine in x with the same eps at both
    ends), one reverse step followed by one DDIM step returns the start exactly: the two updates
    are the same equation solved in opposite directions (Song et al. 2021 eq. 12 and 13)."""
    chain = respace(D, 50)
    c = np.random.default_rng(0).standard_normal((3, 2))
    const = lambda x_t, t: c.copy()                                         # noqa: E731
    x = np.random.default_rng(1).standard_normal((3, 2))
    for t in (0, 10, 48):
        up = ddim_reverse_step(chain, const, x, np.full(3, t))["sample"]
        back = ddim_step(chain, const, up, np.full(3, t + 1), eta=0.0, rng=np.random.default_rng(2))["sample"]
        np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-12)


def gaussian_roundtrip_closed_form(chain, mean, std, x0):
    """Inversion then decoding for N(mean, std^2 I) data with the exact eps, by hand: every step
    is an affine map x -> a x + b, computed here in scalar float64 from the formulas
    eps* = sqrt(1 - ab) (x - sqrt(ab) m) / (ab s^2 + 1 - ab), x0_hat = (x - sqrt(1 - ab) eps*) / sqrt(ab)."""
    ab = chain.alphas_cumprod
    a, b = 1.0, 0.0                                          # the running map x0 -> x

    def step(ab_from, ab_to):
        v = ab_from * std ** 2 + 1 - ab_from
        k_eps = np.sqrt(1 - ab_from) / v                     # eps = k_eps (x - sqrt(ab) m)
        # x_to = sqrt(ab_to) x0_hat + sqrt(1 - ab_to) eps, both affine in x
        slope_x0 = (1 - np.sqrt(1 - ab_from) * k_eps) / np.sqrt(ab_from)
        shift_x0 = np.sqrt(1 - ab_from) * k_eps * np.sqrt(ab_from) * mean / np.sqrt(ab_from)
        slope = np.sqrt(ab_to) * slope_x0 + np.sqrt(1 - ab_to) * k_eps
        shift = np.sqrt(ab_to) * shift_x0 - np.sqrt(1 - ab_to) * k_eps * np.sqrt(ab_from) * mean
        return slope, shift

    K = len(ab)
    for t in range(K - 1):                                   # inversion: level t -> t + 1, eps at (x_t, t)
        s, h = step(ab[t], ab[t + 1])
        a, b = s * a, s * b + h
    for t in range(K - 1, -1, -1):                           # decoding: level t -> t - 1 (1 = the data's ab)
        s, h = step(ab[t], ab[t - 1] if t > 0 else 1.0)
        a, b = s * a, s * b + h
    return a * x0 + b


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.7, 0.3)])
@pytest.mark.parametrize("K", [10, 50])
def test_ddim_inversion_and_decoding_is_the_closed_form_for_gaussian_data(mean, std, K):
    """The code's round trip equals the affine map computed by hand from the step formulas."""
    oracle = GaussianMixtureOracle(np.full((1, 4), mean), std, diffusion=D)
    x0 = np.random.default_rng(0).standard_normal((5, 4)) * std + mean
    z = ddim_invert(D, oracle.eps_model(), x0, None, steps=K)
    x = ddim_sample_loop(D, oracle.eps_model(), x0.shape, np.random.default_rng(1), steps=K, noise=z,
                         dtype=np.float64)
    np.testing.assert_allclose(x, gaussian_roundtrip_closed_form(respace(D, K), mean, std, x0), rtol=1e-9, atol=1e-9)


def test_ddim_roundtrip_error_is_bounded_by_the_step_angles():
    """For N(0, I) data the exact ODE keeps x fixed, but each DDIM step (up or down) multiplies x by
    cos(dphi), with ab = cos^2(phi): the round trip is x0 sqrt(ab_0) prod cos^2(dphi), so its
    relative error is at most sum dphi^2 + 1 - sqrt(ab_0), a first-order discretisation error
    that falls like 1/K."""
    errors = []
    for K in (10, 50, 250):
        chain = respace(D, K)
        phi = np.arccos(np.sqrt(chain.alphas_cumprod))
        bound = np.sum(np.diff(phi) ** 2) + 1 - np.sqrt(chain.alphas_cumprod[0])
        oracle = GaussianMixtureOracle(np.zeros((1, 3)), 1.0, diffusion=D)
        x0 = np.random.default_rng(0).standard_normal((4, 3))
        z = ddim_invert(D, oracle.eps_model(), x0, None, steps=K)
        x = ddim_sample_loop(D, oracle.eps_model(), x0.shape, np.random.default_rng(1), steps=K, noise=z,
                             dtype=np.float64)
        rel = np.abs(x / x0 - 1).max()
        assert rel <= bound * (1 + 1e-9)
        errors.append(rel)
    assert errors[0] > 4 * errors[1] > 16 * errors[2]                      # ~1/K


def test_ddim_roundtrip_on_the_eight_gaussians_shrinks_like_one_over_k():
    """A multimodal case with no closed form: with the exact eps, invert 500 points and decode them;
    the mean distance to the start is ~1/K (measured 0.053, 0.023, 0.0053 for K = 20, 50, 250)."""
    x0 = mixture_sample(500, MEANS, STDS, WEIGHTS, rng=np.random.default_rng(0))
    err = {}
    for K in (20, 50, 250):
        z = ddim_invert(D, EIGHT.eps_model(), x0, None, steps=K)
        x = ddim_sample_loop(D, EIGHT.eps_model(), x0.shape, np.random.default_rng(1), steps=K, noise=z,
                             dtype=np.float64)
        err[K] = np.linalg.norm(x - x0, axis=1).mean()
    assert err[50] < 0.03 and err[250] < 0.007
    assert err[20] > 1.8 * err[50] > 1.8 * 4 * err[250]
    z = ddim_invert(D, EIGHT.eps_model(), x0, None, steps=250)
    assert abs(z.std() - 1) < 0.5 and abs(z.mean()) < 0.2                 # noise-like, not the data


def test_ddim_invert_trajectory_and_bad_labels():
    x0 = np.zeros((2, 2))
    z, traj = ddim_invert(D, EIGHT.eps_model(), x0, None, steps=5, return_trajectory=True)
    assert traj.shape == (5, 2, 2) and np.array_equal(traj[0], x0) and np.array_equal(traj[-1], z)
    with pytest.raises(ValueError, match="labels: expected 2 integer labels"):
        ddim_invert(D, EIGHT.eps_model(), x0, np.array([1.0, 2.0]), steps=5)


# ---------------------------------------------------------------- SDEdit
def test_sdedit_at_t0_zero_returns_x0_and_t0_is_checked():
    x0 = np.random.default_rng(0).standard_normal((3, 2))
    out = sdedit(D, EIGHT.eps_model(), x0, 0.0, None, np.random.default_rng(1))
    assert np.array_equal(out, x0) and out is not x0
    assert sdedit_timestep(D, 1.0) == 999 and sdedit_timestep(D, 0.25) == 249
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="t0: expected the SDEdit strength"):
            sdedit(D, EIGHT.eps_model(), x0, bad, None, np.random.default_rng(1))


def test_sdedit_noises_to_t0_and_runs_the_chain_below_it():
    """The model is called at the kept steps from t0 down (ceil(steps t0) of them), and the start
    is q_sample(x0, t0) with the given noise."""
    calls = []

    def model(x_t, t):
        calls.append(int(t[0]))
        return np.zeros_like(x_t)

    x0, eps = np.ones((2, 3)), np.random.default_rng(0).standard_normal((2, 3))
    sdedit(D, model, x0, 0.3, None, np.random.default_rng(1), steps=50, eta=0.0, noise=eps)
    assert len(calls) == 15 and calls[0] == 299 and calls[-1] == 0 and calls == sorted(calls, reverse=True)
    first = []
    sdedit(D, lambda x_t, t: first.append(x_t.copy()) or np.zeros_like(x_t), x0, 0.3, None,
           np.random.default_rng(1), steps=50, noise=eps)
    np.testing.assert_allclose(first[0], D.q_sample(x0, np.full(2, 299), noise=eps))


def test_sdedit_trades_faithfulness_for_freedom_on_the_eight_gaussians():
    """400 points of mode 0, edited with the exact eps: at small t0 every point stays in its mode;
    at t0 = 1 the start is forgotten and the 8 modes are hit evenly."""
    x0 = MEANS[0] + 0.1 * np.random.default_rng(0).standard_normal((400, 2))
    small = nearest_mode(sdedit(D, EIGHT.eps_model(), x0, 0.1, None, np.random.default_rng(1)))
    assert np.all(small == 0)
    full = np.bincount(nearest_mode(sdedit(D, EIGHT.eps_model(), x0, 1.0, None, np.random.default_rng(1))),
                       minlength=8)
    assert full.min() >= 25 and full.max() <= 75                              # 50 expected per mode


def test_sdedit_under_another_label_moves_to_that_labels_nearest_mode():
    """Label 0 = modes 0-3, label 1 = modes 4-7, each with its exact eps. Points of mode 0 edited
    to label 1 at t0 = 0.2 all land in label 1's modes, in the one nearest to where they were
    (mode 7): SDEdit's realism (the new label) and faithfulness (near the input) at once."""
    upper = GaussianMixtureOracle(MEANS[:4], STDS[:4], diffusion=D)
    lower = GaussianMixtureOracle(MEANS[4:], STDS[4:], diffusion=D)

    def model(x_t, t, y=None):
        return np.where((np.asarray(y) == 1)[:, None], lower.eps(x_t, t), upper.eps(x_t, t))

    x0 = MEANS[0] + 0.1 * np.random.default_rng(0).standard_normal((200, 2))
    modes = nearest_mode(sdedit(D, model, x0, 0.2, np.ones(200, np.int64), np.random.default_rng(1)))
    assert np.all(modes == 7)
    modes = nearest_mode(sdedit(D, model, x0, 0.6, np.ones(200, np.int64), np.random.default_rng(1)))
    assert np.all(modes >= 4) and np.mean(modes == 7) > 0.4


# ---------------------------------------------------------------- inpainting
def get_schedule_jump(t_T, jump_length, jump_n_sample):
    """RePaint's scheduler (Lugmayr et al. 2022, code: guided_diffusion/scheduler.py), transcribed
    with its second and third jump levels switched off, as the paper's experiments run it."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize("K, resample, jump", [(10, 1, 1), (10, 2, 3), (50, 10, 5), (20, 4, 1), (7, 3, 7)])
def test_repaint_schedule_is_the_papers_schedule(K, resample, jump):
    assert repaint_schedule(K, resample, jump) == get_schedule_jump(K, jump, resample)


def test_repaint_schedule_costs_about_r_times_the_steps():
    levels = repaint_schedule(50, resample=5, jump=5)
    model_calls = sum(b < a for a, b in zip(levels, levels[1:]))
    assert model_calls == 50 + 4 * 5 * 9                      # r - 1 = 4 trips of 5 steps at levels 0, 5, ..., 40


@pytest.mark.parametrize("resample, jump", [(1, 1), (3, 1), (2, 3)])
def test_inpaint_walks_the_repaint_schedule_and_keeps_the_known_pixels_exactly(resample, jump):
    """The model is called at exactly the levels RePaint's schedule steps down from (mapped to the
    trained timesteps), and the known pixels of the result are x0's, bit for bit."""
    calls = []

    def model(x_t, t):
        calls.append(int(t[0]))
        return EIGHT.eps(x_t, t)

    K = 10
    x0 = mixture_sample(6, MEANS, STDS, WEIGHTS, rng=np.random.default_rng(0))
    out = inpaint(D, model, x0, np.array([True, False]), None, np.random.default_rng(1), steps=K,
                  resample=resample, jump=jump)
    levels = repaint_schedule(K, resample, jump)
    want = [int(respace(D, K).timestep_map[a]) for a, b in zip(levels, levels[1:]) if b < a]
    assert calls == want
    assert np.array_equal(out[:, 0], x0[:, 0]) and not np.allclose(out[:, 1], x0[:, 1])


def test_inpainting_fills_in_a_coordinate_consistent_with_the_known_one():
    """Eight Gaussians, the x coordinate known: the filled-in y should lie at a mode whose x fits.
    The plain replacement method gets 79% of 1,000 points right with the exact eps; RePaint's
    resampling (5 passes) 85%: the known half only steers the unknown one through the noise, and
    more passes give it more chances to."""
    x0 = mixture_sample(1000, MEANS, STDS, WEIGHTS, rng=np.random.default_rng(0))
    log_r = -0.5 * (x0[:, :1] - MEANS[None, :, 0]) ** 2 / STDS[0] ** 2        # q(mode | x), from x alone
    possible = np.exp(log_r - log_r.max(1, keepdims=True))
    possible = possible / possible.sum(1, keepdims=True) > 0.01

    def consistent(out):
        return np.mean(((np.abs(out[:, 1:] - MEANS[None, :, 1]) < 3 * STDS[0]) & possible).any(1))

    mask = np.array([True, False])
    plain = consistent(inpaint(D, EIGHT.eps_model(), x0, mask, None, np.random.default_rng(1)))
    repaint = consistent(inpaint(D, EIGHT.eps_model(), x0, mask, None, np.random.default_rng(1), resample=5))
    assert 0.7 < plain < repaint - 0.03 and repaint > 0.82


def test_inpaint_checks_its_arguments():
    x0 = np.zeros((2, 2))
    with pytest.raises(ValueError, match="mask: expected a shape that broadcasts"):
        inpaint(D, EIGHT.eps_model(), x0, np.ones(3, bool), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="resample: expected an int >= 1"):
        inpaint(D, EIGHT.eps_model(), x0, np.ones(2, bool), None, np.random.default_rng(0), resample=0)
    with pytest.raises(ValueError, match="x0: expected finite float images"):
        inpaint(D, EIGHT.eps_model(), np.zeros((2, 2), int), np.ones(2, bool), None, np.random.default_rng(0))


# ---------------------------------------------------------------- the sampler hook
def test_after_step_sees_every_step_in_order_and_identity_changes_nothing():
    seen = []

    def hook(x, t):
        seen.append(int(t[0]))
        return x

    for loop in (td.ddim_sample_loop, td.ddpm_sample_loop):
        seen.clear()
        plain = loop(D, EIGHT.eps_model(), (3, 2), np.random.default_rng(0), steps=8)
        hooked = loop(D, EIGHT.eps_model(), (3, 2), np.random.default_rng(0), steps=8, after_step=hook)
        assert np.array_equal(plain, hooked) and seen == list(range(7, -1, -1))


def test_inpaint_model_sees_known_pixels_as_fresh_draws_of_q_xt_given_x0():
    """RePaint eq. 6: before every model call the known pixels are x0 noised to that step, a new
    draw each time. Over 4,000 chains the known coordinate the model sees at chain level t has
    mean sqrt(ab_t) x0 and standard deviation sqrt(1 - ab_t) (the closed form of q(x_t | x_0)),
    and draws at neighbouring levels are uncorrelated (a forward chain would be correlated)."""
    K, B = 10, 4000
    chain = respace(D, K)
    seen = {}

    def model(x_t, t):
        seen[int(t[0])] = x_t[:, 0].copy()
        return np.zeros_like(x_t)

    x0 = np.tile(np.array([[1.5, 0.0]]), (B, 1))
    inpaint(D, model, x0, np.array([True, False]), None, np.random.default_rng(0), steps=K)
    for level in range(K - 1):                        # the last level K - 1 starts from pure noise, not q
        ab = chain.alphas_cumprod[level]
        x = seen[int(chain.timestep_map[level])]
        assert abs(x.mean() - np.sqrt(ab) * 1.5) < 4 * np.sqrt((1 - ab) / B)
        assert abs(x.std() / np.sqrt(1 - ab) - 1) < 0.05
    a, b = seen[int(chain.timestep_map[3])], seen[int(chain.timestep_map[4])]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.06


def test_sdedit_start_is_q_sample_and_checks_t0():
    x0 = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    eps = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    out = td.editing.sdedit_start(D, x0, 0.25, noise=eps)
    np.testing.assert_allclose(out, np.sqrt(D.alphas_cumprod[249]) * x0 + np.sqrt(1 - D.alphas_cumprod[249]) * eps,
                               rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and np.array_equal(td.editing.sdedit_start(D, x0, 0.0), x0)
    with pytest.raises(ValueError, match="t0: expected the SDEdit strength.*got 2"):
        td.editing.sdedit_start(D, x0, 2)


def test_inpaint_merge_takes_known_pixels_bit_for_bit():
    rng = np.random.default_rng(0)
    known, unknown = rng.standard_normal((2, 3, 1, 4, 4))
    mask = rng.random((3, 1, 4, 4)) < 0.5
    out = td.editing.inpaint_merge(known, unknown, mask)
    assert np.array_equal(out[mask], known[mask]) and np.array_equal(out[~mask], unknown[~mask])
    np.testing.assert_array_equal(out, mask * known + (1 - mask) * unknown)     # the paper's m x + (1 - m) x
