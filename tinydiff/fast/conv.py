"""The fast convolution: channels-last activations, four kernels, dx as a convolution.

What it computes: exactly the plain convolution ``tinydiff.nn.conv2d`` (tinydiff/nn/conv.py:
im2col, one GEMM, col2im; read that first), which hands off to ``conv2d`` here in one line
unless ``td.plain()`` is on (``upsample.py``'s ``upsample_conv2d`` builds on it).
tests/test_conv_fast.py holds it to that plain twin in float64 on Hypothesis-drawn shapes.

Why it is faster, in the order it matters for a UNet on a CPU:

1. **Channels-last memory.** Activations keep PyTorch's logical shape [B, C, H, W], but
   their memory is laid out as [B, H, W, C] (``a.transpose(0, 3, 1, 2)`` of a contiguous
   NHWC buffer; PyTorch calls this ``torch.channels_last``). Then the C values under one
   pixel are contiguous: a 1x1 convolution is a plain GEMM with no copy at all, an im2col
   patch is kh*kw contiguous runs of C floats, and the GEMM writes the output directly
   in the same layout. NumPy's elementwise ops keep the layout of their inputs, so the
   GroupNorm, SiLU and residual adds between convolutions never reorder memory.
   Weights keep PyTorch's [O, C, kh, kw] layout, so state dicts are unchanged.
2. **Winograd for 3x3, stride 1, padding 1** (``winograd.py``): 2.25x fewer multiplies.
3. **dx as a transposed convolution.** For stride 1, dL/dx is the convolution of dL/dy,
   padded by k-1-p, with the kernel flipped and its in/out channels swapped. That is one
   im2col of dy and one GEMM, instead of a GEMM into a [N, C*kh*kw] dcols array (9x the
   size of x) followed by kh*kw strided scatter-adds (col2im). Stride > 1 keeps col2im.
4. **Batch slices, both cores.** Patches (9x the image for 3x3) are made, multiplied and
   dropped slice by slice (~2 MiB each, ``winograd.batch_chunks``), remade in backward
   rather than kept, and whole slices go to the cores (``parallel.py``).
5. **Upsample x2 + 3x3 conv as phase convolutions** (``upsample_conv2d`` in ``upsample.py``).

The four kernels:  1x1 stride 1 -> ``pointwise`` (GEMM);  3x3 stride 1 padding 1 with at
least ``WINOGRAD_MIN_CHANNELS`` in and out -> ``winograd``;  other stride-1 layers with fewer
outputs than inputs (the UNet's 32 -> 1 output conv) -> ``col2im``, each input pixel's
products added into the outputs around it;  anything else -> channels-last ``im2col`` (+ GEMM).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..engine import Tensor
from . import winograd
from .parallel import column_sums, parallel_for, parallel_slices

WINOGRAD_MIN_CHANNELS = 8       # below this the transforms' short inner loops cost more than they save


def channels_last(a: np.ndarray) -> np.ndarray:
    """[B, C, H, W] (any memory layout) -> a C-contiguous [B, H, W, C] array; free if ``a``
    already has channels-last memory, else one copy split over the threads.

    >>> x = np.arange(24.0).reshape(1, 2, 3, 4)                # [B, C, H, W]: channel 1 starts at 12
    >>> xl = td.fast.conv.channels_last(x)
    >>> xl.shape, xl[0, 0, 0].tolist()                         # pixel (0, 0)'s two channels, now adjacent
    ((1, 3, 4, 2), [0.0, 12.0])
    >>> np.shares_memory(td.fast.conv.channels_last(td.fast.conv.as_nchw(xl)), xl)   # no copy
    True
    """
    t = a.transpose(0, 2, 3, 1)
    if t.flags.c_contiguous:
        return t
    out = np.empty(t.shape, a.dtype)

    def work(lo, hi):
        out[lo:hi] = t[lo:hi]

    parallel_for(work, a.shape[0], work=a.size)
    return out


def as_nchw(y: np.ndarray) -> np.ndarray:
    """A channels-last buffer [B, H, W, C] seen with PyTorch's logical shape [B, C, H, W] (a view).

    >>> y = np.zeros((2, 5, 5, 8), np.float32)                 # what the GEMMs write: [B, H, W, C]
    >>> v = td.fast.conv.as_nchw(y)
    >>> v.shape, np.shares_memory(v, y), v.strides[1]          # the channel stride is one float
    ((2, 8, 5, 5), True, 4)
    """
    return y.transpose(0, 3, 1, 2)


def pad_hw(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Zero-pad the H and W axes of channels-last x [B, H, W, C] (one copy, threaded).

    >>> x = np.ones((1, 2, 2, 1))
    >>> td.fast.conv.pad_hw(x, 1, 0, 0, 1)[0, :, :, 0].tolist()    # one row on top, one column right
    [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    """
    if not (top or bottom or left or right):
        return x
    Bn, H, W, C = x.shape
    out = np.empty((Bn, H + top + bottom, W + left + right, C), x.dtype)

    def work(lo, hi):
        o = out[lo:hi]
        o[:, :top] = 0
        o[:, H + top:] = 0
        o[:, top:H + top, :left] = 0
        o[:, top:H + top, W + left:] = 0
        o[:, top:H + top, left:W + left] = x[lo:hi]

    parallel_for(work, Bn, work=out.size)
    return out


