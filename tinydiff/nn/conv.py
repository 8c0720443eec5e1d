"""2-D convolution as one matrix product: im2col, a GEMM, and col2im for the backward pass.

A convolution takes, for every output pixel, the dot product of the kernel with the
kh x kw patch of the (zero-padded) input under it:

    y[b, o, i, j] = bias[o] + sum_{c, p, q} W[o, c, p, q] * x_pad[b, c, s*i + p, s*j + q]

**im2col** lays every patch out as one column of a matrix ``cols`` [C*kh*kw, B*Ho*Wo],
so the whole convolution is ONE matrix product  Y = W.reshape(O, C*kh*kw) @ cols.
The patches come from a strided *view* of the input (``sliding_window_view``: no data
moved), and copying that view into ``cols`` is the one copy we cannot avoid.

**col2im** is its adjoint: a patch element that came from input pixel (s*i+p, s*j+q)
sends its gradient back there. Patches overlap, so contributions must add up; for
each of the kh*kw kernel offsets (p, q) the gradients form a strided slice of the
input, and adding those kh*kw slices is vectorised over batch, channels and pixels.
(``np.add.at`` with a precomputed index per column entry gives the same result, but
needs an int64 index array twice the size of ``cols`` and was no faster in NumPy 2.)

Backward of Y = Wm @ cols:  dWm = dY @ cols^T,  dcols = Wm^T @ dY,  dx = col2im(dcols).

``conv2d`` is one op (``Tensor.from_op``) with that hand-written backward; the tests
tie it to a naive loop twin and to finite differences.

This file is the plain convolution, the one to read. Unless ``td.plain()`` is on,
``conv2d`` hands the same arguments to ``tinydiff.fast.conv2d`` in one line (channels-last
memory, Winograd for 3x3, dx as a transposed convolution; tinydiff/fast/conv.py), which
tests/test_conv_fast.py holds to this one in float64. ``UpsampleConv`` is nearest x2
upsampling followed by a convolution, the DDPM decoder's step up, whose fast path never
builds the upsampled image.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import fast
from ..engine import Tensor
from ..checks import check_dtype, check_positive_int, check_rng
from .helpers import to_tensor, uniform_parameter
from .layers import upsample_nearest
from .module import Module


def _pair(value, name: str, minimum: int) -> tuple:
    """An int or a pair of ints -> (height value, width value), each >= minimum."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: floor((size + 2*padding - kernel) / stride) + 1.

    >>> td.nn.conv_output_size(28, kernel=3, stride=2, padding=1)
    14
    """
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Patches of x [B, C, H, W] as columns: cols [C*kh*kw, B*Ho*Wo].

    cols[(c, p, q), (b, i, j)] = x_pad[b, c, s*i + p, s*j + q]; row order (c, p, q)
    matches ``W.reshape(O, C*kh*kw)`` for a PyTorch-layout weight W [O, C, kh, kw].

    >>> cols = td.nn.im2col(np.arange(16.0).reshape(1, 1, 4, 4), kernel_size=3)
    >>> cols.shape, cols[:, 0].tolist()                       # 9 values of the first 3 x 3 patch
    ((9, 4), [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0])
    """
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    B, C, H, W = x.shape
    Ho, Wo = conv_output_size(H, kh, sh, ph), conv_output_size(W, kw, sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))       # view [B, C, H'', W'', kh, kw]
    windows = windows[:, :, ::sh, ::sw]                           # view [B, C, Ho, Wo, kh, kw]
    # The one copy, into a (C, kh, kw, B, Ho, Wo) buffer. np.copyto lets NumPy choose a
    # cache-friendly loop order; a plain .reshape of this transposed view gives the same
    # array but measured ~4x slower at x [64, 64, 28, 28].
    cols = np.empty((C, kh, kw, B, Ho, Wo), dtype=x.dtype)
    np.copyto(cols, windows.transpose(1, 4, 5, 0, 2, 3))
    return cols.reshape(C * kh * kw, B * Ho * Wo)                 # a view of the buffer, no copy


