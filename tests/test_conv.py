"""Conv2d (im2col + one GEMM, col2im backward) against naive loop twins kept here and
against central finite differences in float64, for every stride in {1, 2}, padding in
{0, 1, 2} and kernel size in {1, 3}."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff import Tensor
from tinydiff.gradcheck import assert_grad_close
from tinydiff.nn import Conv2d, col2im, conv2d, im2col

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")

COMBOS = list(itertools.product([1, 3], [1, 2], [0, 1, 2]))       # (kernel, stride, padding)
values = st.floats(-2, 2, allow_nan=False, width=64)


# ---------------------------------------------------------------- naive twins
def naive_conv2d(x, w, b, stride, padding):
    """y[b, o, i, j] = bias[o] + sum_{c,p,q} w[o, c, p, q] x_pad[b, c, s i + p, s j + q], by loops."""
    (sh, sw), (ph, pw) = stride, padding
    B, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.zeros((B, C, H + 2 * ph, W + 2 * pw), x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((B, O, Ho, Wo), np.float64)
    for n in range(B):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    patch = xp[n, :, sh * i:sh * i + kh, sw * j:sw * j + kw]
                    y[n, o, i, j] = (patch * w[o]).sum() + (b[o] if b is not None else 0.0)
    return y


def naive_conv2d_backward(x, w, g, stride, padding):
    """dx, dw, db of sum(y * g), by the same loops: each output pixel sends g[b, o, i, j]
    back to the patch it read (dx) and to the kernel (dw)."""
    (sh, sw), (ph, pw) = stride, padding
    B, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.zeros((B, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
    for n in range(B):
        for o in range(O):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    dxp[n, :, sh * i:sh * i + kh, sw * j:sw * j + kw] += w[o] * g[n, o, i, j]
                    dw[o] += xp[n, :, sh * i:sh * i + kh, sw * j:sw * j + kw] * g[n, o, i, j]
    return dxp[:, :, ph:ph + H, pw:pw + W], dw, g.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------- Hypothesis cases
@st.composite
def conv_case(draw, kernel, stride, padding):
    B, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    low = max(1, kernel - 2 * padding)                            # the kernel must fit the padded input
    H, W = draw(st.integers(low, low + 3)), draw(st.integers(low, low + 3))
    x = draw(hnp.arrays(np.float64, (B, C, H, W), elements=values))
    w = draw(hnp.arrays(np.float64, (O, C, kernel, kernel), elements=values))
    b = draw(hnp.arrays(np.float64, (O,), elements=values))
    return x, w, b


@pytest.mark.parametrize("kernel,stride,padding", COMBOS)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_conv2d_forward_matches_naive_loop(kernel, stride, padding, data):
    x, w, b = data.draw(conv_case(kernel, stride, padding))
    y = conv2d(x, w, b, stride, padding).data
    np.testing.assert_allclose(y, naive_conv2d(x, w, b, (stride,) * 2, (padding,) * 2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", COMBOS)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_conv2d_gradients_match_finite_differences(kernel, stride, padding, data):
    x, w, b = data.draw(conv_case(kernel, stride, padding))
    assert_grad_close(lambda x, w, b: conv2d(x, w, b, stride, padding), [x, w, b], atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding", COMBOS + [((1, 3), (2, 1), (0, 2)), ((3, 2), (1, 2), (2, 1))])
def test_conv2d_backward_matches_naive_loop(kernel, stride, padding):
    """Larger float32 shapes (too big for finite differences) against the loop backward."""
    rng = np.random.default_rng(0)
    kernel, stride, padding = ((v, v) if isinstance(v, int) else v for v in (kernel, stride, padding))
    layer = Conv2d(3, 4, kernel, stride, padding, rng=rng)
    x = Tensor(rng.standard_normal((2, 3, 7, 6)).astype(np.float32), requires_grad=True)
    y = layer(x)
    want = naive_conv2d(x.data, layer.weight.data, layer.bias.data, stride, padding)
    np.testing.assert_allclose(y.data, want, rtol=1e-5, atol=1e-5)
    assert y.dtype == np.float32
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    dx, dw, db = naive_conv2d_backward(x.data, layer.weight.data, g, stride, padding)
    for got, expected in ((x.grad, dx), (layer.weight.grad, dw), (layer.bias.grad, db)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_conv2d_weight_reused_in_two_branches():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 3, 3)), rng.standard_normal(2)
    f = lambda x, w, b: conv2d(conv2d(x, w, b, 1, 1), w, b, 1, 1) * x + conv2d(x, w, None, 2, 1).sum()
    assert_grad_close(f, [x, w, b], atol=1e-5)


# ---------------------------------------------------------------- im2col / col2im
def test_im2col_columns_are_the_patches():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 4))
    cols = im2col(x, (3, 2), (2, 1), (1, 0))                       # Ho = 3, Wo = 3
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    assert cols.shape == (3 * 3 * 2, 2 * 3 * 3)
    for n, i, j in itertools.product(range(2), range(3), range(3)):
        np.testing.assert_array_equal(cols[:, n * 9 + i * 3 + j], xp[n, :, 2 * i:2 * i + 3, j:j + 2].ravel())


@pytest.mark.parametrize("kernel,stride,padding", COMBOS)
def test_col2im_is_the_adjoint_of_im2col(kernel, stride, padding):
    """<im2col(x), c> = <x, col2im(c)> for all x, c: col2im is exactly im2col's transpose."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    cols = im2col(x, kernel, stride, padding)
    c = rng.standard_normal(cols.shape)
    back = col2im(c, x.shape, kernel, stride, padding)
    assert back.shape == x.shape and back.flags.c_contiguous
    assert math.isclose((cols * c).sum(), (x * back).sum(), rel_tol=1e-12)


# ---------------------------------------------------------------- the layer
def test_conv2d_layer_init_shapes_and_errors():
    layer = Conv2d(16, 8, 3, padding=1, rng=np.random.default_rng(0))
    bound = 1 / math.sqrt(16 * 9)                                  # fan_in = in * kh * kw
    assert layer.weight.shape == (8, 16, 3, 3) and layer.bias.shape == (8,)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert abs(layer.weight.data.std() - bound / math.sqrt(3)) < 0.1 * bound
    y = layer(np.random.default_rng(1).standard_normal((2, 16, 9, 7)))     # float64 in, float32 out
    assert y.shape == (2, 8, 9, 7) and y.dtype == np.float32
    assert Conv2d(16, 8, 3, stride=2)(np.zeros((1, 16, 9, 7), np.float32)).shape == (1, 8, 4, 3)
    with pytest.raises(ValueError, match=r"\[B, 16, H, W\]"):
        layer(np.zeros((2, 3, 9, 7)))
    with pytest.raises(ValueError, match="stride"):
        Conv2d(1, 1, 3, stride=0)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(TypeError, match="dtype"):
        conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3), np.float32))


def test_conv2d_skips_gradients_nobody_needs():
    """The first layer's input never requires grad: its col2im must not run (x.grad stays None)."""
    layer = Conv2d(2, 2, 3, rng=np.random.default_rng(0))
    x = Tensor(np.ones((1, 2, 4, 4), np.float32))
    layer(x).sum().backward()
    assert x.grad is None and layer.weight.grad is not None and layer.bias.grad is not None
