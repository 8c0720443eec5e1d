"""The fused GroupNorm (+ SiLU) op of tinydiff/fast/norm.py against its plain twins, the composed
silu(group_norm(x)) and group_norm(x) of tinydiff/nn/layers.py under td.plain() (built from the
engine's primitives, which tests/test_layers.py checks against finite differences): values and
gradients in float64, for both memory layouts, shapes and group counts drawn by Hypothesis."""
import numpy as np
from hypothesis import given, settings, strategies as st

import tinydiff as td
from tinydiff import Tensor
from tinydiff.fast.norm import group_norm_act
from tinydiff.gradcheck import assert_grad_close
from tinydiff.nn import GroupNorm, GroupNormSiLU, group_norm, silu


def composed(x, groups, w, b, act):
    """The plain path: group_norm (and silu) composed from engine primitives."""
    with td.plain():
        y = group_norm(x, groups, w, b)
        return silu(y) if act else y


def grads(fn, x, w, b, g):
    xt, wt, bt = (Tensor(v, requires_grad=True) for v in (x, w, b))
    y = fn(xt, wt, bt)
    y.backward(g)
    return y.data, xt.grad, wt.grad, bt.grad


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 4), H=st.integers(1, 5),
       W=st.integers(1, 5), act=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_fused_matches_composed(B, groups, per_group, H, W, act, channels_last, seed):
    rng = np.random.default_rng(seed)
    C = groups * per_group
    x = rng.standard_normal((B, C, H, W)) * 3 + rng.standard_normal()
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w, b, g = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal((B, C, H, W))
    fused = grads(lambda x, w, b: group_norm_act(x, groups, w, b, silu=act), x, w, b, g)
    for got, want in zip(fused, grads(lambda x, w, b: composed(x, groups, w, b, act), x, w, b, g)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    nhwc = lambda a: a.transpose(0, 2, 3, 1).flags.c_contiguous
    assert nhwc(fused[0]) == nhwc(x)                        # the output keeps the input's layout


def test_fused_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal(4), rng.standard_normal(4)
    assert_grad_close(lambda x, w, b: td.fast.group_norm_silu(x, 2, w, b), [x, w, b], atol=1e-6)


def test_layer_float32_and_no_affine():
    """GroupNormSiLU on float32 equals silu(GroupNorm(x)) on the plain path; affine=False works."""
    rng = np.random.default_rng(1)
    norm = GroupNormSiLU(2, 6)
    x = rng.standard_normal((3, 6, 4, 4)).astype(np.float32)
    y = norm(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, composed(Tensor(x), 2, norm.weight, norm.bias, True).data, atol=1e-5)
    no_affine = GroupNorm(3, 6, affine=False)
    np.testing.assert_allclose(no_affine(x).data, composed(Tensor(x), 3, None, None, False).data, atol=1e-5)


def test_fused_matches_composed_when_channel_rows_are_split():
    """Channels-last with S*C > 8192: per-channel vectors are repeated over k < S pixels, so
    the [b, S/k, k*C] rows view has several rows per example (10x10 pixels, 96 channels: k = 50)."""
    rng = np.random.default_rng(3)
    x = np.ascontiguousarray(rng.standard_normal((2, 10, 10, 96)) * 2 + 1).transpose(0, 3, 1, 2)
    w, b, g = rng.standard_normal(96), rng.standard_normal(96), rng.standard_normal((2, 96, 10, 10))
    for act in (False, True):
        fused = grads(lambda x, w, b: group_norm_act(x, 8, w, b, silu=act), x, w, b, g)
        for got, want in zip(fused, grads(lambda x, w, b: composed(x, 8, w, b, act), x, w, b, g)):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
