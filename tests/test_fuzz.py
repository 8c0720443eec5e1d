"""Fuzzing the public functions with Hypothesis: arbitrary shapes, dtypes and values.

The contract: each call returns finite results or raises ValueError or TypeError, with a
message that names an argument; never an obscure NumPy error (an IndexError, a broadcast
failure, a "could not convert"), a silent NaN or inf, or a crash.

Layers are held to a narrower contract, on purpose: like PyTorch's, they pass a NaN in
their input through (scanning every activation would tax every training step); the checks
sit at the boundaries instead: the diffusion refuses non-finite data and model outputs, the
samplers stop at the first non-finite step, and the Trainer at the first non-finite loss.
The MNIST IDX reader is fuzzed in tests/test_mnist_data.py (random bytes, every truncation).
"""
import io
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinydiff import gaussian, nn
from tinydiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinydiff.diffusion import MODEL_MEAN_TYPES, MODEL_VAR_TYPES, GaussianDiffusion
from tinydiff.engine import Tensor
from tinydiff.schedules import (cosine_beta_schedule, extract, linear_beta_schedule, logsnr_beta_schedule,
                                validate_betas)

# TINYDIFF_FUZZ_EXAMPLES=1500 python -m pytest tests/test_fuzz.py for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("TINYDIFF_FUZZ_EXAMPLES", 100)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLEAR = (ValueError, TypeError)
COUNTS = {}          # examples run per test, for the record (printed with pytest -s)


def count(name):
    COUNTS[name] = COUNTS.get(name, 0) + 1


def finite_everywhere(result):
    """Every array in a result (array, Tensor, tuple, list or dict of them) is finite."""
    if isinstance(result, dict):
        return all(finite_everywhere(v) for v in result.values())
    if isinstance(result, (tuple, list)):
        return all(finite_everywhere(v) for v in result)
    arr = np.asarray(result.data if isinstance(result, Tensor) else result)
    return arr.dtype.kind not in "fc" or bool(np.isfinite(arr).all())


def call(fn, *args, **kwargs):
    """fn(...) must be finite or raise ValueError/TypeError naming what was wrong."""
    try:
        with np.errstate(all="ignore"):             # warnings are not the point; results and errors are
            result = fn(*args, **kwargs)
    except CLEAR as err:
        assert str(err), f"{type(err).__name__} without a message"
        return None
    assert finite_everywhere(result), f"{getattr(fn, '__name__', fn)} returned NaN or inf"
    return result


any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex128])


def arrays(dtype=None, max_dims=4, max_side=4, elements=None):
    return (dtypes if dtype is None else st.just(dtype)).flatmap(lambda dt: hnp.arrays(
        dt, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side),
        elements=elements if elements is not None and np.dtype(dt).kind == "f" else None))


# ---------------------------------------------------------------- schedules
@FUZZ
@given(T=st.one_of(st.integers(-3, 300), any_float, st.just(True), st.none()),
       a=any_float, b=any_float, kind=st.sampled_from(["linear", "cosine", "logsnr"]))
def test_schedules(T, a, b, kind):
    count("schedules")
    if kind == "linear":
        betas = call(linear_beta_schedule, T, a, b)
    elif kind == "cosine":
        betas = call(cosine_beta_schedule, T, abs(a) % 1.0 if np.isfinite(a) else a, b % 1.0 if np.isfinite(b) else b)
    else:
        betas = call(logsnr_beta_schedule, T, a, b)
    if betas is not None:
        assert betas.shape == (T,) and np.all((betas > 0) & (betas < 1))


@FUZZ
@given(betas=arrays(max_dims=2, max_side=40))
def test_validate_betas_and_the_diffusion_built_on_them(betas):
    count("validate_betas / GaussianDiffusion")
    checked = call(validate_betas, betas)
    if checked is not None:
        assert checked.dtype == np.float64 and checked.ndim == 1
        call(GaussianDiffusion, betas)


@FUZZ
@given(arr=arrays(np.float64, max_dims=1, max_side=10), t=arrays(max_dims=2, max_side=5),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=4))
def test_extract(arr, t, shape):
    count("extract")
    out = call(extract, arr, t, tuple(shape))
    if out is not None:
        assert out.shape == (shape[0],) + (1,) * (len(shape) - 1)


