"""The plain switch: ``td.plain()`` and ``TINYDIFF_PLAIN=1`` run every layer on its plain path.

Three kinds of truth: the switch's own behaviour (nesting, restoring, threads, the environment
variable); the plain and fast paths of whole models agree in float64 (the MNIST UNet of the
default run and its variants, the VAE), each path being tied to naive twins elsewhere
(tests/test_conv.py, test_layers.py, test_conv_fast.py, test_norm_fast.py); and the plain path
really is plain: with every function of tinydiff.fast made to raise, a model still trains a step
under ``td.plain()``, while the default path calls those functions."""
import functools
import inspect
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import tinydiff as td
from tinydiff import fast

ROOT = os.path.join(os.path.dirname(__file__), "..")
MNIST_UNET = dict(base_channels=16, channel_mults=(1, 2, 2), num_classes=10)   # the default MNIST run's
needs_fast_path = pytest.mark.skipif(not td.fast.enabled(), reason="TINYDIFF_PLAIN=1 is set: the fast path is off")


# ---------------------------------------------------------------- the switch
@needs_fast_path
def test_plain_nests_and_restores_even_after_an_error():
    assert fast.enabled()
    with td.plain():
        assert not fast.enabled()
        with td.plain():
            assert not fast.enabled()
        assert not fast.enabled()                       # the outer block is still open
    assert fast.enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with td.plain():
            raise RuntimeError("inside")
    assert fast.enabled()


