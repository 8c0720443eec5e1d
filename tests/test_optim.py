"""Optimizers against first steps computed by hand; clipping, EMA and warm-up against
their closed forms; state dicts round-trip through np.savez."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff.nn import Linear, Parameter
from tinydiff.optim import EMA, SGD, Adam, AdamW, LinearWarmup, clip_grad_norm, linear_warmup_lr


def run(opt_class, p0, grads, **kw):
    """Apply ``opt_class`` to one parameter p0 with the given gradient sequence; returns p after each step."""
    p = Parameter(np.array(p0))
    opt = opt_class([p], **kw)
    out = []
    for g in grads:
        p.grad = np.array(g, dtype=p.dtype)
        opt.step()
        out.append(p.data.copy())
    return out


# ---------------------------------------------------------------- SGD
def test_sgd_plain_momentum_and_weight_decay_by_hand():
    p = run(SGD, [1.0, -2.0], [[0.5, 1.0], [1.0, -1.0], [0.0, 2.0]], lr=0.1)
    np.testing.assert_allclose(p[0], [1.0 - 0.05, -2.0 - 0.1])
    # momentum 0.9: b1 = g1 (PyTorch's first buffer), b2 = 0.9 b1 + g2, b3 = 0.9 b2 + g3
    p = run(SGD, [1.0, -2.0], [[0.5, 1.0], [1.0, -1.0], [0.0, 2.0]], lr=0.1, momentum=0.9)
    b1 = np.array([0.5, 1.0])
    b2 = 0.9 * b1 + [1.0, -1.0]                                 # [1.45, -0.1]
    b3 = 0.9 * b2 + [0.0, 2.0]                                  # [1.305, 1.91]
    np.testing.assert_allclose(p[2], np.array([1.0, -2.0]) - 0.1 * (b1 + b2 + b3), rtol=1e-12)
    # weight decay 0.5: g <- g + 0.5 p
    p = run(SGD, [1.0, -2.0], [[0.5, 1.0]], lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(p[0], [1.0 - 0.1 * (0.5 + 0.5), -2.0 - 0.1 * (1.0 - 1.0)])


# ---------------------------------------------------------------- Adam / AdamW by hand
P0 = [1.0, -2.0]
GRADS = [[0.5, -1.0], [0.1, 0.2], [-0.3, 0.4]]


def adam_by_hand(lr, wd=0.0, decoupled=False, eps=1e-8):
    """Three Adam steps written out with b1 = 0.9, b2 = 0.999."""
    p = np.array(P0)
    # step 1: bias corrections 1 - 0.9 = 0.1 and 1 - 0.999 = 0.001
    g = np.array(GRADS[0]) + (0 if decoupled else wd * p)
    p = p * (1 - lr * wd) if decoupled else p
    m = 0.1 * g                                                 # m1 = (1 - b1) g1
    v = 0.001 * g ** 2                                          # v1 = (1 - b2) g1^2
    m_hat, v_hat = m / 0.1, v / 0.001                           # = g1 and g1^2 exactly
    p1 = p - lr * m_hat / (np.sqrt(v_hat) + eps)                # ~ p - lr sign(g1)
    # step 2: bias corrections 1 - 0.81 = 0.19 and 1 - 0.998001 = 0.001999
    g = np.array(GRADS[1]) + (0 if decoupled else wd * p1)
    p = p1 * (1 - lr * wd) if decoupled else p1
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g ** 2
    m_hat, v_hat = m / 0.19, v / 0.001999
    p2 = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    # step 3: bias corrections 1 - 0.729 = 0.271 and 1 - 0.997002999 = 0.002997001
    g = np.array(GRADS[2]) + (0 if decoupled else wd * p2)
    p = p2 * (1 - lr * wd) if decoupled else p2
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g ** 2
    m_hat, v_hat = m / 0.271, v / 0.002997001
    p3 = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return [p1, p2, p3]


def test_adam_first_step_moves_by_lr_times_sign():
    p = run(Adam, P0, GRADS[:1], lr=0.01)
    np.testing.assert_allclose(p[0], [1.0 - 0.01, -2.0 + 0.01], rtol=1e-7)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_three_steps_by_hand(wd):
    got = run(Adam, P0, GRADS, lr=0.01, weight_decay=wd)
    for k, (a, b) in enumerate(zip(got, adam_by_hand(0.01, wd))):
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f"step {k + 1}")


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_three_steps_by_hand(wd):
    got = run(AdamW, P0, GRADS, lr=0.01, weight_decay=wd)
    for k, (a, b) in enumerate(zip(got, adam_by_hand(0.01, wd, decoupled=True))):
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f"step {k + 1}")
    if wd:                                                       # decoupled decay is not L2
        assert not np.allclose(got[-1], run(Adam, P0, GRADS, lr=0.01, weight_decay=wd)[-1], rtol=1e-9)


def test_float32_stays_float32():
    p32 = run(AdamW, np.array(P0, np.float32), GRADS, lr=0.01, weight_decay=0.1)
    assert all(p.dtype == np.float32 for p in p32)
    np.testing.assert_allclose(p32[-1], adam_by_hand(0.01, 0.1, decoupled=True)[-1], rtol=1e-6)
    for cls in (SGD, Adam):
        assert run(cls, np.array(P0, np.float32), GRADS, lr=0.1)[-1].dtype == np.float32


def test_step_is_in_place_and_skips_parameters_without_grad():
    a, b = Parameter(np.ones(2, np.float32)), Parameter(np.ones(3, np.float32))
    array_a = a.data
    opt = Adam([a, b], lr=0.1)
    a.grad = np.ones(2, np.float32)
    opt.step()
    assert a.data is array_a and np.all(a.data < 1) and np.all(b.data == 1)
    assert opt.state[1] == {} and opt.state[0]["step"] == 1
    opt.zero_grad()
    assert a.grad is None
    with pytest.raises(TypeError, match="model.parameters()"):
        Adam(Linear(2, 2))


def test_training_reduces_a_regression_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3
    model = Linear(3, 1, rng=rng)
    opt = AdamW(model.parameters(), lr=0.05)
    losses = []
    for _ in range(200):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-2 * losses[0]


# ---------------------------------------------------------------- state dicts
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.01),
                                  lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1)])
def test_optimizer_state_round_trips_through_npz(make, tmp_path):
    rng = np.random.default_rng(0)
    ps = [Parameter(rng.standard_normal((2, 3)).astype(np.float32)), Parameter(np.zeros(4, np.float32))]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in ps] for _ in range(4)]
    opt = make(ps)
    for gs in grads[:2]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    opt.lr = 0.005                                               # e.g. changed by a warm-up
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    clones = [Parameter(p.data.copy()) for p in ps]
    opt2 = make(clones)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        opt2.load_state_dict(f)
    assert opt2.lr == 0.005 and opt2.state[0]["step"] == 2
    for gs in grads[2:]:
        for p, q, g in zip(ps, clones, gs):
            p.grad, q.grad = g, g.copy()
        opt.step(), opt2.step()
    for p, q in zip(ps, clones):
        np.testing.assert_array_equal(p.data, q.data)


def test_optimizer_load_state_dict_lists_the_problems():
    p = Parameter(np.zeros(3))
    opt = Adam([p], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    sd = opt.state_dict()
    del sd["beta2"]
    sd["state.0.exp_avg"] = np.zeros(4)
    sd["state.5.exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError) as info:
        Adam([Parameter(np.zeros(3))]).load_state_dict(sd)
    for text in ["missing", "beta2", "unexpected", "state.5.exp_avg", "shape", "state.0.exp_avg"]:
        assert text in str(info.value)


# ---------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_to_max_norm():
    a, b = Parameter(np.zeros(1, np.float32)), Parameter(np.zeros(2, np.float32))
    a.grad, b.grad = np.array([3.0], np.float32), np.array([0.0, 4.0], np.float32)
    total = clip_grad_norm([a, b], max_norm=1.0)
    assert total == pytest.approx(5.0)                          # the norm before clipping
    np.testing.assert_allclose(np.r_[a.grad, b.grad], [0.6, 0.0, 0.8], rtol=1e-5)
    assert a.grad.dtype == np.float32
    assert clip_grad_norm([a, b], max_norm=10.0) == pytest.approx(1.0, rel=1e-5)   # below: untouched
    np.testing.assert_allclose(np.r_[a.grad, b.grad], [0.6, 0.0, 0.8], rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-10, 10, width=64)), st.floats(0.1, 5))
def test_clip_grad_norm_property(g, max_norm):
    p = Parameter(np.zeros_like(g))
    p.grad = g.copy()
    total = clip_grad_norm([p], max_norm)
    assert total == pytest.approx(np.linalg.norm(g))
    assert np.linalg.norm(p.grad) <= max_norm * (1 + 1e-9)
    np.testing.assert_allclose(p.grad, g * min(1.0, max_norm / (total + 1e-6)), rtol=1e-12)


# ---------------------------------------------------------------- EMA
def test_ema_matches_the_closed_form():
    model = Linear(2, 2, rng=np.random.default_rng(0), dtype=np.float64)
    s0 = model.weight.data.copy()
    ema = EMA(model, decay=0.9)
    history = []
    for k in range(3):                                          # s <- 0.9 s + 0.1 p, three times
        model.weight.data[...] += k + 1.0
        history.append(model.weight.data.copy())
        ema.update()
    want = 0.9 ** 3 * s0 + 0.1 * (0.9 ** 2 * history[0] + 0.9 * history[1] + history[2])
    np.testing.assert_allclose(ema.shadow[0], want, rtol=1e-12)
    assert ema.num_updates == 3


def test_ema_swaps_weights_for_sampling_and_copies():
    model = Linear(2, 2, rng=np.random.default_rng(0))
    ema = EMA(model, decay=0.5)
    trained = model.weight.data + 1.0
    model.weight.data[...] = trained
    ema.update()
    with ema.average_parameters(model):
        np.testing.assert_allclose(model.weight.data, trained - 0.5)
    np.testing.assert_array_equal(model.weight.data, trained)   # restored afterwards
    sampler = Linear(2, 2)
    ema.copy_to(sampler)
    np.testing.assert_allclose(sampler.weight.data, trained - 0.5)
    assert sampler.weight.dtype == np.float32
    with pytest.raises(ValueError, match="EMA target"):
        ema.copy_to(Linear(3, 2))


def test_ema_state_dict_round_trip_and_errors():
    model = Linear(2, 2, rng=np.random.default_rng(0))
    ema = EMA(model, decay=0.99)
    model.weight.data[...] = 1.0
    ema.update()
    sd = ema.state_dict()
    assert sorted(sd) == ["decay", "num_updates", "shadow.bias", "shadow.weight"]
    other = EMA(Linear(2, 2), decay=0.5)
    other.load_state_dict(sd)
    assert other.decay == 0.99 and other.num_updates == 1
    np.testing.assert_array_equal(other.shadow[0], ema.shadow[0])
    del sd["shadow.bias"]
    with pytest.raises(ValueError, match="shadow.bias"):
        other.load_state_dict(sd)


# ---------------------------------------------------------------- warm-up
def test_linear_warmup_schedule():
    assert [linear_warmup_lr(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert linear_warmup_lr(0, 2e-4, 0) == 2e-4
    opt = Adam([Parameter(np.zeros(1))], lr=2e-4)
    sched = LinearWarmup(opt, warmup_steps=5000)
    lrs = []
    for _ in range(5001):
        lrs.append(opt.lr)
        sched.step()
    assert lrs[0] == pytest.approx(2e-4 / 5000) and lrs[2499] == pytest.approx(1e-4)
    assert lrs[4999] == lrs[5000] == pytest.approx(2e-4)
    again = LinearWarmup(Adam([Parameter(np.zeros(1))], lr=2e-4), 5000)
    again.load_state_dict({k: np.asarray(v) for k, v in sched.state_dict().items()})
    assert again.optimizer.lr == opt.lr and math.isclose(again.lr_at(10), 2e-4 * 11 / 5000)
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearWarmup(opt, -1)


def test_cosine_decay_after_warmup_by_hand():
    """lr = base * (step+1)/warmup during warm-up, then base * (1 + cos(pi p))/2 down to 0."""
    import math

    from tinydiff.optim import LinearWarmup, SGD, linear_warmup_lr
    base = 0.1
    assert linear_warmup_lr(0, base, 4, 12) == pytest.approx(0.025)
    assert linear_warmup_lr(3, base, 4, 12) == pytest.approx(0.1)
    assert linear_warmup_lr(4, base, 4, 12) == pytest.approx(0.1)                 # p = 0
    assert linear_warmup_lr(8, base, 4, 12) == pytest.approx(0.05)                # p = 1/2
    assert linear_warmup_lr(6, base, 4, 12) == pytest.approx(base * (1 + math.cos(math.pi / 4)) / 2)
    assert linear_warmup_lr(12, base, 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert linear_warmup_lr(50, base, 4, 12) == pytest.approx(0.0, abs=1e-12)     # stays at 0
    opt = SGD([Parameter(np.zeros(1))], lr=base)
    sched = LinearWarmup(opt, 4, decay_steps=12)
    for _ in range(8):
        sched.step()
    assert opt.lr == pytest.approx(0.05)
    restored = LinearWarmup(SGD([Parameter(np.zeros(1))], lr=1.0), 0)
    restored.load_state_dict(sched.state_dict())
    assert restored.lr_at(8) == pytest.approx(0.05) and restored.decay_steps == 12
    with pytest.raises(ValueError, match="decay_steps"):
        LinearWarmup(opt, 4, decay_steps=2)


# ---------------------------------------------------------------- the fast step (tinydiff/fast/adam.py)
def adam_trajectory(make, dtype, path, threads=1, steps=4, skip=None):
    """Parameters after each step of ``make(params)``, on the fast or the plain path; ``skip``:
    a parameter index that gets no gradient at step 1 (its step count falls behind)."""
    import contextlib

    import tinydiff as td
    rng = np.random.default_rng(0)
    shapes = [(3, 4, 3, 3), (7,), (1,), (5, 6), (300,)]
    ps = [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = make(ps)
    previous = td.parallel.set_num_threads(threads)
    out = []
    try:
        for step in range(steps):
            for i, p in enumerate(ps):
                p.grad = None if (i == skip and step == 1) else rng.standard_normal(p.shape).astype(dtype)
            with td.plain() if path == "plain" else contextlib.nullcontext():
                opt.step()
            out.append([p.data.copy() for p in ps] + [s.get("exp_avg_sq", np.zeros(0)).copy() for s in opt.state])
    finally:
        td.parallel.set_num_threads(previous)
    return out, opt


MAKERS = [lambda ps: Adam(ps, lr=0.01), lambda ps: Adam(ps, lr=0.01, weight_decay=0.1),
          lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1)]


@pytest.mark.skipif(not __import__("tinydiff").fast.enabled(), reason="TINYDIFF_PLAIN=1: no fast path")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("skip", [None, 2])
def test_fast_adam_equals_the_plain_step_bit_for_bit(make, dtype, skip, monkeypatch):
    """The fast step over one flat buffer, on 1 and on 4 threads (an explicit count, whatever the
    machine has), gives exactly the plain per-parameter step's numbers, float32 and float64; with
    a parameter that missed a step it hands over to the plain step."""
    import tinydiff as td
    monkeypatch.setattr(td.parallel, "MIN_WORK", 0)             # thread even these small arrays
    monkeypatch.setattr(td.fast.adam, "MIN_PARAMETERS", 0)      # and fuse them
    plain, _ = adam_trajectory(make, dtype, "plain", skip=skip)
    for threads in (1, 4):
        fast, opt = adam_trajectory(make, dtype, "fast", threads=threads, skip=skip)
        for a, b in zip(fast, plain):
            for u, v in zip(a, b):
                assert u.dtype == v.dtype == dtype
                np.testing.assert_array_equal(u, v)
        assert [s["step"] for s in opt.state] == [4, 4, 3 if skip == 2 else 4, 4, 4]


@pytest.mark.skipif(not __import__("tinydiff").fast.enabled(), reason="TINYDIFF_PLAIN=1: no fast path")
def test_fast_adam_state_dict_views_and_reload(tmp_path, monkeypatch):
    """The flat moments stay visible per parameter: state_dict, load_state_dict and further fast
    steps agree with the plain path."""
    import tinydiff as td
    monkeypatch.setattr(td.fast.adam, "MIN_PARAMETERS", 0)
    rng = np.random.default_rng(1)
    ps = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(4, 3), (5,)]]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in ps] for _ in range(4)]
    opt = AdamW(ps, lr=0.01)
    for gs in grads[:2]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    assert opt._flat.m.size == 17 and opt.state[0]["exp_avg"].base is opt._flat.m
    state = opt.state_dict()
    clones = [Parameter(p.data.copy()) for p in ps]
    opt2 = AdamW(clones, lr=0.01)
    opt2.load_state_dict(state)
    for gs in grads[2:]:
        for p, q, g in zip(ps, clones, gs):
            p.grad, q.grad = g, g.copy()
        opt.step()
        with td.plain():
            opt2.step()
    for p, q in zip(ps, clones):
        np.testing.assert_array_equal(p.data, q.data)
    np.testing.assert_array_equal(opt.state[1]["exp_avg"], opt2.state[1]["exp_avg"])
