"""Classifier-free guidance: the formula, the null label, one batched call, every sampler."""
import numpy as np
import pytest

from tinydiff.diffusion import GaussianDiffusion
from tinydiff.guidance import ClassifierFreeGuidance, apply_guidance
from tinydiff.models import UNet
from tinydiff.samplers import SAMPLERS
from tinydiff.schedules import linear_beta_schedule


class LabelModel:
    """eps(x, t, y) = x * (1 + y_0) + 10 y_1 (+ a variance channel): an exact, known function of
    the labels, recording every call so the tests see the batches guidance sends."""

    def __init__(self, null=(5,), variance=False):
        self.null_labels, self.variance, self.calls = tuple(null), variance, []

    def __call__(self, x, t, y=None):
        self.calls.append((len(x), np.array(y)))
        y = np.full(len(x), self.null_labels[0]) if y is None else np.asarray(y)
        y = np.asarray(y).reshape(len(x), -1).astype(x.dtype)
        eps = x * (1 + y[:, :1]) + (10 * y[:, 1:2] if y.shape[1] > 1 else 0)
        return np.concatenate([eps, 100 + y[:, :1] + 0 * x], axis=1) if self.variance else eps


def test_joint_guidance_is_the_ho_salimans_formula_in_one_call():
    """(1 + w) eps(y) - w eps(null), computed by hand from the model; one call of batch 2B."""
    model = LabelModel()
    x, t, y = np.ones((3, 1)), np.array([1, 2, 3]), np.array([0, 1, 2])
    w = 2.5
    out = ClassifierFreeGuidance(model, w)(x, t, y=y)
    want = (1 + w) * model(x, t, y=y) - w * model(x, t, y=np.full(3, 5))
    np.testing.assert_allclose(out, want)
    assert model.calls[0][0] == 6 and list(model.calls[0][1][3:, 0]) == [5, 5, 5]   # null label on the 2nd half


def test_w0_is_the_conditional_model_and_y_none_is_unguided():
    model = LabelModel()
    x, t, y = np.random.default_rng(0).standard_normal((4, 1)), np.arange(4), np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(ClassifierFreeGuidance(model, 0.0)(x, t, y=y), model(x, t, y=y))
    assert ClassifierFreeGuidance(model, 3.0)(x, t).shape == (4, 1)
    assert apply_guidance(model, None) is model


def test_only_the_eps_channels_are_guided():
    """With a learned variance (2C outputs) the variance channel is the conditional pass's."""
    model = LabelModel(variance=True)
    x, t, y = np.ones((2, 1)), np.arange(2), np.array([1, 3])
    out = ClassifierFreeGuidance(model, 4.0)(x, t, y=y)
    np.testing.assert_allclose(out[:, 1], 100 + y)
    np.testing.assert_allclose(out[:, 0], 5 * (1 + y) - 4 * 6)


def test_composed_guidance_for_two_attributes():
    """Liu et al. 2022: eps(null, null) + sum_a (1 + w_a)(eps(attribute a alone) - eps(null, null))."""
    model = LabelModel(null=(5, 3))
    x, t, y = np.ones((2, 1)), np.arange(2), np.array([[1, 2], [0, 1]])
    wd, wc = 1.5, 0.5
    out = ClassifierFreeGuidance(model, (wd, wc))(x, t, y=y)
    e = lambda labels: model(x, t, y=np.array(labels))          # noqa: E731
    u = e([[5, 3], [5, 3]])
    want = u + (1 + wd) * (e([[1, 3], [0, 3]]) - u) + (1 + wc) * (e([[5, 2], [5, 1]]) - u)
    np.testing.assert_allclose(out, want)
    joint = ClassifierFreeGuidance(model, 2.0)(x, t, y=y)
    np.testing.assert_allclose(joint, u + 3.0 * (e(y) - u))


def test_bad_guidance_arguments():
    with pytest.raises(ValueError, match="null_labels"):
        ClassifierFreeGuidance(lambda x, t: x, 1.0)
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(LabelModel(), -1.0)
    with pytest.raises(ValueError, match="one scale per attribute"):
        ClassifierFreeGuidance(LabelModel(null=(5, 3)), (1.0, 2.0, 3.0))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_takes_guidance_and_labels(sampler):
    """Same seed: guidance 0 gives exactly the unguided conditional samples; guidance 3 differs;
    a real UNet gets the labels and the null label through every sampler."""
    d = GaussianDiffusion(linear_beta_schedule(20, 1e-3, 0.2))
    model = UNet(base_channels=8, channel_mults=(1, 2), num_classes=10, zero_init_out=False,
                 rng=np.random.default_rng(0))
    kw = dict(steps=5, model_kwargs={"y": np.arange(4)})
    run = lambda g: SAMPLERS[sampler](d, model, (4, 1, 8, 8), np.random.default_rng(1), guidance=g, **kw)  # noqa: E731
    plain, w0, w3 = run(None), run(0.0), run(3.0)
    np.testing.assert_array_equal(plain, w0)
    assert not np.allclose(plain, w3) and np.all(np.isfinite(w3)) and w3.shape == (4, 1, 8, 8)
