"""The autograd engine against central finite differences (float64), on shapes and
values drawn by Hypothesis, plus the structural properties the engine promises."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tinydiff as td
from tinydiff import Tensor, functional as F
from tinydiff.gradcheck import assert_grad_close

FAST = settings(max_examples=25, deadline=None)
finite = st.floats(-3, 3, allow_nan=False, width=64)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def arrays(shape, elements=finite):
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def broadcast_pair(draw):
    """Two arrays whose shapes broadcast, e.g. (3, 1, 4) and (2, 1)."""
    shape_a, shape_b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    return draw(arrays(shape_a)), draw(arrays(shape_b))


# ---------------------------------------------------------------- binary primitives, broadcast
@FAST
@given(broadcast_pair())
def test_add_sub_mul_broadcast(pair):
    a, b = pair
    assert_grad_close(lambda x, y: x + y, [a, b])
    assert_grad_close(lambda x, y: x - y, [a, b])
    assert_grad_close(lambda x, y: x * y, [a, b])


@FAST
@given(broadcast_pair())
def test_div_broadcast(pair):
    a, b = pair
    b = np.where(np.abs(b) < 0.5, 0.5 + np.abs(b), b)          # keep away from the pole
    assert_grad_close(lambda x, y: x / y, [a, b], atol=1e-5)


@FAST
@given(arrays(shapes, st.floats(0.3, 3)), st.sampled_from([2.0, 0.5, -1.0, 3.0, 1.5]))
def test_pow_scalar(a, p):
    assert_grad_close(lambda x: x ** p, [a], atol=1e-5)


@FAST
@given(arrays(shapes, st.floats(0.3, 3)), arrays(shapes, st.floats(-2, 2)))
def test_pow_tensor_exponent(a, b):
    b = np.broadcast_to(b.reshape(-1)[:1], a.shape).copy()
    assert_grad_close(lambda x, y: x ** y, [a, b], atol=1e-5)


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.data())
def test_matmul_batched_and_broadcast(batch, n, k, m, data):
    a = data.draw(arrays((batch, n, k)))
    b = data.draw(arrays((k, m)))                               # broadcast over the batch
    assert_grad_close(lambda x, y: x @ y, [a, b])
    c = data.draw(arrays((batch, k, m)))
    assert_grad_close(lambda x, y: x @ y, [a, c])
    v = data.draw(arrays((k,)))
    assert_grad_close(lambda x, y: x @ y, [a, v])               # matrix @ vector
    assert_grad_close(lambda x, y: x @ y, [v, c])               # vector @ matrix


# ---------------------------------------------------------------- unary primitives
@FAST
@given(arrays(shapes))
def test_elementwise(a):
    for f in (Tensor.exp, Tensor.tanh, Tensor.sigmoid, lambda x: -x):
        assert_grad_close(f, [a], atol=1e-5)
    pos = np.abs(a) + 0.5
    assert_grad_close(Tensor.log, [pos])
    assert_grad_close(Tensor.sqrt, [pos])


@FAST
@given(arrays(shapes, st.floats(0.1, 3) | st.floats(-3, -0.1)))
def test_relu_abs_away_from_kink(a):
    assert_grad_close(Tensor.relu, [a])
    assert_grad_close(Tensor.abs, [a])


@FAST
@given(arrays(shapes, st.floats(-1.7, 1.7)))
def test_clip_away_from_edges(a):
    a = np.where(np.abs(np.abs(a) - 1) < 0.05, a * 0.9, a)
    assert_grad_close(lambda x: x.clip(-1.0, 1.0), [a])


# ---------------------------------------------------------------- reductions and shapes
@FAST
@given(arrays(shapes), st.booleans(), st.data())
def test_sum_mean_max(a, keepdims, data):
    axis = data.draw(st.none() | st.integers(0, a.ndim - 1))
    a = a + np.arange(a.size).reshape(a.shape) * 1e-3          # no ties for max
    assert_grad_close(lambda x: x.sum(axis=axis, keepdims=keepdims), [a])
    assert_grad_close(lambda x: x.mean(axis=axis, keepdims=keepdims), [a])
    assert_grad_close(lambda x: x.max(axis=axis, keepdims=keepdims), [a])


def test_max_splits_gradient_between_ties():
    x = Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0, 0.5, 0.5])


@FAST
@given(arrays(hnp.array_shapes(min_dims=2, max_dims=4, max_side=3)), st.data())
def test_reshape_transpose(a, data):
    perm = tuple(data.draw(st.permutations(range(a.ndim))))
    assert_grad_close(lambda x: x.transpose(*perm), [a])
    assert_grad_close(lambda x: x.reshape(-1), [a])
    assert_grad_close(lambda x: x.T, [a])


@FAST
@given(arrays(hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=5)), st.data())
def test_getitem_slices_and_repeated_fancy_index(a, data):
    assert_grad_close(lambda x: x[1:, ::2], [a])
    assert_grad_close(lambda x: x[:, -1], [a])
    idx = np.array(data.draw(st.lists(st.integers(0, a.shape[0] - 1), min_size=1, max_size=6)))
    assert_grad_close(lambda x: x[idx], [a])                   # repeats must add up
    assert_grad_close(lambda x: x[idx, 0], [a])


@FAST
@given(arrays((2, 3)), arrays((4, 3)), arrays((2, 3)))
def test_concat_stack_where(a, b, c):
    assert_grad_close(lambda x, y: td.concat([x, y], axis=0), [a, b])
    assert_grad_close(lambda x, y: td.stack([x, y], axis=1), [a, c])
    assert_grad_close(lambda x, y: td.stack([x, y], axis=-1), [a, c])
    cond = a > 0
    assert_grad_close(lambda x, y: td.where(cond, x, y), [a, c])
    assert_grad_close(lambda x: td.where(cond, x, 2.0), [a])


# ---------------------------------------------------------------- graph structure
@FAST
@given(arrays((3, 2)), arrays((2,)))
def test_tensor_reused_in_two_branches(a, b):
    """x feeds two branches that meet again: both contributions must be added."""
    assert_grad_close(lambda x, y: (x * y).tanh() + x.exp() * x, [a, b], atol=1e-5)
    x = Tensor(a, requires_grad=True)
    (x + x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full_like(a, 3.0))


def test_gradients_accumulate_across_backward_calls():
    x = Tensor(np.ones(3), requires_grad=True)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [5, 5, 5])


def test_deep_graph_has_no_recursion_limit():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    assert np.isclose(x.grad, 1.0001 ** 5000)


def test_no_grad_records_nothing_and_detach_cuts():
    x = Tensor(np.ones(2), requires_grad=True)
    with td.no_grad():
        y = x * 2
    assert not y.requires_grad and y._parents == ()
    z = (x * 2).detach() * x
    z.sum().backward()
    np.testing.assert_array_equal(x.grad, [2, 2])              # only the undetached path


def test_backward_errors_are_clear():
    with pytest.raises(RuntimeError, match="scalar"):
        Tensor(np.ones(3), requires_grad=True).exp().backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()
    with pytest.raises(TypeError, match="floating"):
        Tensor(np.array([1, 2]), requires_grad=True)


# ---------------------------------------------------------------- dtypes and NumPy interop
def test_float32_stays_float32():
    x = Tensor(np.ones((4, 3), np.float32), requires_grad=True)
    w = Tensor(np.ones((3, 2), np.float32), requires_grad=True)
    y = ((x @ w) * 0.5 + 1.0) ** 2 / 3.0 - 2
    y = F.softmax(y.tanh(), axis=-1).mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32
    assert Tensor(1.5).dtype == np.float32 and Tensor([1, 2]).dtype == np.float32


def test_numpy_functions_dispatch_to_tensors():
    a = np.array([0.5, 1.5, -2.0])
    x = Tensor(a, requires_grad=True)
    y = np.exp(x) + np.log(np.abs(x)) * np.ones(3) + np.tanh(x) - np.sqrt(np.square(x))
    y = np.where(a > 0, y, np.maximum(x, -1.0)) + np.clip(x, -1, 1) + np.power(x, 2)
    assert isinstance(y, Tensor)
    y.sum().backward()
    expect = np.where(a > 0, np.exp(a) + 1 / a + (1 - np.tanh(a) ** 2) - np.sign(a), 0.0)
    expect += (np.abs(a) < 1) + 2 * a
    np.testing.assert_allclose(x.grad, expect)
    assert isinstance(a * x, Tensor) and isinstance(x > 0, np.ndarray)


# ---------------------------------------------------------------- functional
@FAST
@given(arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)))
def test_softmax_family_gradients(a):
    assert_grad_close(lambda x: F.softmax(x, axis=-1), [a])
    assert_grad_close(lambda x: F.log_softmax(x, axis=-1), [a])
    assert_grad_close(lambda x: F.logsumexp(x, axis=-1), [a])
    assert_grad_close(lambda x: F.logsumexp(x, axis=0, keepdims=True), [a])


@settings(max_examples=40, deadline=None)
@given(arrays(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), st.floats(-1e4, 1e4)))
def test_softmax_rows_sum_to_one_and_stay_finite(a):
    s = F.softmax(Tensor(a), axis=-1).data
    np.testing.assert_allclose(s.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(F.log_softmax(Tensor(a)).data))
    lse = F.logsumexp(Tensor(a), axis=-1).data
    assert np.all(np.isfinite(lse)) and np.all(lse >= a.max(axis=-1) - 1e-9)
    assert np.all(lse <= a.max(axis=-1) + np.log(a.shape[-1]) + 1e-9)