def col2im(cols: np.ndarray, x_shape, kernel_size, stride=1, padding=0) -> np.ndarray:
    """Adjoint of ``im2col``: scatter-add columns [C*kh*kw, B*Ho*Wo] back to an image [B, C, H, W].

    dx_pad[b, c, s*i + p, s*j + q] += cols[(c, p, q), (b, i, j)], summed over every patch
    that covers the pixel. One vectorised strided-slice add per kernel offset (p, q).

    >>> ones = td.nn.col2im(np.ones((9, 4)), (1, 1, 4, 4), kernel_size=3)
    >>> ones[0, 0].tolist()                                   # how many patches cover each pixel
    [[1.0, 2.0, 2.0, 1.0], [2.0, 4.0, 4.0, 2.0], [2.0, 4.0, 4.0, 2.0], [1.0, 2.0, 2.0, 1.0]]
    """
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    B, C, H, W = x_shape
    Ho, Wo = conv_output_size(H, kh, sh, ph), conv_output_size(W, kw, sw, pw)
    cols = cols.reshape(C, kh, kw, B, Ho, Wo)
    dx = np.zeros((C, B, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)   # channels first, like cols
    for p in range(kh):
        for q in range(kw):
            dx[:, :, p:p + sh * (Ho - 1) + 1:sh, q:q + sw * (Wo - 1) + 1:sw] += cols[:, p, q]
    dx = dx[:, :, ph:ph + H, pw:pw + W]                           # drop the padding
    return np.ascontiguousarray(dx.transpose(1, 0, 2, 3))         # [B, C, H, W]


def conv2d(x, weight, bias=None, stride=1, padding=0) -> Tensor:
    """y = conv(x, W) + b as ONE GEMM:  Y [O, B*Ho*Wo] = W.reshape(O, C*kh*kw) @ im2col(x).

    x: [B, C, H, W], weight: [O, C, kh, kw], bias: [O] or None -> y: [B, O, Ho, Wo],
    Ho = floor((H + 2*padding - kh) / stride) + 1. Zero padding. One op whose backward
    is dW = dY @ cols^T, db = sum of dY, dx = col2im(W^T @ dY).

    >>> x = td.Tensor(np.ones((1, 1, 4, 4)))
    >>> w = td.Tensor(np.ones((2, 1, 3, 3)))
    >>> td.nn.conv2d(x, w, padding=1).data[0, 0].tolist()[0]   # a 3 x 3 box sum; 4 cells at the corner
    [4.0, 6.0, 6.0, 4.0]
    """
    x, weight = to_tensor(x), to_tensor(weight)
    bias = None if bias is None else to_tensor(bias)
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d expects x [B, C, H, W] and weight [O, C, kh, kw] with the same C, "
                         f"got x {x.shape} and weight {weight.shape}")
    if x.dtype != weight.dtype:
        raise TypeError(f"conv2d: x dtype {x.dtype} differs from weight dtype {weight.dtype}; cast one of them")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"conv2d: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    B, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    kernel, stride, padding = (kh, kw), _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    Ho, Wo = conv_output_size(H, kh, stride[0], padding[0]), conv_output_size(W, kw, stride[1], padding[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: kernel {kernel} does not fit input {(H, W)} with padding {padding}")
    if fast.enabled():
        return fast.conv2d(x, weight, bias, stride, padding)      # the same numbers, faster: tinydiff/fast/conv.py

    cols = im2col(x.data, kernel, stride, padding)                # [C*kh*kw, B*Ho*Wo]
    w_mat = weight.data.reshape(O, C * kh * kw)                   # [O, C*kh*kw]
    y = w_mat @ cols                                              # [O, B*Ho*Wo]  the one GEMM
    if bias is not None:
        y += bias.data[:, None]
    out = np.ascontiguousarray(y.reshape(O, B, Ho, Wo).transpose(1, 0, 2, 3))   # [B, O, Ho, Wo]

    def backward(g):                                              # g: [B, O, Ho, Wo]
        g_mat = g.transpose(1, 0, 2, 3).reshape(O, B * Ho * Wo)   # [O, B*Ho*Wo]
        dx = col2im(w_mat.T @ g_mat, x.shape, kernel, stride, padding) if x.requires_grad else None
        dw = (g_mat @ cols.T).reshape(weight.shape) if weight.requires_grad else None
        db = g_mat.sum(axis=1) if bias is not None and bias.requires_grad else None
        return dx, dw, db

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(out, parents, backward)


class Conv2d(Module):
    """Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True).

    x: [B, in, H, W] -> [B, out, Ho, Wo]. weight: (out, in, kh, kw), bias: (out,), both
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in*kh*kw, as PyTorch.
    ``kernel_size``, ``stride`` and ``padding`` are ints or (height, width) pairs.

    >>> conv = td.nn.Conv2d(1, 8, 3, padding=1, rng=np.random.default_rng(0))
    >>> conv.weight.shape, conv(np.zeros((2, 1, 28, 28), np.float32)).shape
    ((8, 1, 3, 3), (2, 8, 28, 28))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, rng=None, dtype=np.float32):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        rng, dtype = check_rng(rng, allow_none=True), check_dtype(dtype)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = uniform_parameter((out_channels, in_channels, *self.kernel_size), fan_in, rng, dtype)
        self.bias = uniform_parameter((out_channels,), fan_in, rng, dtype) if bias else None

    def check_input(self, x) -> Tensor:
        """x as a Tensor of the layer's dtype, [B, in_channels, H, W], or a ValueError naming its shape."""
        x = to_tensor(x, self.weight.dtype)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expected input [B, {self.in_channels}, H, W], got shape {x.shape}")
        return x

    def forward(self, x) -> Tensor:
        return conv2d(self.check_input(x), self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class UpsampleConv(Conv2d):
    """y = conv(upsample_nearest(x, 2)): nearest-neighbour upsampling by 2, then a Conv2d.

    x: [B, in, H, W] -> [B, out, Ho, Wo] (for a 3x3 kernel with padding 1: [B, out, 2H, 2W]).
    The DDPM UNet's decoder doubles its grid this way (Ho et al. 2020, Appendix B). Built and
    initialised exactly as ``Conv2d`` (same arguments, parameters ``weight`` and ``bias``), so
    a state dict moves between the two. The fast path, ``tinydiff.fast.upsample_conv2d``,
    runs a 3x3 convolution as four 2x2 convolutions of the small x and never builds the 4x
    larger upsampled image.

    >>> up = td.nn.UpsampleConv(4, 8, 3, padding=1, rng=np.random.default_rng(0))
    >>> up(np.zeros((2, 4, 7, 7), np.float32)).shape
    (2, 8, 14, 14)
    """

    def forward(self, x) -> Tensor:
        x = self.check_input(x)
        if fast.enabled():
            return fast.upsample_conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return conv2d(upsample_nearest(x, 2), self.weight, self.bias, self.stride, self.padding)