@needs_fast_path
def test_switch_is_process_wide_and_counts_right_under_threads():
    """Threads started inside td.plain() (the kernels' pool, a user's) see it; many threads
    entering and leaving blocks at once leave the count at zero."""
    seen = []
    with td.plain():
        worker = threading.Thread(target=lambda: seen.append(fast.enabled()))
        worker.start()
        worker.join()
    assert seen == [False]

    def enter_and_leave():
        for _ in range(300):
            with td.plain():
                assert not fast.enabled()

    threads = [threading.Thread(target=enter_and_leave) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fast.enabled()


def run_fresh(code, **env):
    """Run ``code`` in a new interpreter that imports this checkout's tinydiff, with ``env`` set."""
    environ = {k: v for k, v in os.environ.items() if k != "TINYDIFF_PLAIN"}
    environ.update(PYTHONPATH=os.path.abspath(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)


def test_environment_variable_runs_everything_plain_and_rejects_bad_values():
    code = "import tinydiff as td; print(td.fast.enabled())"
    assert run_fresh(code, TINYDIFF_PLAIN="1").stdout.strip() == "False"
    assert run_fresh(code, TINYDIFF_PLAIN="0").stdout.strip() == "True"
    assert run_fresh(code).stdout.strip() == "True"
    bad = run_fresh(code, TINYDIFF_PLAIN="yes")
    assert bad.returncode != 0
    assert "TINYDIFF_PLAIN must be 1" in bad.stderr and "'yes'" in bad.stderr


# ---------------------------------------------------------------- plain == fast, whole models, float64
def forward_backward(model, x, t, **kwargs):
    """Output and every parameter's gradient of sum(out * g) for a fixed g."""
    model.zero_grad()
    out = model(x, t, **kwargs)
    g = np.random.default_rng(7).standard_normal(out.shape)
    out.backward(g)
    return out.data.copy(), {name: p.grad.copy() for name, p in model.named_parameters()}


def assert_paths_agree(fast_result, plain_result, rtol=1e-10):
    (out_f, grads_f), (out_p, grads_p) = fast_result, plain_result
    np.testing.assert_allclose(out_f, out_p, rtol=rtol, atol=rtol * np.abs(out_p).max())
    assert grads_f.keys() == grads_p.keys()
    for name in grads_p:
        scale = np.abs(grads_p[name]).max()
        np.testing.assert_allclose(grads_f[name], grads_p[name], rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("variant", [{}, dict(learned_variance=True, attention_levels=(1,)), dict(scale_shift=True)],
                         ids=["mnist", "learned_variance+attention", "scale_shift"])
def test_mnist_unet_plain_equals_fast_in_float64(variant):
    """The MNIST UNet of the default run (base 16, mults (1, 2, 2), 10 classes): the same output
    and parameter gradients on both paths, to rtol 1e-10 in float64."""
    model = td.models.UNet(**MNIST_UNET, **variant, zero_init_out=False, rng=np.random.default_rng(0),
                           dtype=np.float64)
    rng = np.random.default_rng(1)
    x, t, y = rng.standard_normal((3, 1, 28, 28)), np.array([0, 417, 999]), np.array([3, 10, 7])
    fast_result = forward_backward(model, x, t, y=y)
    with td.plain():
        plain_result = forward_backward(model, x, t, y=y)
    assert_paths_agree(fast_result, plain_result)


@pytest.mark.parametrize("latent_shape", [(16,), (4, 7, 7)])
def test_vae_plain_equals_fast_in_float64(latent_shape):
    vae = td.models.VAE(latent_shape, rng=np.random.default_rng(0), dtype=np.float64)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 28, 28))

    def run():
        vae.zero_grad()
        mu, log_variance = vae.encode(x)
        out = vae.decode(mu + log_variance)
        out.backward(np.random.default_rng(2).standard_normal(out.shape))
        return out.data.copy(), {name: p.grad.copy() for name, p in vae.named_parameters()}

    fast_result = run()
    with td.plain():
        plain_result = run()
    assert_paths_agree(fast_result, plain_result)


# ---------------------------------------------------------------- the plain path is really plain
def fast_functions():
    """(module, name, function) for every function defined in the tinydiff.fast package, wherever
    it is bound in the package (re-exports and imports included), except the switch itself."""
    modules = [fast, fast.conv, fast.winograd, fast.norm, fast.fused, fast.parallel, fast.adam]
    for module in modules:
        for name, obj in vars(module).items():
            ours = inspect.isfunction(obj) and obj.__module__.startswith("tinydiff.fast")
            if ours and name not in ("enabled", "plain"):
                yield module, name, obj


def one_training_step_of_each_model():
    """Forward and backward of a small MNIST UNet (conv, phase conv, GroupNorm(+SiLU), attention,
    Linear, SiLU), a VAE and a ToyMLP, in float32, then one Adam step of all their parameters."""
    rng = np.random.default_rng(0)
    unet = td.models.UNet(base_channels=8, channel_mults=(1, 2, 2), num_classes=10, attention_levels=(1,),
                          zero_init_out=False, rng=rng)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    (unet(x, np.array([1, 500]), y=np.array([2, 10])) ** 2).mean().backward()
    vae = td.models.VAE((4, 7, 7), channels=(8, 16), rng=rng)
    (vae.decode(vae.encode(x)[0]) ** 2).mean().backward()
    mlp = td.models.ToyMLP(hidden=16, rng=rng)
    (mlp(rng.standard_normal((5, 2)).astype(np.float32), np.arange(5)) ** 2).mean().backward()
    params = [p for m in (unet, vae, mlp) for p in m.parameters()]
    td.optim.Adam(params, lr=1e-3).step()
    return [p.grad for p in params]


@needs_fast_path
def test_plain_path_calls_no_fast_kernel(monkeypatch):
    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the plain path called tinydiff.fast's {name}")
        return call

    patched = 0
    for module, name, fn in fast_functions():
        monkeypatch.setattr(module, name, forbidden(f"{fn.__module__}.{fn.__qualname__}"))
        patched += 1
    assert patched > 40                                  # conv, winograd, norm, fused, the pool
    with td.plain():
        grads = one_training_step_of_each_model()
    assert all(g is not None and np.isfinite(g).all() for g in grads)
    with pytest.raises(AssertionError, match="the plain path called"):   # and the patching bites:
        one_training_step_of_each_model()


@needs_fast_path
def test_fast_path_calls_the_fast_kernels(monkeypatch):
    called = set()

    def recording(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            called.add(f"{fn.__module__}.{fn.__qualname__}")
            return fn(*args, **kwargs)
        return call

    for module, name, fn in fast_functions():
        monkeypatch.setattr(module, name, recording(fn))
    one_training_step_of_each_model()
    for kernel in ("conv.conv2d", "upsample.upsample_conv2d", "norm.group_norm", "norm.group_norm_silu",
                   "fused.linear", "fused.silu", "winograd.conv3x3_forward", "winograd.conv3x3_backward",
                   "parallel.parallel_slices", "parallel.column_sums", "adam.adam_step"):
        assert f"tinydiff.fast.{kernel}" in called, kernel
