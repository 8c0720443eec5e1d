"""Winograd F(2x2, 3x3): a 3x3, stride-1 convolution with 2.25x fewer multiplies.

What it computes: exactly the plain convolution ``tinydiff.nn.conv2d`` (im2col + one GEMM,
tinydiff/nn/conv.py; tests/test_conv_fast.py holds this kernel to it in float64) for 3x3
kernels, stride 1, padding 1, on channels-last activations x [B, H, W, C] -> y [B, H, W, O].
``conv.py`` in this package picks it for those layers.

Why it is fast. im2col spends 9 multiplies per input channel on each output pixel.
Winograd (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks")
computes a 2x2 block of outputs from the 4x4 input tile d under it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise over the 4x4 tile)

    B^T = [[1, 0,-1, 0],    G = [[ 1,   0,   0 ],    A^T = [[1, 1, 1, 0],
           [0, 1, 1, 0],         [1/2, 1/2, 1/2],           [0, 1,-1,-1]]
           [0,-1, 1, 0],         [1/2,-1/2, 1/2],
           [0, 1, 0,-1]]         [ 0,   0,   1 ]]

(in 1-D: two outputs of a 3-tap filter from 4 products instead of 6). Summed over input
channels, the 16 tile positions xi become 16 independent matrix products

    M[xi] = V[xi] @ U[xi]       V = B^T d B: [16, tiles, C],  U = G g G^T: [16, C, O]

that is 16 multiplies per 4 outputs per channel pair instead of 36. The transforms
B^T . B and A^T . A are only additions: a few NumPy passes over arrays 4x the size of
the activations, each over a few long contiguous blocks (the memory layout below). They
are done in batch slices of ~2 MiB that stay in the processor's cache from the transform
to the GEMM and back, whole slices per core (``parallel.parallel_slices``); the
transformed input V is recomputed per slice in backward rather than kept, so it never
costs a training step 4x its activations.

The backward pass stays in the Winograd domain. With dM = A dY A^T (the adjoint of the
output transform, computed once from dY):

    dU[xi] = V[xi]^T @ dM[xi]          -> dW = G^T dU G         (adjoint of the weight transform)
    dV[xi] = dM[xi] @ U[xi]^T          -> dx = B dV B^T, added over the overlapping tiles

Tiles start every 2 pixels and are 4 wide, so the input is padded by 1 on each side
(the convolution's own padding) plus one more row/column when H or W is odd; the extra
outputs that padding produces are cropped.

Accuracy: the transforms use only 1, 1/2 and additions, so F(2x2, 3x3)'s float32
rounding stays close to direct convolution's (the UNet matches PyTorch to ~1e-6,
tests/test_torch_parity.py); larger tiles such as F(4x4, 3x3) save more multiplies but
need constants like 4 and 5, and lose more precision.
"""
from __future__ import annotations

import threading

import numpy as np

from .parallel import batch_slices, parallel_slices

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])   # [4, 3]


def tiles(H: int, W: int) -> tuple:
    """Number of 2x2 output tiles along each axis: (ceil(H/2), ceil(W/2)).

    >>> td.fast.winograd.tiles(28, 7)                            # an odd size gets a cropped last tile
    (14, 4)
    """
    return (H + 1) // 2, (W + 1) // 2


_KRON = {}


def _kron_g(dtype) -> np.ndarray:
    """K [16, 9] with K[4i + j, 3p + q] = G[i, p] G[j, q]: G g G^T as one matrix acting on the 9
    kernel taps, so that a whole layer's weight transform is one small GEMM."""
    dtype = np.dtype(dtype)
    if dtype not in _KRON:
        g = G.astype(dtype)
        _KRON[dtype] = np.einsum("ip,jq->ijpq", g, g).reshape(16, 9)
    return _KRON[dtype]


def weight_transform(w: np.ndarray) -> np.ndarray:
    """U = G g G^T for every (out, in) pair: w [O, C, 3, 3] -> U [16, C, O] (xi = 4*row + col).

    For a kernel of ones, G g G^T is the outer product of G's row sums (1, 3/2, 1/2, 1):

    >>> U = td.fast.winograd.weight_transform(np.ones((1, 1, 3, 3)))
    >>> U.shape, U[:4, 0, 0].tolist()
    ((16, 1, 1), [1.0, 1.5, 0.5, 1.0])
    """
    O, C = w.shape[:2]
    # One GEMM of the 9 taps, [16, 9] @ [9, C*O], written straight into U's [16, C, O] layout
    # (every layer pays this on every step; an einsum with its path search took ~10x longer).
    taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(9, C * O)
    return (_kron_g(w.dtype) @ taps).reshape(16, C, O)


