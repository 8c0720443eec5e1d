"""tinydiff.latent.LatentSpace: the scale factor s = 1 / std(z), and the round trip
encode -> scale -> unscale -> decode against the VAE's own encode and generate."""
import numpy as np
import pytest

from tinydiff.latent import LatentSpace
from tinydiff.models import VAE


def spatial_vae():
    return VAE((2, 7, 7), channels=(8, 8), rng=np.random.default_rng(0))


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 1, 28, 28)) / 127.5 - 1).astype(np.float32)


def test_fit_measures_one_over_the_std_of_posterior_samples():
    """s is 1 / std of z = mu + sigma eps drawn with the same generator, pooled over every value;
    the scaled codes of those draws have standard deviation 1."""
    vae, x = spatial_vae(), images(40)
    space = LatentSpace.fit(vae, x, np.random.default_rng(5), batch_size=16)
    mean, log_variance = space.posterior(x)
    z = mean + np.exp(0.5 * log_variance) * np.random.default_rng(5).standard_normal(mean.shape, dtype=np.float32)
    assert space.scale_factor == pytest.approx(1 / z.std(), rel=1e-6)
    assert space.scale(z).std() == pytest.approx(1.0, rel=1e-5)
    assert space.shape == (2, 7, 7)


def test_posterior_in_batches_equals_one_pass():
    vae, x = spatial_vae(), images(10)
    mean, log_variance = LatentSpace(vae, 1.0).posterior(x, batch_size=3)
    one_mean, one_log_variance = vae.encode(x)
    np.testing.assert_allclose(mean, one_mean.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_variance, one_log_variance.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale_factor", [0.37, 1.0, 5.5])
def test_round_trip_encode_scale_unscale_decode(scale_factor):
    """unscale(scale(z)) gives z back (to float32 rounding); decode(encode(x)) with the posterior
    mean is exactly the VAE's generate(mu(x)), whatever s; a sampled code with injected eps is
    s * (mu + sigma eps)."""
    vae, x = spatial_vae(), images(6)
    space = LatentSpace(vae, scale_factor)
    z = np.random.default_rng(1).standard_normal((6, 2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(space.unscale(space.scale(z)), z, rtol=1e-6)
    assert space.scale(z).dtype == np.float32
    codes = space.encode(x, sample=False)
    mu, log_variance = (t.data for t in vae.encode(x))
    np.testing.assert_allclose(codes, scale_factor * mu, rtol=1e-6)
    np.testing.assert_allclose(space.decode(codes), vae.generate(mu), atol=1e-5)
    eps = np.random.default_rng(2).standard_normal(mu.shape).astype(np.float32)
    np.testing.assert_allclose(space.encode(x, noise=eps), scale_factor * (mu + np.exp(0.5 * log_variance) * eps),
                               rtol=1e-5, atol=1e-6)


def test_bad_scale_factor_is_refused_by_name():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale_factor"):
            LatentSpace(spatial_vae(), bad)