# ---------------------------------------------------------------- GaussianDiffusion methods
DIFFUSIONS = {(m, v): GaussianDiffusion(linear_beta_schedule(10), model_mean_type=m, model_var_type=v,
                                        loss_type="hybrid" if v.startswith("learned") else "mse")
              for m in MODEL_MEAN_TYPES for v in MODEL_VAR_TYPES}

data_values = (st.floats(-1e4, 1e4, allow_nan=False, width=32)
               | st.floats(allow_nan=False, allow_infinity=False, width=32)
               | st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 3.4e38, -3.4e38, 1e30]))


def like(x, value=0.5):
    return np.full(np.shape(x), value, dtype=x.dtype if isinstance(x, np.ndarray) and x.dtype.kind == "f"
                   else np.float32)


def constant_model(out_value, learned):
    """A model answering out_value everywhere, with 2C channels when the variance is learned."""
    def model(x, t, **kwargs):
        x = np.asarray(x)
        shape = (x.shape[0], x.shape[1] * (2 if learned else 1)) + x.shape[2:] if x.ndim >= 2 else x.shape
        return np.full(shape, out_value, dtype=x.dtype if x.dtype.kind == "f" else np.float32)
    return model


METHODS = ["q_step_mean_variance", "q_step", "q_mean_variance", "q_sample", "q_posterior_mean_variance",
           "predict_x0_from_eps", "predict_eps_from_x0", "predict_x0_from_v", "velocity", "predict_x0_from_mean",
           "score_from_eps", "p_mean_variance", "p_mean_variance_from_output", "p_sample", "vb_terms_bpd",
           "training_losses", "prior_bpd", "calc_bpd_loop"]


@FUZZ
@given(method=st.sampled_from(METHODS), types=st.sampled_from(sorted(DIFFUSIONS)),
       x=arrays(elements=data_values), other=st.sampled_from(["same", "other shape", "nan"]),
       bad_t=st.one_of(st.none(), arrays(max_dims=2, max_side=5), st.integers(-2, 12),
                       st.lists(st.integers(-2, 12), max_size=5)),
       t_values=st.lists(st.integers(0, 9), min_size=5, max_size=5), out_value=data_values)
def test_diffusion_methods(method, types, x, other, bad_t, t_values, out_value):
    """Half the time t is right for x (int [B] in 0..T-1), so the methods get past t to the data."""
    count("GaussianDiffusion methods")
    d = DIFFUSIONS[types]
    batch = x.shape[0] if x.ndim else 1
    t = np.resize(np.asarray(t_values, np.int64), batch) if bad_t is None else bad_t
    y = like(x) if other == "same" else (np.zeros((3, 5), np.float32) if other == "other shape" else like(x, np.nan))
    model = constant_model(out_value, d.learned_variance)
    rng = np.random.default_rng(0)
    output = model(x, t)
    args = {
        "q_step_mean_variance": (x, t), "q_step": (x, t, None, rng), "q_mean_variance": (x, t),
        "q_sample": (x, t, None, rng), "q_posterior_mean_variance": (y, x, t),
        "predict_x0_from_eps": (x, t, y), "predict_eps_from_x0": (x, t, y), "predict_x0_from_v": (x, t, y),
        "velocity": (x, t, y), "predict_x0_from_mean": (x, t, y), "score_from_eps": (x, t, y),
        "p_mean_variance": (model, x, t), "p_mean_variance_from_output": (output, x, t),
        "p_sample": (model, x, t, rng), "vb_terms_bpd": (output, y, x, t), "training_losses": (model, x, t, None, rng),
        "prior_bpd": (x,), "calc_bpd_loop": (model, x, rng)}[method]
    call(getattr(d, method), *args)