def weight_transform_adjoint(du: np.ndarray) -> np.ndarray:
    """dW = G^T dU G, the adjoint of ``weight_transform``: dU [16, C, O] -> dW [O, C, 3, 3].

    >>> rng = np.random.default_rng(0)
    >>> w, du = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal((16, 3, 2))
    >>> dw = td.fast.winograd.weight_transform_adjoint(du)
    >>> dw.shape, bool(np.isclose(np.vdot(td.fast.winograd.weight_transform(w), du), np.vdot(w, dw)))
    ((2, 3, 3, 3), True)
    """
    C, O = du.shape[1:]
    taps = _kron_g(du.dtype).T @ du.reshape(16, C * O)                 # [9, C*O]
    return np.ascontiguousarray(taps.reshape(3, 3, C, O).transpose(3, 2, 0, 1))


# ---------------------------------------------------------------------- the four transforms
# One-dimensional forms, applied along W (the tile's columns) and then along H (its rows):
#   input     B^T d:  (d0 - d2,  d1 + d2,  d2 - d1,  d1 - d3)        4 values -> 4
#   output    A^T m:  (m0 + m1 + m2,  m1 - m2 - m3)                  4 values -> 2
#   adjoints  A dy:   (y0,  y0 + y1,  y0 - y1,  -y1)                 2 values -> 4
#             B v:    (v0,  v1 - v2 + v3,  -v0 + v1 + v2,  -v3)      4 values -> 4, tiles overlap by 2
#
# Memory layout. Each NumPy operation is one loop over memory, fastest over long contiguous
# blocks: NumPy pays ~0.15 us for every row of a strided view, so a subtraction over 14 rows
# of 1344 floats took 3.7 us against 1.6 us for the same 18816 floats in one block. So the
# transforms use a layout in which every view they take is a few long blocks. For a slice
# of n images the zero-padded input is stored with its rows split by parity p, its columns
# by parity q, the tile column J outermost and the image innermost:
#
#     xs [2, Tw+1, 2, Th+1, n, C]        xs[q, J, p, I, b] = x_pad[b, 2I + p, 2J + q]
#
# Tile (i, j) reads padded row 2i + r and column 2j + s (r, s = 0..3), which is
# xs[s % 2, j + s // 2, r % 2, i + r // 2]. So column s of EVERY tile of every image is one
# contiguous block, xs[s % 2, s // 2 : s // 2 + Tw], and after that pass row r of every
# tile is t[:, :, r % 2, r // 2 : r // 2 + Th]: 4*Tw blocks of Th*n*C floats. Transformed
# arrays keep the order (tile column j, tile row i, image): V, M, dM [16, Tw, Th, n, C or O];
# the GEMMs do not care in which order the tiles come. Only the copy into xs and the one
# out of the output tiles move short runs (C floats at a time), once each. (Measured, one
# thread, the UNet's 16 Winograd convolutions forward and backward: 352 ms per training
# step with the previous layout, images outermost and rows of Tw*C floats; 313 ms with this.)

