"""Tests for tinydiff.models.UNet: the MNIST-UNET default, shapes, conditioning, gradients."""
import numpy as np
import pytest

from tinydiff import Tensor
from tinydiff.gradcheck import assert_grad_close
from tinydiff.models import UNet

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")


def tiny(dtype=np.float64, **kw):
    """A UNet small enough for finite differences: 2 levels, 2-4 channels, 4 x 4 images."""
    args = dict(base_channels=2, channel_mults=(1, 2), time_dim=4, emb_dim=6, num_groups=2,
                zero_init_out=False, rng=np.random.default_rng(0), dtype=dtype)
    args.update(kw)
    return UNet(**args)


def test_default_is_mnist_unet():
    """The parameter count of the issue's layer list, added up by hand: 583,713."""
    model = UNet(rng=np.random.default_rng(0))
    assert model.num_parameters() == 583_713
    names = dict(model.named_parameters())
    assert names["conv_in.weight"].shape == (32, 1, 3, 3)
    assert names["down_blocks.1.skip.weight"].shape == (64, 32, 1, 1)       # ResBlock(32 -> 64)
    assert names["up_blocks.0.conv1.weight"].shape == (64, 128, 3, 3)       # ResBlock(128 -> 64)
    assert names["up_blocks.1.conv1.weight"].shape == (32, 96, 3, 3)        # ResBlock(96 -> 32)
    assert names["mid_attn.qkv.weight"].shape == (192, 64, 1, 1)
    assert names["time_embed.0.weight"].shape == (128, 32)
    # with 10 classes: one more embedding table of 11 x 128 (10 digits + null)
    assert UNet(num_classes=10, rng=np.random.default_rng(0)).num_parameters() == 583_713 + 11 * 128


@pytest.mark.parametrize("learned", [False, True])
def test_output_shape_dtype_and_zero_start(learned):
    """Output [B, C_out, 28, 28] in float32; zero_init_out makes the untrained output exactly 0."""
    model = UNet(base_channels=8, learned_variance=learned, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    out = model(x, np.array([0, 5, 999]))
    assert out.shape == (3, 2 if learned else 1, 28, 28) and out.dtype == np.float32
    assert np.all(out.data == 0)


def test_shapes_for_colour_and_latent_grids():
    """The same class at 3 x 28 x 28 (colour digits) and at a 4 x 8 x 8 latent grid."""
    colour = UNet(in_channels=3, base_channels=8, num_classes=(10, 6), rng=np.random.default_rng(0))
    y = np.array([[1, 2], [3, 5]])
    assert colour(np.zeros((2, 3, 28, 28), np.float32), np.array([1, 2]), y=y).shape == (2, 3, 28, 28)
    latent = UNet(in_channels=4, base_channels=8, channel_mults=(1, 2), attention_levels=(0,),
                  rng=np.random.default_rng(0))
    assert latent(np.zeros((2, 4, 8, 8), np.float32), np.array([1, 2])).shape == (2, 4, 8, 8)


def test_labels_change_the_output_and_none_means_null():
    """y shifts the prediction; y=None equals passing the null label K explicitly."""
    model = tiny(num_classes=3)
    x = np.random.default_rng(2).standard_normal((2, 1, 4, 4))
    t = np.array([3, 7])
    a = model(x, t, y=np.array([0, 1])).data
    b = model(x, t, y=np.array([2, 1])).data
    assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1])          # per example
    np.testing.assert_array_equal(model(x, t).data, model(x, t, y=np.array([3, 3])).data)
    assert model.null_labels == (3,)