def im2col_nhwc(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Channels-last patches: x [B, H, W, C] -> cols [B*Ho*Wo, kh*kw*C], row (b, i, j),
    column (p, q, c) = x_pad[b, s*i + p, s*j + q, c]. Each (p, q) is a run of C contiguous floats.

    The transpose of ``conv.im2col``'s matrix (rows are output pixels here, not patch entries):

    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)                # one channel: [B, H, W, C]
    >>> cols = td.fast.conv.im2col_nhwc(x, (3, 3), (1, 1), (0, 0))
    >>> cols.shape, cols[0].tolist()                           # the first 3 x 3 patch
    ((4, 9), [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0])
    >>> np.array_equal(cols.T, td.nn.im2col(x.transpose(0, 3, 1, 2), 3))
    True
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = pad_hw(x, ph, ph, pw, pw)
    Bn, Hp, Wp, C = xp.shape
    Ho, Wo = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    windows = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]   # view [B, Ho, Wo, C, kh, kw]
    windows = windows[:, :Ho, :Wo].transpose(0, 1, 2, 4, 5, 3)                  # view [B, Ho, Wo, kh, kw, C]
    cols = np.empty((Bn, Ho, Wo, kh, kw, C), x.dtype)

    def work(lo, hi):
        np.copyto(cols[lo:hi], windows[lo:hi])

    parallel_for(work, Bn, work=cols.size)
    return cols.reshape(Bn * Ho * Wo, kh * kw * C)


def col2im_nhwc(dcols: np.ndarray, x_shape, kernel, stride, padding) -> np.ndarray:
    """Adjoint of ``im2col_nhwc``: dcols [B*Ho*Wo, kh*kw*C] -> dx [B, H, W, C], adding the
    overlapping patches with one strided add per kernel offset (p, q).

    >>> counts = td.fast.conv.col2im_nhwc(np.ones((4, 9)), (1, 4, 4, 1), (3, 3), (1, 1), (0, 0))
    >>> counts[0, :, :, 0].tolist()                            # how many patches cover each pixel
    [[1.0, 2.0, 2.0, 1.0], [2.0, 4.0, 4.0, 2.0], [2.0, 4.0, 4.0, 2.0], [1.0, 2.0, 2.0, 1.0]]
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Bn, H, W, C = x_shape
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    d = dcols.reshape(Bn, Ho, Wo, kh, kw, C)
    dxp = np.zeros((Bn, H + 2 * ph, W + 2 * pw, C), dcols.dtype)

    def work(lo, hi):
        for p in range(kh):
            for q in range(kw):
                dxp[lo:hi, p:p + sh * (Ho - 1) + 1:sh, q:q + sw * (Wo - 1) + 1:sw] += d[lo:hi, :, :, p, q]

    parallel_for(work, Bn, work=dcols.size)
    return np.ascontiguousarray(dxp[:, ph:ph + H, pw:pw + W])


def _gemm_weight(w: np.ndarray) -> np.ndarray:
    """[O, C, kh, kw] -> [kh*kw*C, O], rows in im2col_nhwc's (p, q, c) order."""
    O, C, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * C, O))


