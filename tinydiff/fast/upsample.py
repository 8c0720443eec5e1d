"""Nearest upsampling by 2, then a 3x3 convolution, as four phase convolutions of the small image.

What it computes: exactly the plain ``nn.conv2d(nn.upsample_nearest(x, 2), w, padding=1)``
(tinydiff.nn.UpsampleConv's forward), which hands off to ``upsample_conv2d`` here in one line
unless ``td.plain()`` is on; tests/test_conv_fast.py holds them together in float64.

Why it is faster: output row 2i + a reads upsampled rows 2i + a - 1, 2i + a, 2i + a + 1,
i.e. small rows (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1, so the kernel rows that
land on the same small row add up:

    a = 0: small row offsets (-1, 0) get kernel rows (0, 1 + 2);  a = 1: (0, +1) get (0 + 1, 2).

Written as ONE 3x3 convolution of the small image with 4*O output channels ([a, b, o]; each
phase's 2x2 kernel sits inside a 3x3 one, the rest zeros) it runs on the Winograd kernel
(``winograd.py``), then a pixel shuffle interleaves the phases. The 4x larger upsampled image
is never built, and the multiplies per small pixel and channel pair drop from 36 (upsample,
then 3x3) to 16 (four 2x2 kernels), and to 9 with Winograd's tiles once the GEMMs skip the
columns where the transformed phase kernels are exactly zero (``phase_blocks``).
"""
from __future__ import annotations

import numpy as np

from ..engine import Tensor
from . import winograd
from .conv import _bias_grad, as_nchw, channels_last, conv2d, kernel_for
from .parallel import parallel_for

PHASE_ROWS = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],      # R[a, u, p]: kernel row p -> small row offset u
                       [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], dtype=float)


def _kron_r(dtype) -> np.ndarray:
    """R (x) R: [(a, u, b, v), (p, q)] = R[a, u, p] R[b, v, q], a [36, 9] matrix."""
    R = PHASE_ROWS.astype(dtype)
    return np.einsum("aup,bvq->aubvpq", R, R).reshape(36, 9)


def phase_blocks(O: int) -> list:
    """Where the phase kernels' Winograd weights U[xi] can be nonzero: for tile position
    xi = 4i + j, the (lo, hi) ranges of the 4*O columns [a, b, o]. A phase with a = 0 has
    no kernel row at small offset +1, and G's last row reads only that row, so U[3, j] = 0;
    with a = 1 the offset -1 is missing and U[0, j] = 0 (G's first row); likewise for b, j.

    >>> blocks = td.fast.upsample.phase_blocks(1)               # O = 1: columns 0..3 are phases (a, b)
    >>> blocks[0], blocks[5]                                   # corner xi = 0: phase (0, 0) only; xi = 5: all
    ([(0, 1)], [(0, 2), (2, 4)])
    >>> sum(hi - lo for ranges in blocks for lo, hi in ranges)  # 36 of 64 columns: 9 of 16 per phase
    36
    """
    allowed = [(0,), (0, 1), (0, 1), (1,)]                  # phases a (or b) present at i (or j)
    return [[((2 * a + allowed[j][0]) * O, (2 * a + allowed[j][-1] + 1) * O) for a in allowed[i]]
            for i in range(4) for j in range(4)]


def phase_weight(w: np.ndarray) -> np.ndarray:
    """[O, C, 3, 3] -> the 3x3 kernels of the four phases, [4*O, C, 3, 3] in (a, b, o) order.

    Phase (0, 0) reads small rows (i - 1, i, i): kernel rows 1 and 2 land on the same row
    and add up, as do columns 1 and 2, leaving a 2 x 2 kernel in the corner:

    >>> w4 = td.fast.upsample.phase_weight(np.ones((1, 1, 3, 3)))
    >>> w4.shape, w4[0, 0].tolist()
    ((4, 1, 3, 3), [[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    """
    O, C = w.shape[:2]
    # one GEMM of the 9 taps with R (x) R [(a, u, b, v), (p, q)], then [a, b, o, c, u, v] order
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(9, O * C)
    w4 = (_kron_r(w.dtype) @ taps).reshape(2, 3, 2, 3, O, C)
    return np.ascontiguousarray(w4.transpose(0, 2, 4, 5, 1, 3)).reshape(4 * O, C, 3, 3)


