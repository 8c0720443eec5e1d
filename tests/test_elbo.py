"""The ELBO pieces (tinydiff/elbo.py) against finite differences, Monte Carlo, closed forms and
per-pixel loops; the VAE (tinydiff/models/vae.py) for shapes, errors and its gradients."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff import Tensor
from tinydiff.elbo import (ELBOLoss, bernoulli_log_likelihood, bits_per_dim, elbo_monte_carlo, elbo_terms,
                           kl_to_standard_normal, reconstruction_nll, reparameterize, softplus)
from tinydiff.gaussian import decoder_nll, normal_kl
from tinydiff.gradcheck import assert_grad_close
from tinydiff.models import VAE
from tinydiff.train import Trainer

FAST = settings(max_examples=25, deadline=None)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)


def tiny_vae(latent=(3,), decoder="discretized", dtype=np.float64, seed=0):
    """A VAE small enough for finite differences: 2 channels per level, one group."""
    return VAE(latent, channels=(2, 2), decoder=decoder, num_groups=1, rng=np.random.default_rng(seed), dtype=dtype)


def digits(n, seed=0, dtype=np.float64):
    """n fake 8-bit digits in model space: pixels on the 256-value grid, many at -1 like MNIST."""
    rng = np.random.default_rng(seed)
    pixels = np.where(rng.random((n, 1, 28, 28)) < 0.7, 0, rng.integers(0, 256, (n, 1, 28, 28)))
    return (pixels / 127.5 - 1.0).astype(dtype)


# ---------------------------------------------------------------- closed forms
@FAST
@given(mu=st.floats(-3, 3), logvar=st.floats(-6, 3))
def test_kl_is_appendix_b_and_normal_kl(mu, logvar):
    """KL(N(mu, s^2) || N(0, 1)) = -1/2 (1 + log s^2 - mu^2 - s^2) (Kingma & Welling appendix B),
    and is exactly gaussian.normal_kl against N(0, 1): one KL in the library."""
    kl = kl_to_standard_normal(np.float64(mu), np.float64(logvar))
    assert kl == pytest.approx(-0.5 * (1 + logvar - mu ** 2 - math.exp(logvar)), rel=1e-12, abs=1e-12)
    assert kl == normal_kl(np.float64(mu), np.float64(logvar), 0.0, 0.0)
    assert kl >= 0


def test_kl_against_monte_carlo():
    """The closed-form KL equals E_q[log q(z) - log p(z)] estimated from 400,000 draws of z = mu + s eps,
    for a diagonal Gaussian in 3 dimensions (within 4 standard errors)."""
    rng = np.random.default_rng(0)
    mu, logvar = np.array([0.5, -1.2, 0.0]), np.array([-1.0, 0.4, -3.0])
    n = 400_000
    z = reparameterize(np.broadcast_to(mu, (n, 3)), logvar, noise=rng.standard_normal((n, 3)))
    s = np.exp(0.5 * logvar)
    log_q = (-0.5 * ((z - mu) / s) ** 2 - np.log(s)).sum(axis=1)                 # the 2 pi terms cancel
    log_p = (-0.5 * z ** 2).sum(axis=1)
    estimate, stderr = (log_q - log_p).mean(), (log_q - log_p).std() / math.sqrt(len(z))
    exact = kl_to_standard_normal(mu, logvar).sum()
    assert abs(estimate - exact) < 4 * stderr and stderr < 0.01


def test_estimators_a_and_b_agree_on_average():
    """Kingma & Welling's estimator A (eq. 6: the KL by the same sample) and B (eq. 7: the KL in
    closed form) have the same expectation over eps; B has the smaller variance."""
    vae = tiny_vae(latent=(4,), seed=1)
    x = np.repeat(digits(1, seed=2), 400, axis=0)                               # one digit, 400 draws
    rng = np.random.default_rng(3)
    eps = rng.standard_normal((400, 4))
    a = elbo_monte_carlo(vae, x, noise=eps).data
    b = elbo_terms(vae, x, noise=eps)["nelbo"].data
    stderr = (a - b).std() / math.sqrt(len(a))
    assert abs(a.mean() - b.mean()) < 4 * stderr
    assert a.var() > b.var()


def test_reparameterize_is_mu_plus_sigma_eps_and_draws_from_rng():
    mu, logvar = np.array([[1.0, -2.0]]), np.array([[0.0, math.log(4.0)]])
    np.testing.assert_allclose(reparameterize(mu, logvar, noise=np.array([[0.5, 0.5]])), [[1.5, -1.0]])
    z1 = reparameterize(mu, logvar, rng=np.random.default_rng(7))
    z2 = reparameterize(mu, logvar, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(z1, z2)
    with pytest.raises(TypeError, match="rng"):
        reparameterize(mu, logvar)


def test_reparameterisation_gradients_match_closed_forms():
    """For f(z) = z^2 with z ~ N(mu, s^2): E f = mu^2 + s^2, so dE/dmu = 2 mu and dE/d(log s^2) = s^2.
    The pathwise gradient through z = mu + s eps, averaged over 200,000 eps, must match both; and for
    one fixed eps it is exactly dz/dmu = 1, dz/d(log s^2) = s eps / 2."""
    mu0, logvar0 = 0.7, math.log(0.5)
    eps = np.random.default_rng(0).standard_normal(200_000)
    mu = Tensor(np.full(len(eps), mu0), requires_grad=True)
    logvar = Tensor(np.full(len(eps), logvar0), requires_grad=True)
    z = reparameterize(mu, logvar, noise=eps)
    (z * z).sum().backward()                        # each draw's gradient lands in its own copy
    s2 = math.exp(logvar0)
    g_mu, g_logvar = mu.grad, logvar.grad           # [n] per-draw pathwise gradients
    assert abs(g_mu.mean() - 2 * mu0) < 4 * g_mu.std() / math.sqrt(len(eps))
    assert abs(g_logvar.mean() - s2) < 4 * g_logvar.std() / math.sqrt(len(eps))

    mu = Tensor(np.array(mu0), requires_grad=True)
    logvar = Tensor(np.array(logvar0), requires_grad=True)
    reparameterize(mu, logvar, noise=np.array(1.3)).backward()
    assert mu.grad == 1.0
    assert logvar.grad == pytest.approx(0.5 * math.sqrt(s2) * 1.3, rel=1e-12)


# ---------------------------------------------------------------- the decoders
@FAST
@given(logit=st.floats(-30, 30), x=st.floats(0, 1))
def test_bernoulli_is_x_log_p_plus_one_minus_x_log_one_minus_p(logit, x):
    """With log p = -log(1 + e^-l) and log(1 - p) = -log(1 + e^l), written with math.log1p."""
    expected = -x * math.log1p(math.exp(-logit)) - (1 - x) * math.log1p(math.exp(logit))
    got = bernoulli_log_likelihood(np.float64(x), np.float64(logit))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert got <= 1e-12


def test_bernoulli_and_softplus_are_finite_far_out():
    logits = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    np.testing.assert_allclose(softplus(logits), [0.0, math.log1p(math.exp(-50)), math.log(2), 50.0, 1000.0],
                               atol=1e-15)
    assert np.all(np.isfinite(bernoulli_log_likelihood(np.array([1.0, 0.0, 0.5, 1.0, 0.0]), logits)))
    assert bernoulli_log_likelihood(1.0, 1000.0) == 0.0


def test_reconstruction_nll_sums_the_per_pixel_terms():
    """The discretized term is the pixel sum of gaussian.decoder_nll (the diffusion bound's L_0);
    the Bernoulli term uses targets (x + 1) / 2, checked by a loop over pixels."""
    rng = np.random.default_rng(0)
    x = digits(2)
    mean, logvar = rng.uniform(-1, 1, x.shape), rng.uniform(-6, 0, x.shape)
    got = reconstruction_nll(x, {"mean": mean, "log_variance": logvar}, "discretized")
    np.testing.assert_allclose(got, decoder_nll(x, mean, logvar, "discretized").sum(axis=(1, 2, 3)))
    logits = rng.normal(0, 3, x.shape)
    expected = [-sum(math.log(1 / (1 + math.exp(-l))) * t + math.log(1 - 1 / (1 + math.exp(-l))) * (1 - t)
                     for l, t in zip(logits[b].ravel(), (x[b].ravel() + 1) / 2)) for b in range(2)]
    np.testing.assert_allclose(reconstruction_nll(x, {"logits": logits}, "bernoulli"), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="decoder"):
        reconstruction_nll(x, {"logits": logits}, "gaussian")


# ---------------------------------------------------------------- gradient checks
@FAST
@given(hnp.arrays(np.float64, shapes, elements=st.floats(-3, 3)), st.data())
def test_gradients_of_kl_and_reparameterize(mu, data):
    logvar = data.draw(hnp.arrays(np.float64, mu.shape, elements=st.floats(-4, 2)))
    eps = data.draw(hnp.arrays(np.float64, mu.shape, elements=st.floats(-3, 3)))
    assert_grad_close(kl_to_standard_normal, [mu, logvar])
    assert_grad_close(lambda m, v: reparameterize(m, v, noise=eps), [mu, logvar])


@FAST
@given(hnp.arrays(np.float64, shapes, elements=st.floats(-8, 8).filter(lambda v: abs(v) > 1e-3)), st.data())
def test_gradient_of_bernoulli_log_likelihood(logits, data):
    """Away from 0, where max(l, 0) and |l| have a kink (the sum of the two kinks is smooth,
    but each one's one-sided derivative is not)."""
    x = data.draw(hnp.arrays(np.float64, logits.shape, elements=st.floats(0, 1)))
    assert_grad_close(lambda l: bernoulli_log_likelihood(x, l), [logits])


def test_gradient_of_the_discretized_reconstruction_term():
    rng = np.random.default_rng(1)
    x = digits(1)[:, :, :6, :6]
    mean, logvar = rng.uniform(-1, 1, x.shape), rng.uniform(-4, -1, x.shape)
    assert_grad_close(lambda m, v: reconstruction_nll(x, {"mean": m, "log_variance": v}, "discretized"),
                      [mean, logvar], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("latent,decoder", [((3,), "discretized"), ((1, 7, 7), "bernoulli")])
@pytest.mark.parametrize("layer", ["enc_head", "dec_out"])
def test_gradients_of_the_whole_elbo_through_the_vae(latent, decoder, layer):
    """Finite differences through encoder, reparameterisation, decoder and both ELBO terms, with
    respect to the bias of the encoder's head (mu and log sigma^2: both terms depend on it) and of
    the decoder's output layer, at fixed eps."""
    vae = tiny_vae(latent, decoder)
    x = digits(2)
    eps = np.random.default_rng(4).standard_normal((2, *latent))
    module = getattr(vae, layer)

    def nelbo_of_bias(b):
        saved, module.bias = module.bias, b
        try:
            return elbo_terms(vae, x, noise=eps)["nelbo"]
        finally:
            module.bias = saved
    assert_grad_close(nelbo_of_bias, [module.bias.data.copy()], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the model and the loss
@pytest.mark.parametrize("latent", [(2,), (16,), (4, 7, 7)])
@pytest.mark.parametrize("decoder", ["discretized", "bernoulli"])
def test_vae_shapes(latent, decoder):
    vae = VAE(latent, channels=(8, 16), decoder=decoder, rng=np.random.default_rng(0))
    x = digits(3, dtype=np.float32)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (3, *latent) and mean.dtype == np.float32
    out = vae.decode(mean)
    assert out.shape == (3, 2 if decoder == "discretized" else 1, 28, 28)
    params = vae.decoder_params(out)
    assert set(params) == ({"mean", "log_variance"} if decoder == "discretized" else {"logits"})
    image = vae.generate(mean.data)
    assert image.shape == (3, 1, 28, 28) and image.min() >= -1 and image.max() <= 1
    assert VAE(**vae.config).config == vae.config


def test_vae_refuses_bad_arguments_by_name():
    with pytest.raises(ValueError, match="latent_shape"):
        VAE((4, 8, 8))
    with pytest.raises(ValueError, match="decoder"):
        VAE(decoder="gaussian")
    with pytest.raises(ValueError, match="num_groups"):
        VAE(channels=(12, 16))
    vae = VAE((2,), channels=(8, 8), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x: expected digits \[B, 1, 28, 28\]"):
        vae.encode(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"z: expected latents \[B, 2\]"):
        vae.decode(np.zeros((2, 3), np.float32))


def test_elbo_terms_add_up_and_bpd_is_nats_over_784_log_2():
    vae = tiny_vae()
    terms = elbo_terms(vae, digits(3), rng=np.random.default_rng(0))
    np.testing.assert_allclose(terms["nelbo"].data, terms["reconstruction"].data + terms["kl"].data)
    np.testing.assert_allclose(terms["bpd"].data, terms["nelbo"].data / (784 * math.log(2)))
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert np.all(terms["kl"].data >= 0) and np.all(terms["reconstruction"].data >= 0)   # discretized: P <= 1


def test_trainer_trains_a_vae_on_the_elbo():
    """The Trainer the diffusion examples use, unchanged: 60 steps on 64 fake digits lower the loss."""
    vae = VAE((4,), channels=(8, 8), rng=np.random.default_rng(0))
    trainer = Trainer(vae, ELBOLoss(), (digits(64, dtype=np.float32), np.zeros(64, np.int64)), batch_size=16,
                      lr=3e-3, log_every=0)
    losses = trainer.train(60)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    assert set(trainer.last_logs) == {"nelbo", "reconstruction", "kl", "bpd"}
    with pytest.raises(ValueError, match="kl_weight"):
        ELBOLoss(kl_weight=-1.0)
