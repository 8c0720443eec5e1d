"""Winograd F(2x2, 3x3): a 3x3, stride-1 convolution with 2.25x fewer multiplies.

What it computes: exactly the convolution of ``conv.py`` (the plain im2col twin that
tests/test_conv_fast.py holds it to in float64) for 3x3 kernels, stride 1, padding 1,
on channels-last activations x [B, H, W, C] -> y [B, H, W, O].

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
the activations. They are done in batch slices of ~2 MiB that stay in the processor's
cache from the transform to the GEMM and back, whole slices per core
(``tinydiff.parallel.parallel_slices``); the transformed input V is recomputed per slice
in backward rather than kept, so it never costs a training step 4x its activations.

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

import numpy as np

from ..parallel import batch_slices, parallel_for, parallel_slices

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])   # [4, 3]


def tiles(H: int, W: int) -> tuple:
    """Number of 2x2 output tiles along each axis: (ceil(H/2), ceil(W/2)).

    >>> td.nn.winograd.tiles(28, 7)                            # an odd size gets a cropped last tile
    (14, 4)
    """
    return (H + 1) // 2, (W + 1) // 2


def weight_transform(w: np.ndarray) -> np.ndarray:
    """U = G g G^T for every (out, in) pair: w [O, C, 3, 3] -> U [16, C, O] (xi = 4*row + col).

    For a kernel of ones, G g G^T is the outer product of G's row sums (1, 3/2, 1/2, 1):

    >>> U = td.nn.winograd.weight_transform(np.ones((1, 1, 3, 3)))
    >>> U.shape, U[:4, 0, 0].tolist()
    ((16, 1, 1), [1.0, 1.5, 0.5, 1.0])
    """
    O, C = w.shape[:2]
    # optimize=True contracts one factor at a time (BLAS products); without it einsum runs one
    # loop over every index combination, 4-10x slower: 2.4 vs 0.6 ms for the [256, 64] phase
    # weights, paid by every layer on every step (as is the adjoint below, 5.2 vs 0.4 ms).
    u = np.einsum("ip,ocpq,jq->ijco", G.astype(w.dtype), w, G.astype(w.dtype), optimize=True)
    return np.ascontiguousarray(u.reshape(16, C, O))


def weight_transform_adjoint(du: np.ndarray) -> np.ndarray:
    """dW = G^T dU G, the adjoint of ``weight_transform``: dU [16, C, O] -> dW [O, C, 3, 3].

    >>> rng = np.random.default_rng(0)
    >>> w, du = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal((16, 3, 2))
    >>> dw = td.nn.winograd.weight_transform_adjoint(du)
    >>> dw.shape, bool(np.isclose(np.vdot(td.nn.winograd.weight_transform(w), du), np.vdot(w, dw)))
    ((2, 3, 3, 3), True)
    """
    C, O = du.shape[1:]
    g = G.astype(du.dtype)
    return np.einsum("ip,ijco,jq->ocpq", g, du.reshape(4, 4, C, O), g, optimize=True)


# ---------------------------------------------------------------------- the four transforms
# Each works on a slice [lo, hi) of the batch, so parallel_for can give halves to two cores.
# One-dimensional forms, applied first along H and then along W (they are separable):
#   input     B^T d:  (d0 - d2,  d1 + d2,  d2 - d1,  d1 - d3)        4 values -> 4
#   output    A^T m:  (m0 + m1 + m2,  m1 - m2 - m3)                  4 values -> 2
#   adjoints  A dy:   (y0,  y0 + y1,  y0 - y1,  -y1)                 2 values -> 4
#             B v:    (v0,  v1 - v2 + v3,  -v0 + v1 + v2,  -v3)      4 values -> 4, tiles overlap by 2

def _input_1d(d, out):
    """out[k] = (B^T d)[k] for the four strided views d[0..3] (numpy ops, no Python loops over pixels)."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