def _input_1d(d, out):
    """out[k] = (B^T d)[k] for the four views d[0..3]."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _output_1d(m, out):
    """out[0], out[1] = (A^T m)[0], (A^T m)[1] for the four views m[0..3]."""
    np.add(m[0], m[1], out=out[0])
    out[0] += m[2]
    np.subtract(m[1], m[2], out=out[1])
    out[1] -= m[3]


def _output_adjoint_1d(y0, y1, out):
    """out[0..3] = A (y0, y1) = (y0, y0 + y1, y0 - y1, -y1)."""
    np.copyto(out[0], y0)
    np.add(y0, y1, out=out[1])
    np.subtract(y0, y1, out=out[2])
    np.negative(y1, out=out[3])


def _input_adjoint_1d(v, even, odd, tmp):
    """Add B v of overlapping tiles (stride 2, width 4) onto even and odd positions.

    v[0..3]: [A, T, X], tile t along axis 1; even, odd: [A, T + 1, X], positions 2t and
    2t + 1. Tile t puts (B v)[0], (B v)[1] on 2t, 2t + 1 and (B v)[2], (B v)[3] on
    2t + 2, 2t + 3, i.e. on the next tile's slots.
    """
    T = v[0].shape[1]
    np.copyto(even[:, :T], v[0])
    even[:, T] = 0
    np.add(v[1], v[2], out=tmp)
    tmp -= v[0]                                                          # (B v)[2]
    even[:, 1:] += tmp
    np.subtract(v[1], v[2], out=odd[:, :T])
    odd[:, :T] += v[3]                                                   # (B v)[1]
    odd[:, T] = 0
    odd[:, 1:] -= v[3]                                                   # (B v)[3] = -v3


def _parity_blocks(H: int, W: int):
    """For each parity (p, q): the x rows and columns it holds and where they go in xs.

    Padded row 2I + p is x row 2I + p - 1: parity p holds x rows 1 - p, 3 - p, ... at
    I = 1 - p, 2 - p, ...; likewise columns.
    """
    for p in (0, 1):
        for q in (0, 1):
            rows, cols = slice(1 - p, (H - p) // 2 + 1), slice(1 - q, (W - q) // 2 + 1)
            yield p, q, rows, cols


def _split(x: np.ndarray, xs: np.ndarray) -> None:
    """xs [2, Tw+1, 2, Th+1, n, C] = x [n, H, W, C] zero-padded, in the layout above."""
    H, W = x.shape[1:3]
    xs[...] = 0
    for p, q, rows, cols in _parity_blocks(H, W):
        xs[q, cols, p, rows] = x[:, 1 - p::2, 1 - q::2].transpose(2, 1, 0, 3)


def _merge(xs: np.ndarray, x: np.ndarray) -> None:
    """The adjoint of ``_split``: x [n, H, W, C] = the interior of xs."""
    H, W = x.shape[1:3]
    for p, q, rows, cols in _parity_blocks(H, W):
        x[:, 1 - p::2, 1 - q::2] = xs[q, cols, p, rows].transpose(2, 1, 0, 3)


def input_transform(x: np.ndarray, V: np.ndarray) -> None:
    """V = B^T d B over the overlapping 4x4 tiles of x zero-padded by 1 (and 1 more if odd).

    x: [n, H, W, C] channels-last -> V: [16, Tw, Th, n, C] (tile column, tile row, image),
    written in place.

    A 2 x 2 image of ones is one tile, the ones in its centre; position xi = 5, row 1 of
    B^T times column 1 of B, is (d1 + d2)(d1 + d2): the sum of the central 2 x 2.

    >>> V = np.empty((16, 1, 1, 1, 1))
    >>> td.fast.winograd.input_transform(np.ones((1, 2, 2, 1)), V)
    >>> V[5].item(), V.reshape(4, 4).tolist()[1]
    (4.0, [-2.0, 4.0, 0.0, 2.0])
    """
    n, H, W, C = x.shape
    Th, Tw = tiles(H, W)
    xs = np.empty((2, Tw + 1, 2, Th + 1, n, C), x.dtype)
    _split(x, xs)
    t = np.empty((4, Tw, 2, Th + 1, n, C), x.dtype)                     # after the W pass
    _input_1d([xs[s % 2, s // 2:s // 2 + Tw] for s in range(4)], t)
    # the H pass, all four columns l at once: rows r of t [l, j, p, I, ...] -> V[4k + l]
    _input_1d([t[:, :, r % 2, r // 2:r // 2 + Th] for r in range(4)], V.reshape(4, 4, Tw, Th, n, C))


def input_transform_adjoint(dV: np.ndarray, dx: np.ndarray) -> None:
    """dx = sum over tiles of B dV B^T, cropped to the unpadded image: dV [16, Tw, Th, n, C] -> dx [n, H, W, C].

    The adjoint of ``input_transform``: <input_transform(x), dV> = <x, dx>.

    >>> rng = np.random.default_rng(0)
    >>> x, dV = rng.standard_normal((1, 3, 5, 2)), rng.standard_normal((16, 3, 2, 1, 2))
    >>> V, dx = np.empty_like(dV), np.empty_like(x)
    >>> td.fast.winograd.input_transform(x, V)
    >>> td.fast.winograd.input_transform_adjoint(dV, dx)
    >>> bool(np.isclose(np.vdot(V, dV), np.vdot(x, dx)))
    True
    """
    n, H, W, C = dx.shape
    Tw, Th = dV.shape[1:3]
    Vk = dV.reshape(4, 4 * Tw, Th, n * C)                               # [k, (l, j), i, ...]
    t = np.empty((4, Tw, 2, Th + 1, n * C), dV.dtype)                   # after the H pass: [l, j, p, I, ...]
    rows = t.reshape(4 * Tw, 2, Th + 1, n * C)
    _input_adjoint_1d(Vk, rows[:, 0], rows[:, 1], np.empty_like(Vk[0]))
    xs = np.empty((2, Tw + 1, 2, Th + 1, n, C), dV.dtype)
    cols = xs.reshape(2, 1, Tw + 1, -1)                                 # the W pass: tile column J on axis 1
    _input_adjoint_1d(t.reshape(4, 1, Tw, -1), cols[0], cols[1], np.empty_like(cols[0, :, :Tw]))
    _merge(xs, dx)                                                      # drop the padding


def output_transform(M: np.ndarray, y: np.ndarray, bias=None) -> None:
    """y = A^T M A (+ bias): M [16, Tw, Th, n, O] -> y [n, H, W, O], written in place (crops odd sizes).

    M is used as scratch. The bias is added to M[5] only: both rows of A^T have a 1 in
    column 1, so M[5] (= M[1, 1]) reaches every output pixel of the tile with weight 1.

    With M all ones, y = (A^T 1)(1^T A), the outer product of A^T's row sums (3, -1):

    >>> y = np.empty((1, 2, 2, 1))
    >>> td.fast.winograd.output_transform(np.ones((16, 1, 1, 1, 1)), y)
    >>> y[0, :, :, 0].tolist()
    [[9.0, -3.0], [-3.0, 1.0]]
    """
    n, H, W, O = y.shape
    Tw, Th = M.shape[1:3]
    if bias is not None:
        M[5] += bias
    Mkl = M.reshape(4, 4, -1)
    s = np.empty((2, 4, Mkl.shape[-1]), M.dtype)                        # the W pass, all k at once: [b, k, ...]
    _output_1d([Mkl[:, l] for l in range(4)], s)
    z = np.empty((2, 2, Tw, Th, n, O), M.dtype)                         # [a, b, j, i, n, O]
    _output_1d([s[:, k] for k in range(4)], z.reshape(2, 2, -1))        # the H pass, both b at once
    tiles_ab = z.transpose(4, 3, 0, 2, 1, 5)                            # [n, i, a, j, b, O]
    if (H, W) == (2 * Th, 2 * Tw):
        np.copyto(y.reshape(n, Th, 2, Tw, 2, O), tiles_ab)
    else:
        y[...] = tiles_ab.reshape(n, 2 * Th, 2 * Tw, O)[:, :H, :W]


def output_transform_adjoint(dy: np.ndarray, dM: np.ndarray) -> None:
    """dM = A dY A^T per 2x2 output tile: dy [n, H, W, O] -> dM [16, Tw, Th, n, O] (in place).

    The adjoint of ``output_transform``: <output_transform(M), dy> = <M, dM>.

    >>> rng = np.random.default_rng(0)
    >>> M, dy = rng.standard_normal((16, 2, 2, 1, 3)), rng.standard_normal((1, 3, 4, 3))   # odd H: cropped
    >>> y, dM = np.empty_like(dy), np.empty_like(M)
    >>> td.fast.winograd.output_transform(M.copy(), y)           # (M is used as scratch)
    >>> td.fast.winograd.output_transform_adjoint(dy, dM)
    >>> bool(np.isclose(np.vdot(y, dy), np.vdot(M, dM)))
    True
    """
    n, H, W, O = dy.shape
    Tw, Th = dM.shape[1:3]
    g = dy
    if (H, W) != (2 * Th, 2 * Tw):                                      # odd size: add a zero row/column
        g = np.zeros((n, 2 * Th, 2 * Tw, O), dy.dtype)
        g[:, :H, :W] = dy
    z = np.empty((2, 2, Tw, Th, n, O), dy.dtype)                        # [a, b, j, i, n, O]: one copy
    np.copyto(z, g.reshape(n, Th, 2, Tw, 2, O).transpose(2, 4, 3, 1, 0, 5))
    z = z.reshape(2, 2, -1)
    s = np.empty((4, 2, z.shape[-1]), dy.dtype)                         # the H pass, both b at once: [k, b, ...]
    _output_adjoint_1d(z[0], z[1], s)
    dMlk = dM.reshape(4, 4, -1).transpose(1, 0, 2)                     # [l, k, ...]: the W pass, all k at once
    _output_adjoint_1d(s[:, 0], s[:, 1], dMlk)


# ---------------------------------------------------------------------- the convolution
CHUNK_BYTES = 2 << 20       # largest transformed block (V, dV or M) held at once: one core's L2


def batch_chunks(Bn: int, bytes_per_example: int) -> list:
    """Consecutive (lo, hi) slices of the batch whose transformed tiles fit in CHUNK_BYTES.

    The 16 transformed tiles are 4x the size of the image, so a whole batch of them would
    dominate the memory of a training step; in slices they stay small, are recomputed in
    backward instead of kept, and are read by the GEMM while still in the processor's
    cache. The transforms are bound by memory traffic: slices of 2 MiB made a 32-channel
    28x28 convolution's forward + backward 30 ms single-threaded, against 43 ms with 24 MiB
    slices. On the 2-core machine of docs/speed.md (2 MiB of L2 per core), 1 MiB slices were
    2-3% faster while other processes shared the cores, but on the idle machine, two threads,
    they made the MNIST-UNET training step 7% slower (590 against 527-538 ms): 2 MiB it is.

    >>> td.fast.winograd.batch_chunks(10, 3 << 19)               # 1.5 MiB per example: one at a time
    [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    >>> td.fast.winograd.batch_chunks(10, 1 << 18)               # 0.25 MiB: eight per slice
    [(0, 8), (8, 10)]
    """
    return batch_slices(Bn, bytes_per_example, CHUNK_BYTES)


def _products(V, U, blocks):
    """M[xi] = V[xi] @ U[xi]: V [16, n, C], U [16, C, O] -> M [16, n, O].

    ``blocks[xi]``: the (lo, hi) column ranges where U[xi] can be nonzero (None: all of
    it). The phase convolutions' U is zero in 7 of its 16 tile positions per phase, and
    skipping those columns saves 44% of their multiplies.
    """
    if blocks is None:
        return np.matmul(V, U)
    M = np.zeros((16, V.shape[1], U.shape[2]), V.dtype)
    for xi, ranges in enumerate(blocks):
        for lo, hi in ranges:
            np.matmul(V[xi], U[xi, :, lo:hi], out=M[xi, :, lo:hi])
    return M


def conv3x3_forward(x: np.ndarray, U: np.ndarray, bias=None, blocks=None) -> np.ndarray:
    """y = conv(x, W) + b for 3x3, stride 1, padding 1, given U = weight_transform(W).

    x: [B, H, W, C] channels-last -> y [B, H, W, O]. Nothing is kept for backward but x.
    ``blocks``: where U is nonzero (see ``_products``), or None.

    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.standard_normal((2, 8, 5, 5)), rng.standard_normal((4, 8, 3, 3))   # NCHW, PyTorch layout
    >>> y = td.fast.winograd.conv3x3_forward(x.transpose(0, 2, 3, 1), td.fast.winograd.weight_transform(w))
    >>> y.shape                                                # channels-last [B, H, W, O]
    (2, 5, 5, 4)
    >>> with td.plain():
    ...     plain = td.nn.conv2d(x, w, padding=1)               # the plain twin: im2col + GEMM
    >>> np.allclose(y.transpose(0, 3, 1, 2), plain.data)
    True
    """
    Bn, H, W, C = x.shape
    O = U.shape[2]
    Th, Tw = tiles(H, W)
    y = np.empty((Bn, H, W, O), x.dtype)

    def run(lo, hi):
        V = np.empty((16, Tw, Th, hi - lo, C), x.dtype)
        input_transform(x[lo:hi], V)
        M = _products(V.reshape(16, -1, C), U, blocks)                    # [16, tiles, O]: the GEMMs
        output_transform(M.reshape(16, Tw, Th, hi - lo, O), y[lo:hi], bias)

    parallel_slices(run, batch_chunks(Bn, 16 * Th * Tw * max(C, O) * x.itemsize))
    return y


def conv3x3_backward(dy: np.ndarray, x: np.ndarray, U: np.ndarray, need_dx: bool = True, need_dw: bool = True,
                     blocks=None):
    """Gradients of ``conv3x3_forward`` from dy [B, H, W, O] and its input x [B, H, W, C]:
    (dx [B, H, W, C] or None, dW [O, C, 3, 3] or None). V = B^T x B is recomputed per slice.

    The gradients of sum(y * g), against those of the plain im2col twin:

    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.standard_normal((2, 8, 5, 5)), rng.standard_normal((4, 8, 3, 3))
    >>> g = rng.standard_normal((2, 4, 5, 5))                  # dL/dy
    >>> nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    >>> dx, dw = td.fast.winograd.conv3x3_backward(nhwc(g), nhwc(x), td.fast.winograd.weight_transform(w))
    >>> xt, wt = td.Tensor(x, requires_grad=True), td.Tensor(w, requires_grad=True)
    >>> with td.plain():
    ...     td.nn.conv2d(xt, wt, padding=1).backward(g)
    >>> np.allclose(dx, nhwc(xt.grad)), np.allclose(dw, wt.grad)
    (True, True)
    """
    Bn, H, W, O = dy.shape
    C = U.shape[1]
    Th, Tw = tiles(H, W)
    dx = np.empty((Bn, H, W, C), dy.dtype) if need_dx else None
    slices = batch_chunks(Bn, 16 * Th * Tw * max(C, O) * dy.itemsize)
    partial_dU = {}                                                      # per slice, until added in order
    dU = np.zeros((16, C, O), dy.dtype) if need_dw else None
    order = [lo for lo, _ in slices]
    summed = [0]                                                         # slices order[:summed[0]] are in dU
    lock = threading.Lock()

    def add_ready():
        """Add the finished partials to dU in slice order, as soon as all before them are in:
        the same sum, in the same order, on any thread count, with only a few partials alive."""
        with lock:
            while summed[0] < len(order) and order[summed[0]] in partial_dU:
                np.add(dU, partial_dU.pop(order[summed[0]]), out=dU)
                summed[0] += 1

    def run(lo, hi):
        dM = np.empty((16, Tw, Th, hi - lo, O), dy.dtype)
        output_transform_adjoint(dy[lo:hi], dM)
        dM = dM.reshape(16, -1, O)
        if need_dw:
            V = np.empty((16, Tw, Th, hi - lo, C), dy.dtype)
            input_transform(x[lo:hi], V)
            Vt = V.reshape(16, -1, C).transpose(0, 2, 1)                  # [16, C, tiles]
            if blocks is None:
                partial_dU[lo] = np.matmul(Vt, dM)                        # [16, C, O]
            else:
                part = np.zeros((16, C, O), dy.dtype)
                for xi, ranges in enumerate(blocks):
                    for a, b in ranges:
                        np.matmul(Vt[xi], dM[xi, :, a:b], out=part[xi, :, a:b])
                partial_dU[lo] = part                                     # complete: may be added now
            del V, Vt
            add_ready()
        if need_dx:
            if blocks is None:
                dV = np.matmul(dM, U.transpose(0, 2, 1))                  # [16, tiles, C]
            else:
                dV = np.zeros((16, dM.shape[1], C), dy.dtype)
                for xi, ranges in enumerate(blocks):
                    for a, b in ranges:
                        dV[xi] += dM[xi, :, a:b] @ U[xi, :, a:b].T
            input_transform_adjoint(dV.reshape(16, Tw, Th, hi - lo, C), dx[lo:hi])

    parallel_slices(run, slices)
    if need_dw:
        add_ready()
        if summed[0] != len(order):
            raise RuntimeError(f"winograd backward: {len(order) - summed[0]} slices' weight gradients are missing")
    return dx, (None if dU is None else weight_transform_adjoint(dU))