def kernel_for(weight_shape, stride, padding) -> str:
    """Which kernel ``conv2d`` uses: "pointwise", "winograd", "col2im" or "im2col".

    >>> kernel_for = td.fast.conv.kernel_for                   # weight [O, C, kh, kw], stride, padding
    >>> kernel_for((64, 32, 1, 1), (1, 1), (0, 0)), kernel_for((64, 32, 3, 3), (1, 1), (1, 1))
    ('pointwise', 'winograd')
    >>> kernel_for((1, 32, 3, 3), (1, 1), (1, 1)), kernel_for((64, 64, 3, 3), (2, 2), (1, 1))   # few outputs; strided
    ('col2im', 'im2col')
    """
    O, C, kh, kw = weight_shape
    if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0):
        return "pointwise"
    if ((kh, kw) == (3, 3) and stride == (1, 1) and padding == (1, 1)
            and min(C, O) >= WINOGRAD_MIN_CHANNELS):
        return "winograd"
    if stride == (1, 1) and O < C and padding[0] < kh and padding[1] < kw:
        return "col2im"
    return "im2col"


def conv2d(x: Tensor, weight: Tensor, bias, stride: tuple, padding: tuple) -> Tensor:
    """The same y = conv(x, W) + b as the plain ``tinydiff.nn.conv2d``, which checks the
    arguments and passes stride and padding as (height, width) pairs.
    x: [B, C, H, W], weight: [O, C, kh, kw], bias: [O] Tensor or None -> y: [B, O, Ho, Wo]
    with channels-last memory.

    >>> rng = np.random.default_rng(0)
    >>> x, w = td.Tensor(rng.standard_normal((2, 8, 5, 5))), td.Tensor(rng.standard_normal((8, 8, 3, 3)))
    >>> fast = td.fast.conv2d(x, w, None, (1, 1), (1, 1))                  # the Winograd kernel
    >>> with td.plain():
    ...     plain = td.nn.conv2d(x, w, padding=1)                          # its plain twin: im2col + GEMM
    >>> fast.shape, np.allclose(fast.data, plain.data, rtol=1e-12, atol=1e-12)
    ((2, 8, 5, 5), True)
    """
    O, C, kh, kw = weight.shape
    kernel = kernel_for(weight.shape, stride, padding)
    xd = channels_last(x.data)                                   # [B, H, W, C]
    Bn, H, W, _ = xd.shape
    b = None if bias is None else bias.data
    need_dx = x.requires_grad

    if kernel == "winograd":
        U = winograd.weight_transform(weight.data)                # [16, C, O]
        y = winograd.conv3x3_forward(xd, U, b)

        def backward(g):
            gd = channels_last(g)                                 # [B, H, W, O]
            dx, dw = winograd.conv3x3_backward(gd, xd, U, need_dx, weight.requires_grad)
            return (None if dx is None else as_nchw(dx), dw, _bias_grad(gd, bias))

    elif kernel == "col2im":
        # Fewer outputs than inputs (the UNet's last conv, 32 -> 1 channels): rather than
        # patches of x (kh*kw*C values per pixel), make each input pixel's products with the
        # kernel, Z = x @ Wz (kh*kw*O values per pixel), and add them into the outputs around
        # the pixel: y = col2im(Z), i.e. a transposed convolution with the flipped kernel
        # (padding k-1-p). Backward is its adjoint: dZ = im2col(dy), dx = dZ Wz^T, dWz = x^T dZ.
        Wz = _gemm_weight(weight.data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).T      # [C, kh*kw*O]
        Ho, Wo = H + 2 * padding[0] - kh + 1, W + 2 * padding[1] - kw + 1
        flipped = (kh - 1 - padding[0], kw - 1 - padding[1])
        y = np.empty((Bn, Ho, Wo, O), xd.dtype)
        slices = winograd.batch_chunks(Bn, H * W * kh * kw * O * xd.itemsize)

        def run(lo, hi):
            Z = xd[lo:hi].reshape(-1, C) @ Wz                                        # [b*H*W, kh*kw*O]
            y[lo:hi] = col2im_nhwc(Z, (hi - lo, Ho, Wo, O), (kh, kw), (1, 1), flipped)
            if b is not None:
                y[lo:hi] += b

        parallel_slices(run, slices)

        def backward(g):
            gd = channels_last(g)                                 # [B, Ho, Wo, O]
            dx = np.empty((Bn, H, W, C), gd.dtype) if need_dx else None
            partial = {}

            def run_back(lo, hi):
                dZ = im2col_nhwc(gd[lo:hi], (kh, kw), (1, 1), flipped)                # [b*H*W, kh*kw*O]
                if need_dx:
                    np.matmul(dZ, Wz.T, out=dx[lo:hi].reshape(-1, C))
                if weight.requires_grad:
                    partial[lo] = xd[lo:hi].reshape(-1, C).T @ dZ                      # [C, kh*kw*O]

            parallel_slices(run_back, slices)
            dw = None
            if weight.requires_grad:
                dWz = np.zeros((C, kh * kw * O), gd.dtype)
                for lo, _ in slices:                              # a fixed order: same sum on any thread count
                    dWz += partial[lo]
                dw = dWz.reshape(C, kh, kw, O)[:, ::-1, ::-1].transpose(3, 0, 1, 2)   # unflip: [O, C, kh, kw]
            return (None if dx is None else as_nchw(dx), dw, _bias_grad(gd, bias))

    else:
        w_mat = _gemm_weight(weight.data)                         # [kh*kw*C, O]
        Ho, Wo = (H + 2 * padding[0] - kh) // stride[0] + 1, (W + 2 * padding[1] - kw) // stride[1] + 1
        y = np.empty((Bn, Ho, Wo, O), xd.dtype)
        # Patches are 9x the image for 3x3: made in batch slices, never kept (backward remakes them).
        slices = winograd.batch_chunks(Bn, Ho * Wo * kh * kw * C * xd.itemsize)

        def run(lo, hi):
            out = y[lo:hi].reshape(-1, O)
            np.matmul(_patches(xd[lo:hi], kernel, (kh, kw), stride, padding), w_mat, out=out)   # the GEMM
            if b is not None:
                out += b

        parallel_slices(run, slices)

        def backward(g):
            gd = channels_last(g)                                 # [B, Ho, Wo, O]
            dw = None
            if weight.requires_grad:
                partial = {}

                def run_dw(lo, hi):
                    partial[lo] = gd[lo:hi].reshape(-1, O).T @ _patches(xd[lo:hi], kernel, (kh, kw), stride, padding)

                parallel_slices(run_dw, slices)
                dw = np.zeros((O, kh * kw * C), gd.dtype)
                for lo, _ in slices:                              # a fixed order: same sum on any thread count
                    dw += partial[lo]
                dw = dw.reshape(O, kh, kw, C).transpose(0, 3, 1, 2)
            dx = _input_grad(gd, weight.data, w_mat, (Bn, H, W, C), kernel, stride, padding) if need_dx else None
            return (None if dx is None else as_nchw(dx), dw, _bias_grad(gd, bias))

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(as_nchw(y), parents, backward)