# Memory layout. A tile's four columns 2j .. 2j+3 are strided by 2 in W, and NumPy's loops over
# such views move only C floats at a time. So the padded input is stored with its columns
# split by parity, [n, Hp, 2, Wh, C] (xs[:, R, p, j] = x_pad[:, R, 2j + p]): column 2j + s of
# tile j is then parity s % 2 at index j + s // 2, and every view below moves whole rows of
# Tw*C floats. Outputs are likewise made as [n, Th, 2, 2, Tw, O] and interleaved by one copy.

def _split_columns(x: np.ndarray, xs: np.ndarray) -> None:
    """xs [n, Hp, 2, Wh, C] = x [n, H, W, C] zero-padded by 1 (and up to the tile grid), columns split by parity."""
    H, W = x.shape[1:3]
    xs[...] = 0
    xs[:, 1:H + 1, 1, :(W + 1) // 2] = x[:, :, 0::2]          # x column w even -> padded 2j + 1, j = w/2
    xs[:, 1:H + 1, 0, 1:W // 2 + 1] = x[:, :, 1::2]           # x column w odd  -> padded 2j,     j = (w+1)/2


def _merge_columns(xs: np.ndarray, x: np.ndarray) -> None:
    """The adjoint's last step: x [n, H, W, C] = the interior of the column-split xs."""
    H, W = x.shape[1:3]
    x[:, :, 0::2] = xs[:, 1:H + 1, 1, :(W + 1) // 2]
    x[:, :, 1::2] = xs[:, 1:H + 1, 0, 1:W // 2 + 1]


def _tile_columns(t: np.ndarray) -> list:
    """Columns 2j + s (s = 0..3) of every tile j, from a column-split [n, Th, 2, Wh, C]: [n, Th, Tw, C] views."""
    Tw = t.shape[3] - 1
    return [t[:, :, 0, :Tw], t[:, :, 1, :Tw], t[:, :, 0, 1:], t[:, :, 1, 1:]]


def input_transform(x: np.ndarray, V: np.ndarray) -> None:
    """V = B^T d B over the overlapping 4x4 tiles of x zero-padded by 1 (and 1 more if odd).

    x: [B, H, W, C] channels-last -> V: [16, B, Th, Tw, C], written in place.

    A 2 x 2 image of ones is one tile, the ones in its centre; position xi = 5, row 1 of
    B^T times column 1 of B, is (d1 + d2)(d1 + d2): the sum of the central 2 x 2.

    >>> V = np.empty((16, 1, 1, 1, 1))
    >>> td.nn.winograd.input_transform(np.ones((1, 2, 2, 1)), V)
    >>> V[5].item(), V[:, 0, 0, 0, 0].reshape(4, 4).tolist()[1]
    (4.0, [-2.0, 4.0, 0.0, 2.0])
    """
    Bn, H, W, C = x.shape
    Th, Tw = tiles(H, W)

    def work(lo, hi):
        xs = np.empty((hi - lo, 2 * Th + 2, 2, Tw + 1, C), x.dtype)      # padded, columns split
        _split_columns(x[lo:hi], xs)
        t = np.empty((4, hi - lo, Th, 2, Tw + 1, C), x.dtype)           # after the H pass
        _input_1d([xs[:, r:r + 2 * Th:2] for r in range(4)], t)          # rows 2i + r of each tile
        for k in range(4):
            _input_1d(_tile_columns(t[k]), V[4 * k:4 * k + 4, lo:hi])

    parallel_for(work, Bn, work=V.size)


def output_transform(M: np.ndarray, y: np.ndarray, bias=None) -> None:
    """y = A^T M A (+ bias): M [16, B, Th, Tw, O] -> y [B, H, W, O], written in place (crops odd sizes).

    M is used as scratch. The bias is added to M[5] only: both rows of A^T have a 1 in
    column 1, so M[5] (= M[1, 1]) reaches every output pixel of the tile with weight 1.

    With M all ones, y = (A^T 1)(1^T A), the outer product of A^T's row sums (3, -1):

    >>> y = np.empty((1, 2, 2, 1))
    >>> td.nn.winograd.output_transform(np.ones((16, 1, 1, 1, 1)), y)
    >>> y[0, :, :, 0].tolist()
    [[9.0, -3.0], [-3.0, 1.0]]
    """
    Bn, H, W, O = y.shape
    Th, Tw = M.shape[2:4]

    def work(lo, hi):
        n = hi - lo
        if bias is not None:
            M[5, lo:hi] += bias
        s = np.empty((4, 2, n, Th, Tw, O), M.dtype)                      # after the W pass
        for k in range(4):
            m = M[4 * k:4 * k + 4, lo:hi]
            np.add(m[0], m[1], out=s[k, 0])
            s[k, 0] += m[2]
            np.subtract(m[1], m[2], out=s[k, 1])
            s[k, 1] -= m[3]
        z = np.empty((n, Th, 2, 2, Tw, O), M.dtype)                      # [n, i, a, b, j, O]
        for b in range(2):
            top, bottom = z[:, :, 0, b], z[:, :, 1, b]
            np.add(s[0, b], s[1, b], out=top)
            top += s[2, b]
            np.subtract(s[1, b], s[2, b], out=bottom)
            bottom -= s[3, b]
        interleaved = z.transpose(0, 1, 2, 4, 3, 5)                      # [n, i, a, j, b, O]
        if (H, W) == (2 * Th, 2 * Tw):
            np.copyto(y[lo:hi].reshape(n, Th, 2, Tw, 2, O), interleaved)
        else:
            y[lo:hi] = interleaved.reshape(n, 2 * Th, 2 * Tw, O)[:, :H, :W]

    parallel_for(work, Bn, work=M.size)


def output_transform_adjoint(dy: np.ndarray, dM: np.ndarray) -> None:
    """dM = A dY A^T per 2x2 output tile: dy [B, H, W, O] -> dM [16, B, Th, Tw, O] (in place).

    The adjoint of ``output_transform``: <output_transform(M), dy> = <M, dM>.

    >>> rng = np.random.default_rng(0)
    >>> M, dy = rng.standard_normal((16, 1, 2, 2, 3)), rng.standard_normal((1, 3, 4, 3))   # odd H: cropped
    >>> y, dM = np.empty_like(dy), np.empty_like(M)
    >>> td.nn.winograd.output_transform(M.copy(), y)           # (M is used as scratch)
    >>> td.nn.winograd.output_transform_adjoint(dy, dM)
    >>> bool(np.isclose(np.vdot(y, dy), np.vdot(M, dM)))
    True
    """
    Bn, H, W, O = dy.shape
    Th, Tw = dM.shape[2:4]

    def work(lo, hi):
        n = hi - lo
        g = dy[lo:hi]
        if (H, W) != (2 * Th, 2 * Tw):                                   # odd size: add a zero row/column
            g = np.zeros((n, 2 * Th, 2 * Tw, O), dy.dtype)
            g[:, :H, :W] = dy[lo:hi]
        gz = np.empty((n, Th, 2, 2, Tw, O), dy.dtype)                    # [n, i, a, b, j, O]: one copy
        np.copyto(gz, g.reshape(n, Th, 2, Tw, 2, O).transpose(0, 1, 2, 4, 3, 5))
        top, bottom = gz[:, :, 0], gz[:, :, 1]                           # [n, Th, 2(b), Tw, O]
        r = np.empty((2, n, Th, 2, Tw, O), dy.dtype)
        np.add(top, bottom, out=r[0])                                    # row 1 of A dy: y0 + y1
        np.subtract(top, bottom, out=r[1])                               # row 2: y0 - y1
        rows = (top, r[0], r[1], bottom)                                 # row 3 is -bottom: sign below
        for k in range(4):
            e, o = rows[k][:, :, 0], rows[k][:, :, 1]
            out = dM[4 * k:4 * k + 4, lo:hi]
            sign = -1.0 if k == 3 else 1.0
            np.multiply(e, sign, out=out[0])
            np.add(e, o, out=out[1])
            np.subtract(e, o, out=out[2])
            np.multiply(o, -sign, out=out[3])
            if k == 3:
                np.negative(out[1], out=out[1])
                np.negative(out[2], out=out[2])

    parallel_for(work, Bn, work=dM.size)


def _input_adjoint_1d(v, z_even, z_odd, tmp):
    """Scatter B v of overlapping tiles (stride 2, width 4) onto even/odd positions.

    v[0..3]: [..., T, ...] along the tiled axis (axis 2 of each view); z_even, z_odd:
    [..., T + 1, ...] views of positions 2j and 2j + 1. Tile j puts (B v)[0], (B v)[1]
    on 2j, 2j+1 and (B v)[2], (B v)[3] on 2j+2, 2j+3, i.e. on the next tile's slots.
    """
    T = v[0].shape[2]
    np.copyto(z_even[:, :, :T], v[0])
    z_even[:, :, T] = 0
    np.add(v[1], v[2], out=tmp)
    tmp -= v[0]                                                          # (B v)[2]
    z_even[:, :, 1:] += tmp
    np.subtract(v[1], v[2], out=z_odd[:, :, :T])
    z_odd[:, :, :T] += v[3]                                              # (B v)[1]
    z_odd[:, :, T] = 0
    z_odd[:, :, 1:] -= v[3]                                              # (B v)[3] = -v3


def input_transform_adjoint(dV: np.ndarray, dx: np.ndarray) -> None:
    """dx = sum over tiles of B dV B^T, cropped to the unpadded image: dV [16, B, Th, Tw, C] -> dx [B, H, W, C].

    The adjoint of ``input_transform``: <input_transform(x), dV> = <x, dx>.

    >>> rng = np.random.default_rng(0)
    >>> x, dV = rng.standard_normal((1, 3, 5, 2)), rng.standard_normal((16, 1, 2, 3, 2))
    >>> V, dx = np.empty_like(dV), np.empty_like(x)
    >>> td.nn.winograd.input_transform(x, V)
    >>> td.nn.winograd.input_transform_adjoint(dV, dx)
    >>> bool(np.isclose(np.vdot(V, dV), np.vdot(x, dx)))
    True
    """
    Bn, H, W, C = dx.shape
    Th, Tw = dV.shape[2:4]

    def work(lo, hi):
        n = hi - lo
        z = np.empty((4, n, Th, 2, Tw + 1, C), dV.dtype)                # after the W pass, columns split
        tmp = np.empty((n, Th, Tw, C), dV.dtype)
        for k in range(4):                                               # along W: tile axis 2 of [n, Th, Tw, C]
            _input_adjoint_1d(dV[4 * k:4 * k + 4, lo:hi], z[k][:, :, 0], z[k][:, :, 1], tmp)
        # along H: move the tile axis to position 2 by viewing [n, Th, 2, Wh, C] as [n, 1, Th, 2*Wh*C]
        zz = [z[k].reshape(n, 1, Th, -1) for k in range(4)]
        full = np.empty((n, 2 * Th + 2, 2, Tw + 1, C), dV.dtype)
        rows = full.reshape(n, 1, 2 * Th + 2, -1)
        _input_adjoint_1d(zz, rows[:, :, 0::2], rows[:, :, 1::2], np.empty_like(zz[0]))
        _merge_columns(full, dx[lo:hi])                                  # drop the padding

    parallel_for(work, Bn, work=dV.size)


# ---------------------------------------------------------------------- the convolution
CHUNK_BYTES = 2 << 20       # largest transformed block (V, dV or M) held at once: fits in L2


def batch_chunks(Bn: int, bytes_per_example: int) -> list:
    """Consecutive (lo, hi) slices of the batch whose transformed tiles fit in CHUNK_BYTES.

    The 16 transformed tiles are 4x the size of the image, so a whole batch of them would
    dominate the memory of a training step; in slices they stay small, are recomputed in
    backward instead of kept, and are read by the GEMM while still in the processor's
    cache. The transforms are bound by memory traffic: on this machine (1 MiB L2 per
    core) slices of 2 MiB make a 32-channel 28x28 convolution's forward + backward 30 ms
    single-threaded, against 43 ms with 24 MiB slices.

    >>> td.nn.winograd.batch_chunks(10, 3 << 19)               # 1.5 MiB per example: one at a time
    [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    >>> td.nn.winograd.batch_chunks(10, 1 << 19)               # 0.5 MiB: four per slice
    [(0, 4), (4, 8), (8, 10)]
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
    >>> y = td.nn.winograd.conv3x3_forward(x.transpose(0, 2, 3, 1), td.nn.winograd.weight_transform(w))
    >>> y.shape                                                # channels-last [B, H, W, O]
    (2, 5, 5, 4)
    >>> np.allclose(y.transpose(0, 3, 1, 2), td.nn.conv2d(x, w, padding=1, impl="im2col").data)
    True
    """
    Bn, H, W, C = x.shape
    O = U.shape[2]
    Th, Tw = tiles(H, W)
    y = np.empty((Bn, H, W, O), x.dtype)

    def run(lo, hi):
        V = np.empty((16, hi - lo, Th, Tw, C), x.dtype)
        input_transform(x[lo:hi], V)
        M = _products(V.reshape(16, -1, C), U, blocks)                    # [16, tiles, O]: the GEMMs
        output_transform(M.reshape(16, hi - lo, Th, Tw, O), y[lo:hi], bias)

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
    >>> dx, dw = td.nn.winograd.conv3x3_backward(nhwc(g), nhwc(x), td.nn.winograd.weight_transform(w))
    >>> xt, wt = td.Tensor(x, requires_grad=True), td.Tensor(w, requires_grad=True)
    >>> td.nn.conv2d(xt, wt, padding=1, impl="im2col").backward(g)
    >>> np.allclose(dx, nhwc(xt.grad)), np.allclose(dw, wt.grad)
    (True, True)
    """
    Bn, H, W, O = dy.shape
    C = U.shape[1]
    Th, Tw = tiles(H, W)
    dx = np.empty((Bn, H, W, C), dy.dtype) if need_dx else None
    slices = batch_chunks(Bn, 16 * Th * Tw * max(C, O) * dy.itemsize)
    partial_dU = {}                                                      # per slice, summed in order below

    def run(lo, hi):
        dM = np.empty((16, hi - lo, Th, Tw, O), dy.dtype)
        output_transform_adjoint(dy[lo:hi], dM)
        dM = dM.reshape(16, -1, O)
        if need_dw:
            V = np.empty((16, hi - lo, Th, Tw, C), dy.dtype)
            input_transform(x[lo:hi], V)
            Vt = V.reshape(16, -1, C).transpose(0, 2, 1)                  # [16, C, tiles]
            if blocks is None:
                partial_dU[lo] = np.matmul(Vt, dM)                        # [16, C, O]
            else:
                part = partial_dU[lo] = np.zeros((16, C, O), dy.dtype)
                for xi, ranges in enumerate(blocks):
                    for a, b in ranges:
                        np.matmul(Vt[xi], dM[xi, :, a:b], out=part[xi, :, a:b])
            del V, Vt
        if need_dx:
            if blocks is None:
                dV = np.matmul(dM, U.transpose(0, 2, 1))                  # [16, tiles, C]
            else:
                dV = np.zeros((16, dM.shape[1], C), dy.dtype)
                for xi, ranges in enumerate(blocks):
                    for a, b in ranges:
                        dV[xi] += dM[xi, :, a:b] @ U[xi, :, a:b].T
            input_transform_adjoint(dV.reshape(16, hi - lo, Th, Tw, C), dx[lo:hi])

    parallel_slices(run, slices)
    dU = None
    if need_dw:
        dU = np.zeros((16, C, O), dy.dtype)
        for lo, _ in slices:                                             # a fixed order: same sum on any thread count
            dU += partial_dU[lo]
    return dx, (None if dU is None else weight_transform_adjoint(dU))
