"""tinydiff.parallel (tinydiff/fast/parallel.py): threaded ops give exactly the single-threaded
result (bit for bit), chunks cover the range, exceptions propagate, and the thread count is
configurable."""
import numpy as np
import pytest

from tinydiff import Tensor, parallel
from tinydiff.nn import Conv2d, GroupNormSiLU, UpsampleConv, silu


@pytest.fixture
def threads_everywhere(monkeypatch):
    """Thread even small arrays, so that the tests' small shapes take the threaded path."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    previous = parallel.set_num_threads(3)
    yield
    parallel.set_num_threads(previous)


def step(seed):
    """Outputs and gradients of a conv -> GroupNorm+SiLU -> phase conv -> strided conv -> SiLU
    -> 8-to-2-channel conv chain (Winograd, fused norm, phase, im2col and col2im kernels)."""
    rng = np.random.default_rng(seed)
    conv = Conv2d(8, 8, 3, padding=1, rng=rng)
    norm = GroupNormSiLU(4, 8)
    up = UpsampleConv(8, 8, 3, padding=1, rng=rng)
    down = Conv2d(8, 8, 3, stride=2, padding=1, rng=rng)
    out = Conv2d(8, 2, 3, padding=1, rng=rng)
    x = Tensor(rng.standard_normal((5, 8, 7, 6)).astype(np.float32), requires_grad=True)
    y = out(silu(down(up(norm(conv(x))))))
    y.backward(rng.standard_normal(y.shape).astype(np.float32))
    return [y.data, x.grad] + [p.grad for m in (conv, norm, up, down, out) for p in m.parameters()]


def test_threaded_equals_single_threaded(threads_everywhere):
    threaded = step(0)
    parallel.set_num_threads(1)
    for a, b in zip(threaded, step(0)):
        np.testing.assert_array_equal(a, b)


def test_chunks_cover_the_range():
    for n in range(0, 9):
        for parts in range(1, 5):
            pieces = parallel.chunks(n, parts)
            assert [i for lo, hi in pieces for i in range(lo, hi)] == list(range(n))


def test_exceptions_propagate(threads_everywhere):
    def fn(lo, hi):
        if lo > 0:
            raise RuntimeError("chunk failed")
    with pytest.raises(RuntimeError, match="chunk failed"):
        parallel.parallel_for(fn, 10)


def test_td_parallel_is_the_fast_kernels_pool():
    import tinydiff as td
    assert td.parallel is td.fast.parallel is parallel


def test_thread_count_settings(monkeypatch):
    monkeypatch.setenv("TINYDIFF_NUM_THREADS", "3")
    assert parallel._default_threads() == 3
    monkeypatch.setenv("TINYDIFF_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="TINYDIFF_NUM_THREADS"):
        parallel._default_threads()
    with pytest.raises(ValueError, match="set_num_threads"):
        parallel.set_num_threads(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_any_thread_count_same_bits(dtype):
    """A bias gradient over the pixels: the same bits on 1, 3 and 4 threads (explicit counts),
    and the plain sum up to rounding."""
    a = np.random.default_rng(0).standard_normal((5000, 7)).astype(dtype)
    results = []
    for threads in (1, 3, 4):
        previous = parallel.set_num_threads(threads)
        try:
            results.append(parallel.column_sums(a, budget=4096))
        finally:
            parallel.set_num_threads(previous)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    np.testing.assert_allclose(results[0], a.sum(axis=0), rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-3)
    assert results[0].dtype == dtype


def unet_training_step(threads):
    """Outputs, gradients and Adam-updated weights of one training step of a small UNet
    (every fast kernel, attention, the fused Adam) on ``threads`` threads."""
    import tinydiff as td
    previous = parallel.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        unet = td.models.UNet(base_channels=8, channel_mults=(1, 2, 2), num_classes=10, attention_levels=(1,),
                              zero_init_out=False, rng=rng)
        opt = td.optim.AdamW(unet.parameters(), lr=1e-3)
        x = rng.standard_normal((6, 1, 16, 16)).astype(np.float32)
        eps = unet(x, np.arange(6) * 150, y=np.arange(6))
        ((eps - x) ** 2).mean().backward()
        grads = [p.grad.copy() for p in unet.parameters()]
        opt.step()
        return [eps.data] + grads + [p.data for p in unet.parameters()]
    finally:
        parallel.set_num_threads(previous)


def test_many_core_path_equals_one_thread(monkeypatch):
    """The code path a machine with more than two cores takes, run here with the thread count set
    explicitly (4 and 7, whatever this machine has): a whole UNet training step, bit for bit the
    one-thread result."""
    from tinydiff.fast import norm, winograd
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1 << 12)         # many slices even for these small images
    monkeypatch.setattr(norm, "SLICE_BYTES", 1 << 10)
    shared_out = []
    run = parallel._run
    monkeypatch.setattr(parallel, "_run", lambda fn, pieces, threads: (shared_out.append(threads), run(fn, pieces, threads)))
    one = unet_training_step(1)
    assert not shared_out                                         # one thread: nothing handed to the pool
    for threads in (4, 7):
        for a, b in zip(unet_training_step(threads), one):
            np.testing.assert_array_equal(a, b)
    assert set(shared_out) == {4, 7} and len(shared_out) > 100     # every kernel's work went to the pool
