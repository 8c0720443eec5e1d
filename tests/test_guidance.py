"""Classifier-free guidance: the formula, the null label, one batched call, every sampler."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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
        ClassifierFreeGuidance(LabelModel(), -1.5)
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


# ---------------------------------------------------------------- the two guidance equations
def test_composed_guidance_at_zero_weights_is_the_unconditional_eps_and_joint_at_one_is_the_conditional():
    """Liu et al.'s weights: all 0 leaves eps(null, null) exactly; the joint form at weight 1 is eps(d, c)."""
    rng = np.random.default_rng(0)
    eps_null, eps_each, eps_cond = rng.standard_normal((3, 4)), rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 4))
    from tinydiff.guidance import composed_guidance, joint_guidance
    np.testing.assert_array_equal(composed_guidance(eps_null, eps_each, [0.0, 0.0]), eps_null)
    np.testing.assert_allclose(joint_guidance(eps_null, eps_cond, 1.0), eps_cond, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(joint_guidance(eps_null, eps_cond, 0.0), eps_null)
    # one attribute at weight 1, the other at 0: that attribute's own prediction
    np.testing.assert_allclose(composed_guidance(eps_null, eps_each, [1.0, 0.0]), eps_each[0], atol=1e-15)
    # the weights act separately: linear in each one (a per-attribute loop, written out)
    w = [2.5, 0.7]
    want = eps_null + w[0] * (eps_each[0] - eps_null) + w[1] * (eps_each[1] - eps_null)
    np.testing.assert_allclose(composed_guidance(eps_null, eps_each, w), want, rtol=1e-12)
    with pytest.raises(ValueError, match="composed_guidance: expected eps_each"):
        composed_guidance(eps_null, eps_each, [1.0])


def test_classifier_free_guidance_calls_the_equations_with_weight_one_plus_w():
    """A two-attribute model whose eps is known for every label combination: the composed class
    with (w_d, w_c) equals composed_guidance with weights (1 + w_d, 1 + w_c) on the model's own
    eps(null, null), eps(d, null), eps(null, c); the joint one joint_guidance with 1 + w."""
    from tinydiff.guidance import composed_guidance, joint_guidance
    null = np.array([10, 6])

    def model(x_t, t, y):                      # eps depends on both labels, and on whether each is null
        y = np.asarray(y)
        return x_t * 0.5 + (y[:, :1] + 1.0) * 0.1 + (y[:, 1:] + 1.0) ** 2 * 0.01

    x, t = np.random.default_rng(0).standard_normal((3, 2)), np.zeros(3, np.int64)
    y = np.array([[1, 2], [7, 0], [3, 5]])
    n = np.broadcast_to(null, y.shape)
    e_nn, e_dn = model(x, t, n), model(x, t, np.stack([y[:, 0], n[:, 1]], 1))
    e_nc, e_dc = model(x, t, np.stack([n[:, 0], y[:, 1]], 1)), model(x, t, y)
    composed = ClassifierFreeGuidance(model, (2.0, 0.5), null_labels=null)(x, t, y=y)
    np.testing.assert_allclose(composed, composed_guidance(e_nn, np.stack([e_dn, e_nc]), [3.0, 1.5]), rtol=1e-12)
    joint = ClassifierFreeGuidance(model, 2.0, null_labels=null)(x, t, y=y)
    np.testing.assert_allclose(joint, joint_guidance(e_nn, e_dc, 3.0), rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(w=st.floats(0.0, 20.0), seed=st.integers(0, 2 ** 32 - 1))
def test_guided_eps_is_ho_salimans_eq6_for_any_scale(w, seed):
    """ClassifierFreeGuidance writes eq. 6 inline; it equals (1 + w) eps(y) - w eps(null) from the
    model's two answers (float64), and joint_guidance with weight 1 + w bit for bit."""
    from tinydiff.guidance import joint_guidance
    rng = np.random.default_rng(seed)
    x, t, y = rng.standard_normal((5, 2)), np.arange(5), rng.integers(0, 4, 5)

    def model(x_t, tt, y):
        return np.sin(x_t * (1.0 + np.asarray(y).reshape(len(x_t), -1)[:, :1])) + 0.1 * tt[:, None]   # y: [B] or [B, 1]

    out = ClassifierFreeGuidance(model, w, null_labels=4)(x, t, y=y)
    eps_y, eps_null = model(x, t, y), model(x, t, np.full(5, 4))
    np.testing.assert_allclose(out, (1 + w) * eps_y - w * eps_null, rtol=1e-9, atol=1e-9)
    if w > 0:
        np.testing.assert_array_equal(out, joint_guidance(eps_null, eps_y, 1 + w))