# ---------------------------------------------------------------- Gaussian math
@FUZZ
@given(fn=st.sampled_from(["normal_kl", "gaussian_log_likelihood", "discretized_gaussian_log_likelihood",
                           "approx_standard_normal_cdf", "decoder_nll"]),
       a=arrays(np.float64, max_dims=2, elements=any_float), b=arrays(np.float64, max_dims=2, elements=any_float),
       kind=st.sampled_from(["continuous", "discretized", "other"]))
def test_gaussian_math(fn, a, b, kind):
    count("Gaussian math")
    f = getattr(gaussian, fn)
    args = {"normal_kl": (a, b, a, b), "gaussian_log_likelihood": (a, a, b),
            "discretized_gaussian_log_likelihood": (np.clip(np.nan_to_num(a), -1, 1), a, b),
            "approx_standard_normal_cdf": (a,), "decoder_nll": (a, a, b, kind)}[fn]
    call(f, *args)


# ---------------------------------------------------------------- layers
LAYERS = {
    "Linear": lambda: nn.Linear(3, 4, rng=np.random.default_rng(0)),
    "Conv2d": lambda: nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0)),
    "GroupNorm": lambda: nn.GroupNorm(2, 4),
    "SiLU": lambda: nn.SiLU(),
    "Embedding": lambda: nn.Embedding(5, 3, rng=np.random.default_rng(0)),
    "Upsample": lambda: nn.Upsample(2),
    "SelfAttention2d": lambda: nn.SelfAttention2d(4, 2, rng=np.random.default_rng(0)),
    "SinusoidalEmbedding": lambda: nn.SinusoidalEmbedding(8),
}
layer_values = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@FUZZ
@given(name=st.sampled_from(sorted(LAYERS)), x=arrays(elements=layer_values, max_side=5))
def test_layers(name, x):
    """Any shape and dtype: the right output or a ValueError/TypeError; finite values stay finite."""
    count("layers")
    if name == "Embedding":
        x = x.astype(np.int64) if x.dtype.kind in "fcb" and np.isfinite(x).all() else x
    call(LAYERS[name](), x)


# ---------------------------------------------------------------- the checkpoint reader
def a_checkpoint(tmp_path):
    path = tmp_path / "good.npz"
    if not path.exists():
        save_checkpoint(path, {"model/w": np.arange(12.0).reshape(3, 4), "losses": np.ones(5)},
                        {"step": 5, "config": {"T": 10}})
    return path.read_bytes()


def read(tmp_path, data):
    path = tmp_path / "fuzzed.npz"
    path.write_bytes(data)
    try:
        load_checkpoint(path)
    except CheckpointError as err:              # a ValueError naming the file
        assert str(path) in str(err)


@FUZZ
@given(data=st.binary(max_size=2000) | st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b))
def test_checkpoint_reader_on_random_bytes(tmp_path, data):
    count("checkpoint reader")
    read(tmp_path, data)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
       tail=st.binary(max_size=64))
def test_checkpoint_reader_on_damaged_checkpoints(tmp_path, cut, flips, tail):
    """A good checkpoint truncated, with bytes flipped, or with garbage appended: it loads (zip can
    tolerate a flip in unused padding), or it is a CheckpointError; nothing else."""
    count("checkpoint reader")
    data = bytearray(a_checkpoint(tmp_path))
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    read(tmp_path, bytes(data[:max(0, int(cut * len(data)))] if cut < 0.5 else data) + tail)


@FUZZ
@given(member=st.sampled_from(["model/w.npy", "losses.npy", "__tinydiff_meta__.npy"]),
       payload=st.binary(max_size=300))
def test_checkpoint_reader_on_a_replaced_member(tmp_path, member, payload):
    """A well-formed zip whose one array is replaced by anything (the CRC matches, so only the
    reader's own checks stand between the bytes and the caller)."""
    count("checkpoint reader")
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(a_checkpoint(tmp_path))) as good, zipfile.ZipFile(buf, "w") as bad:
        for info in good.infolist():
            bad.writestr(info.filename, payload if info.filename == member else good.read(info.filename))
    read(tmp_path, buf.getvalue())


def test_zz_report_counts():
    """Prints how many examples each fuzz test ran (pytest -s shows it)."""
    print("fuzz examples run:", COUNTS, "total", sum(COUNTS.values()))