def test_bad_inputs_are_named():
    model = tiny(num_classes=3)
    x = np.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match="y: labels must lie in 0..K"):
        model(x, np.array([1, 2]), y=np.array([0, 4]))
    with pytest.raises(ValueError, match="y: expected labels of shape"):
        model(x, np.array([1, 2]), y=np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer labels"):
        model(x, np.array([1, 2]), y=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"x: expected images \[B, 1, H, W\]"):
        model(np.zeros((2, 3, 4, 4)), np.array([1, 2]))
    with pytest.raises(ValueError, match="divide by 2"):
        model(np.zeros((2, 1, 5, 4)), np.array([1, 2]))
    with pytest.raises(ValueError, match="t: expected int timesteps"):
        model(x, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny()(x, np.array([1, 2]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="attention_levels"):
        tiny(attention_levels=(1,))


def test_input_gradient_matches_finite_differences():
    """d(output)/dx through every block (conv, GroupNorm, attention, upsample, skips), float64."""
    model = tiny(num_classes=2, attention_levels=(0,))
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 4))
    t, y = np.array([1, 9]), np.array([0, 2])
    assert_grad_close(lambda x: model(x, t, y=y), [x], atol=1e-6, rtol=1e-5)


def test_scale_shift_block_is_adagn_written_out():
    """ResBlock(scale_shift=True) against its equation in plain NumPy (float64):
    h = conv1(silu(GN(x))); s, b = split(W silu(temb) + c); out = conv2(silu(GN(h) (1 + s) + b)) + skip(x)."""
    from tinydiff.models.unet import ResBlock
    rng = np.random.default_rng(5)
    block = ResBlock(4, 6, emb_dim=5, num_groups=2, scale_shift=True, rng=rng, dtype=np.float64)
    x, emb = rng.standard_normal((3, 4, 5, 5)), rng.standard_normal((3, 5))

    def gn(h, groups=2, eps=1e-5):                                  # GroupNorm with weight 1, bias 0 (their init)
        g = h.reshape(h.shape[0], groups, -1)
        return ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(h.shape)

    def silu(z):
        return z / (1 + np.exp(-z))

    h = block.conv1(Tensor(silu(gn(x)))).data                        # [3, 6, 5, 5]
    e = emb @ block.emb_proj.weight.data.T + block.emb_proj.bias.data   # [3, 12]: the scale, then the shift
    s, b = e[:, :6, None, None], e[:, 6:, None, None]
    expected = block.conv2(Tensor(silu(gn(h) * (1 + s) + b))).data + block.skip(Tensor(x)).data
    np.testing.assert_allclose(block(Tensor(x), Tensor(emb)).data, expected, rtol=1e-10, atol=1e-12)
    assert block.emb_proj.weight.shape == (12, 5)                   # one gain and one bias per channel


def test_scale_shift_labels_change_the_gain():
    """With scale_shift, a label changes the output even where a shift alone would cancel: the
    model still uses y, and the default (shift only) keeps MNIST-UNET's parameter names and shapes."""
    model = tiny(num_classes=(3, 2), scale_shift=True)
    x, t = np.random.default_rng(2).standard_normal((2, 1, 4, 4)), np.array([3, 7])
    a = model(x, t, y=np.array([[0, 1], [1, 1]])).data
    b = model(x, t, y=np.array([[2, 1], [1, 1]])).data
    assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1])
    plain = {n: p.shape for n, p in tiny(num_classes=(3, 2)).named_parameters()}
    gained = {n: p.shape for n, p in model.named_parameters()}
    assert plain.keys() == gained.keys()
    assert all(gained[n] == (2 * plain[n][0],) + plain[n][1:] for n in plain if "emb_proj" in n)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_parameter_gradients_match_directional_differences(scale_shift):
    """For random directions v over ALL parameters: autograd's grad . v equals the central
    difference (L(theta + h v) - L(theta - h v)) / 2h of the loss, in float64."""
    model = tiny(num_classes=2, learned_variance=True, scale_shift=scale_shift)
    rng = np.random.default_rng(4)
    x, t, y = rng.standard_normal((2, 1, 4, 4)), np.array([0, 5]), np.array([1, 2])
    target = rng.standard_normal((2, 2, 4, 4))

    def loss():
        return ((model(x, t, y=y) - target) ** 2).mean()

    model.zero_grad()
    loss().backward()
    params = model.parameters()
    grads = [p.grad for p in params]
    assert all(g is not None for g in grads)
    h = 1e-6
    for _ in range(3):
        v = [rng.standard_normal(p.shape) for p in params]
        for p, d in zip(params, v):
            p.data += h * d
        plus = loss().item()
        for p, d in zip(params, v):
            p.data -= 2 * h * d
        minus = loss().item()
        for p, d in zip(params, v):
            p.data += h * d
        numeric = (plus - minus) / (2 * h)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, v))
        assert abs(numeric - analytic) <= 1e-6 + 1e-5 * abs(analytic), (numeric, analytic)


def test_float32_stays_float32_through_backward():
    model = UNet(base_channels=8, channel_mults=(1, 2), num_classes=10, rng=np.random.default_rng(0))
    out = model(np.zeros((2, 1, 8, 8), np.float32), np.array([1, 2]), y=np.array([3, 10]))
    (out * out).mean().backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    assert isinstance(out, Tensor) and out.dtype == np.float32