def _patches(x, kernel, size, stride, padding):
    """The GEMM operand [B*Ho*Wo, kh*kw*C]: x itself for a 1x1 kernel, else its patches."""
    return x.reshape(-1, x.shape[-1]) if kernel == "pointwise" else im2col_nhwc(x, size, stride, padding)


def _bias_grad(gd, bias):
    if bias is None or not bias.requires_grad:
        return None
    return column_sums(gd.reshape(-1, gd.shape[-1]))         # threaded BLAS sums over the pixels


def _input_grad(gd, w, w_mat, x_shape, kernel, stride, padding):
    """dL/dx [B, H, W, C] from gd = dL/dy [B, Ho, Wo, O], in batch slices (``parallel_slices``)."""
    O, C, kh, kw = w.shape
    (ph, pw) = padding
    dx = np.empty(x_shape, gd.dtype)
    transposed = stride == (1, 1) and ph <= kh - 1 and pw <= kw - 1
    if transposed:
        # Transposed convolution: x_pad[i + p] fed y[i] through w[p], so dx[i'] collects
        # dy[i' - p] w[p] over p: a convolution of dy padded by k-1-p with the kernel
        # flipped (p -> k-1-p) and its channel axes swapped ([C, O, kh, kw]).
        w_flipped = _gemm_weight(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    per_example = gd[0].size * (1 if kernel == "pointwise" else kh * kw) * gd.itemsize

    def run(lo, hi):
        g = gd[lo:hi]
        if kernel == "pointwise":
            np.matmul(g.reshape(-1, O), w_mat.T, out=dx[lo:hi].reshape(-1, C))
        elif transposed:
            cols = im2col_nhwc(g, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw))
            np.matmul(cols, w_flipped, out=dx[lo:hi].reshape(-1, C))
        else:
            dcols = g.reshape(-1, O) @ w_mat.T                    # [b*Ho*Wo, kh*kw*C]
            dx[lo:hi] = col2im_nhwc(dcols, (hi - lo,) + tuple(x_shape[1:]), (kh, kw), stride, padding)

    parallel_slices(run, winograd.batch_chunks(x_shape[0], per_example))
    return dx
