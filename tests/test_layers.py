"""Layers against finite differences (float64, shapes and values drawn by Hypothesis),
naive loop twins and closed-form properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tinydiff as td
from tinydiff import Tensor
from tinydiff.gradcheck import assert_grad_close
from tinydiff.nn import Dropout, Embedding, GroupNorm, Linear, SiLU, Upsample, silu, timestep_embedding

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")

FAST = settings(max_examples=15, deadline=None)
values = st.floats(-2, 2, allow_nan=False, width=64)


def arrays(shape, elements=values):
    return hnp.arrays(np.float64, shape, elements=elements)


def with_params(module, names):
    """f(x, *tensors) that runs ``module`` with the named parameters replaced by the given
    tensors, so assert_grad_close can differentiate with respect to them too."""
    def f(x, *tensors):
        for name, t in zip(names, tensors):
            owner = module
            *path, attr = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, attr, t)
        return module(x)
    return f


def params(module, names):
    sd = module.state_dict()
    return [sd[n] for n in names]


# ---------------------------------------------------------------- Linear
@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.data())
def test_linear_gradients(batch, n_in, n_out, extra_axis, data):
    lin = Linear(n_in, n_out, rng=np.random.default_rng(0), dtype=np.float64)
    shape = (batch, 2, n_in) if extra_axis else (batch, n_in)
    x = data.draw(arrays(shape))
    assert_grad_close(with_params(lin, ["weight", "bias"]), [x] + params(lin, ["weight", "bias"]))


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.data())
def test_tensor_reused_in_two_branches(batch, n, data):
    """x feeds two branches and the same Linear is applied twice: gradients must add up."""
    lin = Linear(n, n, rng=np.random.default_rng(1), dtype=np.float64)
    f = with_params(lin, ["weight", "bias"])

    def two_branches(x, w, b):
        h = f(x, w, b)
        return f(h, w, b) * SiLU()(x) + x
    assert_grad_close(two_branches, [data.draw(arrays((batch, n)))] + params(lin, ["weight", "bias"]))


def test_linear_values_dtype_and_init():
    lin = Linear(256, 128, rng=np.random.default_rng(0))
    bound = 1 / math.sqrt(256)
    assert lin.weight.shape == (128, 256) and lin.bias.shape == (128,)
    for p in (lin.weight.data, lin.bias.data):                  # U(-1/sqrt(in), 1/sqrt(in))
        assert p.dtype == np.float32 and np.abs(p).max() <= bound
    assert abs(lin.weight.data.std() - bound / math.sqrt(3)) < 0.02 * bound
    x = np.random.default_rng(1).standard_normal((5, 7, 256))   # float64 input: cast at the door
    y = lin(x)
    assert y.shape == (5, 7, 128) and y.dtype == np.float32
    np.testing.assert_allclose(y.data, x @ lin.weight.data.T.astype(np.float64) + lin.bias.data, atol=1e-4)
    with pytest.raises(ValueError, match="256"):
        lin(np.ones((2, 3)))
    assert Linear(3, 2, bias=False).bias is None and len(Linear(3, 2, bias=False).parameters()) == 1


# ---------------------------------------------------------------- Embedding
@FAST
@given(st.integers(1, 5), st.integers(1, 3), hnp.arrays(np.int64, st.integers(1, 6), elements=st.integers(0, 4)))
def test_embedding_values_and_gradients(n, dim, labels):
    labels = labels % n                                         # repeated labels must accumulate
    emb = Embedding(n, dim, rng=np.random.default_rng(0), dtype=np.float64)
    np.testing.assert_array_equal(emb(labels).data, emb.weight.data[labels])
    assert_grad_close(lambda w: with_params(emb, ["weight"])(labels, w), [emb.weight.data.copy()])


def test_embedding_init_and_errors():
    w = Embedding(1000, 64, rng=np.random.default_rng(0)).weight.data
    assert w.dtype == np.float32 and abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02   # N(0, 1)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        Embedding(10, 2)(np.array([3, 10]))
    with pytest.raises(TypeError, match="integer"):
        Embedding(10, 2)(np.array([1.0]))


# ---------------------------------------------------------------- GroupNorm
@st.composite
def groupnorm_case(draw):
    groups = draw(st.integers(1, 3))
    channels = groups * draw(st.integers(1, 2))
    spatial = draw(st.sampled_from([(), (3,), (2, 2)]))
    x = draw(arrays((draw(st.integers(1, 2)), channels, *spatial)))
    return groups, channels, x + np.arange(x.size).reshape(x.shape) % 3   # avoid constant groups


@FAST
@given(groupnorm_case())
def test_groupnorm_gradients(case):
    groups, channels, x = case
    gn = GroupNorm(groups, channels, dtype=np.float64)
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal(channels), rng.standard_normal(channels)
    assert_grad_close(with_params(gn, ["weight", "bias"]), [x, w, b], atol=1e-5)


@FAST
@given(groupnorm_case())
def test_groupnorm_normalises_each_group(case):
    groups, channels, x = case
    x = 3.0 * x - 1.0
    y = GroupNorm(groups, channels, dtype=np.float64)(x).data.reshape(x.shape[0], groups, -1)
    xg = x.reshape(x.shape[0], groups, -1)
    var = xg.var(axis=-1)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-10)                  # zero mean per group
    np.testing.assert_allclose(y.var(axis=-1), var / (var + 1e-5), rtol=1e-8)  # unit variance up to eps


def test_groupnorm_matches_a_loop_and_applies_affine_per_channel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 3, 4))
    gn = GroupNorm(3, 6, dtype=np.float64)
    gn.weight.data[...] = rng.standard_normal(6)
    gn.bias.data[...] = rng.standard_normal(6)
    want = np.empty_like(x)
    for b in range(2):
        for g in range(3):
            chunk = x[b, 2 * g:2 * g + 2]
            want[b, 2 * g:2 * g + 2] = (chunk - chunk.mean()) / np.sqrt(chunk.var() + 1e-5)
    want = want * gn.weight.data[:, None, None] + gn.bias.data[:, None, None]
    np.testing.assert_allclose(gn(x).data, want, rtol=1e-12, atol=1e-12)
    assert GroupNorm(3, 6)(x).dtype == np.float32
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"\[B, 6"):
        gn(np.ones((2, 5, 3)))


# ---------------------------------------------------------------- SiLU, Upsample
@FAST
@given(arrays(hnp.array_shapes(max_dims=3, max_side=4)))
def test_silu_values_and_gradients(x):
    np.testing.assert_allclose(SiLU()(x).data, x / (1 + np.exp(-x)), rtol=1e-12)
    assert_grad_close(SiLU(), [x])


@FAST
@given(arrays(hnp.array_shapes(max_dims=3, max_side=4), st.floats(-30, 30)))
def test_fast_silu_matches_plain_twin(a):
    """tinydiff.fast.silu (one node, in place, threaded) against the plain nn.silu, x * sigmoid(x)
    composed from engine primitives."""
    x = Tensor(a, requires_grad=True)
    fast_y = td.fast.silu(x)
    fast_y.sum().backward()
    y = Tensor(a, requires_grad=True)
    with td.plain():
        plain_y = silu(y)
    plain_y.sum().backward()
    np.testing.assert_allclose(fast_y.data, plain_y.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, y.grad, rtol=1e-10, atol=1e-12)


@FAST
@given(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.sampled_from([2, 3]),
       st.data())
def test_upsample_matches_a_loop_and_gradients(b, c, h, w, scale, data):
    x = data.draw(arrays((b, c, h, w)))
    y = Upsample(scale)(x).data
    assert y.shape == (b, c, scale * h, scale * w)
    for i in range(scale * h):
        for j in range(scale * w):
            np.testing.assert_array_equal(y[:, :, i, j], x[:, :, i // scale, j // scale])
    assert_grad_close(Upsample(scale), [x])


# ---------------------------------------------------------------- Dropout
def test_dropout_same_seed_same_mask_and_scale():
    x = np.random.default_rng(0).uniform(1, 2, size=(50, 40)).astype(np.float32)
    a = Dropout(0.3, rng=np.random.default_rng(42))(x).data
    b = Dropout(0.3, rng=np.random.default_rng(42))(x).data
    c = Dropout(0.3, rng=np.random.default_rng(43))(x).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = a != 0
    np.testing.assert_allclose(a[kept], x[kept] / 0.7, rtol=1e-6)      # survivors scaled by 1/(1-p)
    assert a.dtype == np.float32 and abs(kept.mean() - 0.7) < 0.03
    np.testing.assert_array_equal(Dropout(0.0)(x).data, x)
    assert not np.any(Dropout(1.0)(x).data)
    with pytest.raises(ValueError, match="1.5"):
        Dropout(1.5)


def test_dropout_is_the_identity_in_eval():
    x = np.arange(12.0).reshape(3, 4)
    drop = Dropout(0.9, rng=np.random.default_rng(0)).eval()
    np.testing.assert_array_equal(drop(x).data, x)
    np.testing.assert_array_equal(drop(Tensor(x)).data, x)


@FAST
@given(arrays(hnp.array_shapes(max_dims=2, max_side=5)), st.floats(0.1, 0.8))
def test_dropout_gradients(x, p):
    # a fresh generator per call keeps the mask fixed across the finite differences
    assert_grad_close(lambda t: Dropout(p, rng=np.random.default_rng(3))(t), [x])


# ---------------------------------------------------------------- timestep embedding
def test_timestep_embedding_layout_pinned_by_the_benchmark():
    t = np.array([0, 1, 17, 999])
    emb = timestep_embedding(t, 64)
    assert emb.shape == (4, 64) and emb.dtype == np.float32
    freqs = np.exp(-np.log(10000) * np.arange(32) / 32)         # exp(-ln(10000) i / 32)
    np.testing.assert_allclose(emb[:, :32], np.sin(t[:, None] * freqs), atol=1e-6)   # 32 sines first
    np.testing.assert_allclose(emb[:, 32:], np.cos(t[:, None] * freqs), atol=1e-6)   # then 32 cosines
    np.testing.assert_array_equal(emb[0], np.r_[np.zeros(32), np.ones(32)])           # t = 0
    np.testing.assert_allclose(emb[:, 0], np.sin(t), atol=1e-6)                       # f_0 = 1
    np.testing.assert_allclose(emb[:, 31], np.sin(t * 10000 ** (-31 / 32)), atol=1e-6)


@FAST
@given(hnp.arrays(np.int64, st.integers(1, 5), elements=st.integers(0, 4000)), st.integers(1, 40),
       st.sampled_from([10000, 100]))
def test_timestep_embedding_matches_a_loop(t, half, max_period):
    emb = timestep_embedding(t, 2 * half, max_period=max_period, dtype=np.float64)
    for b in range(len(t)):
        for i in range(half):
            f = math.exp(-math.log(max_period) * i / half)
            assert emb[b, i] == pytest.approx(math.sin(t[b] * f), abs=1e-9)
            assert emb[b, half + i] == pytest.approx(math.cos(t[b] * f), abs=1e-9)


def test_timestep_embedding_errors():
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(np.arange(3), 7)
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(np.zeros((2, 2), int), 8)


# ---------------------------------------------------------------- fused kernels vs their composed twins
@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.booleans(), st.data())
def test_fast_linear_matches_plain_twin(batch, n_in, n_out, with_bias, x_needs_grad, data):
    """tinydiff.fast.linear (one graph node) gives the same values and gradients as the plain
    nn.linear, x @ W.T + b built from primitives."""
    from tinydiff.nn import linear
    rng = np.random.default_rng(batch * 100 + n_in * 10 + n_out)
    xs, w, b = rng.standard_normal((batch, 2, n_in)), rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    g = rng.standard_normal((batch, 2, n_out))
    results = []
    for fused in (True, False):
        x = Tensor(xs, requires_grad=x_needs_grad)
        W, B = Tensor(w, requires_grad=True), (Tensor(b, requires_grad=True) if with_bias else None)
        if fused:
            y = td.fast.linear(x, W, B)
        else:
            with td.plain():
                y = linear(x, W, B)
        (y * g).sum().backward()
        results.append((y.data, x.grad, W.grad, None if B is None else B.grad))
    for a, c in zip(*results):
        if a is None or c is None:
            assert a is None and c is None
        else:
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_sinusoidal_embedding_table_matches_formula():
    from tinydiff.nn import SinusoidalEmbedding
    emb = SinusoidalEmbedding(64)
    t = np.array([0, 7, 999, 2500, 3])
    np.testing.assert_array_equal(emb(t), timestep_embedding(t, 64))   # grows the table past 1000
    np.testing.assert_allclose(emb(np.array([0.5])), timestep_embedding(np.array([0.5]), 64))
    assert emb.state_dict() == {}
