"""Single-head 2-D self-attention against a naive per-pixel formulation and against
finite differences (float64, shapes and values drawn by Hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff import Tensor
from tinydiff.gradcheck import assert_grad_close
from tinydiff.nn import SelfAttention2d, attention

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")

NAMES = ["norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]


def naive_block(x, sd, groups, eps=1e-5):
    """The DDPM attention block one pixel at a time: for each query pixel i,
    a_j = softmax_j(q_i . k_j / sqrt(C)) and out_i = sum_j a_j v_j."""
    B, C, H, W = x.shape
    h = np.empty_like(x)
    per = C // groups
    for b in range(B):                                        # GroupNorm, group by group
        for g in range(groups):
            chunk = x[b, g * per:(g + 1) * per]
            h[b, g * per:(g + 1) * per] = (chunk - chunk.mean()) / np.sqrt(chunk.var() + eps)
    h = h * sd["norm.weight"][:, None, None] + sd["norm.bias"][:, None, None]
    out = x.copy()
    for b in range(B):
        pixels = h[b].reshape(C, H * W).T                     # [N, C]: one row per pixel
        qkv = pixels @ sd["qkv.weight"][:, :, 0, 0].T + sd["qkv.bias"]   # 1x1 conv = per-pixel linear
        q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
        for i in range(H * W):
            scores = np.array([q[i] @ k[j] for j in range(H * W)]) / np.sqrt(C)
            a = np.exp(scores - scores.max())
            a /= a.sum()
            attended = sum(a[j] * v[j] for j in range(H * W))          # [C]
            out[b, :, i // W, i % W] += sd["proj.weight"][:, :, 0, 0] @ attended + sd["proj.bias"]
    return out


def random_block(channels, groups, seed=0, dtype=np.float64):
    """A block whose every parameter is random (the default GroupNorm 1/0 would hide errors)."""
    block = SelfAttention2d(channels, num_groups=groups, rng=np.random.default_rng(seed), dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    block.norm.weight.data[...] = rng.uniform(0.5, 1.5, channels)
    block.norm.bias.data[...] = rng.standard_normal(channels)
    return block


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 2), st.sampled_from([(1, 1), (2, 2), (2, 4)]), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 100), st.data())
def test_block_matches_naive_per_pixel_attention(batch, groups_channels, H, W, seed, data):
    groups, channels = groups_channels
    x = data.draw(hnp.arrays(np.float64, (batch, channels, H, W), elements=st.floats(-3, 3, width=64)))
    x = x + np.arange(x.size).reshape(x.shape) % 5              # keep groups from being constant
    block = random_block(channels, groups, seed)
    np.testing.assert_allclose(block(x).data, naive_block(x, block.state_dict(), groups), rtol=1e-9, atol=1e-9)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 2), st.sampled_from([(1, 2), (2, 4)]), st.integers(1, 3), st.integers(1, 3), st.data())
def test_block_gradients_match_finite_differences(batch, groups_channels, H, W, data):
    groups, channels = groups_channels
    x = data.draw(hnp.arrays(np.float64, (batch, channels, H, W), elements=st.floats(-2, 2, width=64)))
    x = x + np.arange(x.size).reshape(x.shape) % 3
    block = random_block(channels, groups)
    sd = block.state_dict()

    def f(x, *tensors):
        for name, t in zip(NAMES, tensors):
            module, attr = name.split(".")
            setattr(getattr(block, module), attr, t)
        return block(x)
    assert_grad_close(f, [x] + [sd[n] for n in NAMES], atol=1e-5, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 5), st.data())
def test_attention_rows_are_softmax_weighted_averages(B, C, N, data):
    q, k, v = (data.draw(hnp.arrays(np.float64, (B, C, N), elements=st.floats(-3, 3, width=64))) for _ in range(3))
    out = attention(Tensor(q), Tensor(k), Tensor(v)).data
    for b in range(B):
        for i in range(N):
            s = q[b, :, i] @ k[b] / np.sqrt(C)                  # [N] scores of query i
            a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(out[b, :, i], v[b] @ a, rtol=1e-10, atol=1e-12)
    assert_grad_close(attention, [q, k, v], atol=1e-5)


def test_block_shapes_dtype_names_and_zero_init():
    block = SelfAttention2d(8, num_groups=4, rng=np.random.default_rng(0))
    assert [n for n, _ in block.named_parameters()] == NAMES
    assert block.qkv.weight.shape == (24, 8, 1, 1) and block.proj.weight.shape == (8, 8, 1, 1)
    x = np.random.default_rng(1).standard_normal((2, 8, 4, 4))
    y = block(x)
    assert y.shape == x.shape and y.dtype == np.float32
    identity = SelfAttention2d(8, num_groups=4, zero_init_proj=True, rng=np.random.default_rng(0))
    np.testing.assert_allclose(identity(x).data, x.astype(np.float32))      # starts as the identity
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        block(np.zeros((2, 4, 4, 4)))
