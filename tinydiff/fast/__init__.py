"""The fast kernels: the same numbers as the plain layers of ``tinydiff/nn``, computed faster.

Read ``tinydiff/nn`` first. There, each layer's forward is the math (the im2col
convolution, the composed GroupNorm, x * sigmoid(x)), and one line hands off to a kernel
of this package:

    if fast.enabled():
        return fast.conv2d(x, weight, bias, stride, padding)
    cols = im2col(x, ...)                                    # the plain path a learner reads

Every kernel names the plain function it must equal, and a test holds it to that function
in float64, values and gradients:

    kernel            module        must equal (tinydiff.nn, the plain path)        test
    conv2d            conv.py       conv2d: im2col + one GEMM                        tests/test_conv_fast.py
    upsample_conv2d   upsample.py   conv2d(upsample_nearest(x, 2), ...)              tests/test_conv_fast.py
      (3x3 layers)    winograd.py   conv2d, via Winograd F(2x2, 3x3)                 tests/test_conv_fast.py
    group_norm        norm.py       group_norm, composed                             tests/test_norm_fast.py
    group_norm_silu   norm.py       silu(group_norm(x))                              tests/test_norm_fast.py
    linear            fused.py      x @ W.T + b                                      tests/test_layers.py
    silu              fused.py      x * sigmoid(x)                                   tests/test_layers.py
    adam_step         adam.py       Optimizer.step with Adam._update, per parameter  tests/test_optim.py
    (thread pool)     parallel.py   threaded == one thread, bit for bit (td.parallel) tests/test_parallel.py

**One switch.** The fast path is the default. ``td.plain()`` (a context manager) or the
environment variable ``TINYDIFF_PLAIN=1`` (read when tinydiff is imported) runs every layer
of every model on its plain path, so a learner can step through the plain UNet in a
debugger; ``td.fast.enabled()`` says which path the layers take now.
tests/test_plain.py shows that under the switch no function of this package is called, and
that the plain and fast UNets give the same outputs and gradients.

The switch is one process-wide count of open ``td.plain()`` blocks (nestable; a lock keeps
the count right when threads enter and leave), not a per-thread flag: the threads of the
pool see the same state as the thread that started them. A second thread running a model
while another is inside ``td.plain()`` therefore runs plain too.
"""
from __future__ import annotations

import contextlib
import os
import threading

from . import adam, conv, fused, norm, parallel, upsample, winograd  # noqa: F401
from .adam import adam_step
from .conv import conv2d
from .upsample import upsample_conv2d
from .fused import linear, silu
from .norm import group_norm, group_norm_silu

ENV_VAR = "TINYDIFF_PLAIN"


def _plain_from_environment() -> bool:
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{ENV_VAR} must be 1 (run every layer on its plain path) or 0 (the fast kernels, "
                     f"the default), got {value!r}")


_PLAIN_FROM_ENV = _plain_from_environment()
_plain_blocks = 0                                   # td.plain() blocks open now, in any thread
_lock = threading.Lock()


def enabled() -> bool:
    """True when layers hand off to the fast kernels (the default); False inside ``td.plain()``
    or with ``TINYDIFF_PLAIN=1``.

    >>> td.fast.enabled()
    True
    >>> with td.plain():
    ...     td.fast.enabled()
    False
    """
    return not _PLAIN_FROM_ENV and _plain_blocks == 0


@contextlib.contextmanager
def plain():
    """Inside the block every layer runs its plain path (the math as written in tinydiff/nn);
    on exit the previous state returns, also after an exception. Blocks nest.

    >>> unet = td.models.UNet(base_channels=8, channel_mults=(1, 2), zero_init_out=False,
    ...                       rng=np.random.default_rng(0))
    >>> x, t = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32), np.array([3, 70])
    >>> with td.plain():                               # im2col convolutions, composed GroupNorm and SiLU
    ...     slow = unet(x, t)
    >>> bool(np.allclose(slow.data, unet(x, t).data, atol=1e-5))   # the same numbers as the fast path
    True
    """
    global _plain_blocks
    with _lock:
        _plain_blocks += 1
    try:
        yield
    finally:
        with _lock:
            _plain_blocks -= 1


__all__ = ["enabled", "plain", "conv2d", "upsample_conv2d", "group_norm", "group_norm_silu", "linear", "silu",
           "adam_step",
           "conv", "winograd", "norm", "fused", "parallel", "adam"]
