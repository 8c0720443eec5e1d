"""The fast convolution (tinydiff/fast/conv.py, winograd.py) against its plain twin, nn.conv2d
under td.plain() (im2col + one GEMM), which tests/test_conv.py ties to naive loops and finite
differences. Float64, shapes, strides, paddings and channel counts drawn by Hypothesis;
values and all three gradients."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinydiff as td
from tinydiff import Tensor
from tinydiff.fast import winograd
from tinydiff.fast.conv import kernel_for
from tinydiff.fast.upsample import phase_blocks, phase_weight, phase_weight_adjoint
from tinydiff.nn import Conv2d, UpsampleConv, conv2d, upsample_nearest

needs_fast_path = pytest.mark.skipif(not td.fast.enabled(), reason="TINYDIFF_PLAIN=1 is set: the fast path is off")


def run(x, w, b, stride, padding, path, g_seed=0, x_layout="nchw"):
    """y, dx, dw, db of sum(y * g) for one path, "fast" or "plain"."""
    if x_layout == "channels_last":                       # same values, [B, H, W, C] memory
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    bt = None if b is None else Tensor(b, requires_grad=True)
    with td.plain() if path == "plain" else contextlib.nullcontext():
        y = conv2d(xt, wt, bt, stride, padding)
    g = np.random.default_rng(g_seed).standard_normal(y.shape)
    y.backward(g)
    return y.data, xt.grad, wt.grad, None if bt is None else bt.grad


def assert_same(a, b, rtol=1e-10):
    for u, v in zip(a, b):
        if u is None:
            assert v is None
            continue
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * max(1.0, np.abs(v).max()))


@st.composite
def conv_case(draw):
    kernel = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.sampled_from([1, 1, 2]))
    padding = draw(st.integers(0, 2))
    B, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    low = max(1, kernel - 2 * padding)
    H, W = draw(st.integers(low, low + 6)), draw(st.integers(low, low + 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(O) if draw(st.booleans()) else None
    return (rng.standard_normal((B, C, H, W)), rng.standard_normal((O, C, kernel, kernel)), bias,
            stride, padding, draw(st.sampled_from(["nchw", "channels_last"])))


@settings(max_examples=60, deadline=None)
@given(case=conv_case())
def test_fast_conv_matches_plain_twin(case):
    x, w, b, stride, padding, layout = case
    assert_same(run(x, w, b, stride, padding, "fast", x_layout=layout), run(x, w, b, stride, padding, "plain"))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(8, 20), O=st.integers(8, 20), H=st.integers(1, 9), W=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_winograd_matches_plain_twin(B, C, O, H, W, seed):
    """3x3, stride 1, padding 1 with >= 8 channels: the Winograd kernel, odd and even sizes."""
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((B, C, H, W)), rng.standard_normal((O, C, 3, 3)), rng.standard_normal(O)
    assert kernel_for(w.shape, (1, 1), (1, 1)) == "winograd"
    assert_same(run(x, w, b, 1, 1, "fast"), run(x, w, b, 1, 1, "plain"))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), O=st.integers(1, 4), extra=st.integers(1, 8), kernel=st.sampled_from([2, 3]),
       data=st.data(), seed=st.integers(0, 2**16))
def test_col2im_kernel_matches_plain_twin(B, O, extra, kernel, data, seed):
    """Fewer outputs than inputs, stride 1: y = col2im(x @ Wz), a transposed convolution."""
    padding = data.draw(st.integers(0, kernel - 1))
    H, W = data.draw(st.integers(kernel, kernel + 5)), data.draw(st.integers(kernel, kernel + 5))
    rng = np.random.default_rng(seed)
    C = O + extra
    x, w, b = rng.standard_normal((B, C, H, W)), rng.standard_normal((O, C, kernel, kernel)), rng.standard_normal(O)
    assert kernel_for(w.shape, (1, 1), (padding, padding)) == "col2im"
    assert_same(run(x, w, b, 1, padding, "fast"), run(x, w, b, 1, padding, "plain"))


def test_kernel_choice():
    assert kernel_for((8, 8, 1, 1), (1, 1), (0, 0)) == "pointwise"
    assert kernel_for((8, 8, 3, 3), (1, 1), (1, 1)) == "winograd"
    assert kernel_for((1, 32, 3, 3), (1, 1), (1, 1)) == "col2im"        # one output channel
    assert kernel_for((32, 1, 3, 3), (1, 1), (1, 1)) == "im2col"        # one input channel
    assert kernel_for((8, 8, 3, 3), (2, 2), (1, 1)) == "im2col"


def test_winograd_transforms_are_adjoint_pairs():
    """<T a, b> = <a, T* b> for the weight and phase maps (their backward is their adjoint)."""
    rng = np.random.default_rng(0)
    w, du = rng.standard_normal((5, 4, 3, 3)), rng.standard_normal((16, 4, 5))
    np.testing.assert_allclose(np.vdot(winograd.weight_transform(w), du),
                               np.vdot(w, winograd.weight_transform_adjoint(du)), rtol=1e-12)
    dw4 = rng.standard_normal((20, 4, 3, 3))
    np.testing.assert_allclose(np.vdot(phase_weight(w), dw4), np.vdot(w, phase_weight_adjoint(dw4)), rtol=1e-12)


@needs_fast_path
def test_float32_output_is_channels_last_with_same_values():
    """The fast path's output keeps [B, O, H, W] as its shape but has channels-last memory."""
    rng = np.random.default_rng(1)
    layer = Conv2d(16, 16, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == (2, 16, 6, 6)
    assert y.data.transpose(0, 2, 3, 1).flags.c_contiguous
    with td.plain():
        plain = layer(x)
    assert plain.data.flags.c_contiguous                   # the plain path: ordinary [B, O, H, W] memory
    np.testing.assert_allclose(y.data, plain.data, rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), C=st.integers(8, 12), O=st.integers(8, 12), H=st.integers(1, 5), W=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_phase_convolution_matches_upsample_then_conv(B, C, O, H, W, seed):
    """UpsampleConv on the fast path (four phase convolutions of the small image) against its
    plain forward: upsample_nearest followed by the plain im2col convolution."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W))
    layer = UpsampleConv(C, O, 3, padding=1, rng=rng, dtype=np.float64)
    assert kernel_for(layer.weight.shape, layer.stride, layer.padding) == "winograd"
    g = rng.standard_normal((B, O, 2 * H, 2 * W))
    assert_same(*(forward_backward(layer, x, g, path) for path in ("fast", "plain")))


@settings(max_examples=15, deadline=None)
@given(C=st.integers(1, 9), O=st.integers(1, 9), kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))
def test_upsample_conv_without_phases_matches_plain(C, O, kernel, stride, seed):
    """Layers the phase trick does not cover (few channels, 1x1, strided): the fast path upsamples
    and convolves, and must equal upsample_nearest + the plain convolution too."""
    rng = np.random.default_rng(seed)
    layer = UpsampleConv(C, O, kernel, stride=stride, padding=kernel // 2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, C, 3, 4))
    with td.plain():
        want = conv2d(upsample_nearest(Tensor(x), 2), layer.weight, layer.bias, stride, kernel // 2).data
    results = [forward_backward(layer, x, np.ones(want.shape), path) for path in ("fast", "plain")]
    for y, *_ in results:
        np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)
    assert_same(*results)


def forward_backward(layer, x, g, path):
    """(y, dx, dW, db) of ``layer`` on x with output gradient g, on the "fast" or the "plain" path."""
    layer.zero_grad()
    xt = Tensor(x, requires_grad=True)
    with td.plain() if path == "plain" else contextlib.nullcontext():
        y = layer(xt)
        y.backward(g)
    return y.data, xt.grad, layer.weight.grad, layer.bias.grad


def test_upsample_conv_is_a_conv2d_with_the_same_parameters():
    """Same constructor, same draws, same parameter names: a state dict moves between the two."""
    up, conv = (cls(4, 6, 3, padding=1, rng=np.random.default_rng(0)) for cls in (UpsampleConv, Conv2d))
    assert up.state_dict().keys() == conv.state_dict().keys()
    for name, value in up.state_dict().items():
        np.testing.assert_array_equal(value, conv.state_dict()[name])


def test_phase_blocks_cover_every_nonzero_winograd_weight():
    """The GEMMs of the phase convolution skip columns outside phase_blocks: they must be exactly 0."""
    O = 3
    U = winograd.weight_transform(phase_weight(np.random.default_rng(2).standard_normal((O, 4, 3, 3))))
    keep = np.zeros(U.shape, bool)
    for xi, ranges in enumerate(phase_blocks(O)):
        for lo, hi in ranges:
            keep[xi, :, lo:hi] = True
    assert np.all(U[~keep] == 0) and keep.sum() == 9 * 4 * O * 4     # 9 of 16 positions per phase