def phase_weight_adjoint(dw4: np.ndarray) -> np.ndarray:
    """Adjoint of ``phase_weight``: [4*O, C, 3, 3] -> [O, C, 3, 3].

    The weight gradient of the phase convolution: <phase_weight(w), d> = <w, adjoint(d)>.

    >>> rng = np.random.default_rng(0)
    >>> w, d = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal((8, 3, 3, 3))
    >>> dw = td.fast.upsample.phase_weight_adjoint(d)
    >>> dw.shape, bool(np.isclose(np.vdot(td.fast.upsample.phase_weight(w), d), np.vdot(w, dw)))
    ((2, 3, 3, 3), True)
    """
    O4, C = dw4.shape[:2]
    d = np.ascontiguousarray(dw4.reshape(2, 2, O4 // 4, C, 3, 3).transpose(0, 4, 1, 5, 2, 3))   # [a, u, b, v, o, c]
    taps = _kron_r(dw4.dtype).T @ d.reshape(36, -1)                              # [(p, q), (o, c)]
    return np.ascontiguousarray(taps.reshape(3, 3, O4 // 4, C).transpose(2, 3, 0, 1))


def _shuffle(src: np.ndarray, dst: np.ndarray, to_phases: bool) -> None:
    """Copy between phases [B, H, W, (2, 2, O)] and the image [B, 2H, 2W, O] (threaded)."""
    Bn, H, W = src.shape[:3] if not to_phases else (src.shape[0], src.shape[1] // 2, src.shape[2] // 2)
    O = dst.shape[-1] if not to_phases else src.shape[-1]
    image = (src if to_phases else dst).reshape(Bn, H, 2, W, 2, O)
    phases = (dst if to_phases else src).reshape(Bn, H, W, 2, 2, O).transpose(0, 1, 3, 2, 4, 5)

    def work(lo, hi):
        if to_phases:
            phases[lo:hi] = image[lo:hi]
        else:
            image[lo:hi] = phases[lo:hi]

    parallel_for(work, Bn, work=src.size)


def upsample_conv2d(x: Tensor, weight: Tensor, bias, stride: tuple, padding: tuple) -> Tensor:
    """conv(upsample_nearest(x, 2), W) + b, the plain ``nn.conv2d(nn.upsample_nearest(x, 2), ...)``.
    x: [B, C, H, W] -> y: [B, O, Ho, Wo] with channels-last memory; for a 3x3 kernel, stride 1,
    padding 1: [B, O, 2H, 2W], computed as four phase convolutions of the small x (above).
    Other kernels upsample x and call ``conv2d``.

    >>> rng = np.random.default_rng(0)
    >>> x, w = td.Tensor(rng.standard_normal((1, 8, 3, 3))), td.Tensor(rng.standard_normal((8, 8, 3, 3)))
    >>> y = td.fast.upsample_conv2d(x, w, None, (1, 1), (1, 1))
    >>> with td.plain():
    ...     plain = td.nn.conv2d(td.nn.upsample_nearest(x, 2), w, padding=1)
    >>> y.shape, np.allclose(y.data, plain.data, rtol=1e-12, atol=1e-12)
    ((1, 8, 6, 6), True)
    """
    if kernel_for(weight.shape, stride, padding) != "winograd":     # phases need the 3x3 Winograd case
        B, C, H, W = x.shape
        block = np.zeros((1, 1, 1, 2, 1, 2), dtype=x.dtype)        # nearest x2, as nn.upsample_nearest
        up = (x.reshape(B, C, H, 1, W, 1) + block).reshape(B, C, 2 * H, 2 * W)
        return conv2d(up, weight, bias, stride, padding)
    O, C = weight.shape[:2]
    xd = channels_last(x.data)
    Bn, H, W, _ = xd.shape
    U = winograd.weight_transform(phase_weight(weight.data))           # [16, C, 4O]
    b4 = None if bias is None else np.tile(bias.data, 4)
    blocks = phase_blocks(O)
    y4 = winograd.conv3x3_forward(xd, U, b4, blocks)                  # [B, H, W, 4O]
    y = np.empty((Bn, 2 * H, 2 * W, O), xd.dtype)
    _shuffle(y4, y, to_phases=False)
    del y4

    def backward(g):
        gd = channels_last(g)                                          # [B, 2H, 2W, O]
        g4 = np.empty((Bn, H, W, 4 * O), gd.dtype)
        _shuffle(gd, g4, to_phases=True)
        dx, dw4 = winograd.conv3x3_backward(g4, xd, U, x.requires_grad, weight.requires_grad, blocks)
        dw = None if dw4 is None else phase_weight_adjoint(dw4)
        return (None if dx is None else as_nchw(dx), dw, _bias_grad(gd, bias))

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(as_nchw(y), parents, backward)
