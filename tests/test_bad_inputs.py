"""The bad-input catalogue: every wrong argument a learner is likely to pass, each a ValueError
or TypeError whose message names the argument, the value received and what was expected.

Each row is (what, call, expected message). Nothing here writes a file, and none of the calls
changes its inputs or the objects it was given (checked for the Trainer and the checkpoint
files, the only stateful ones). Elsewhere in the catalogue: every IDX corruption
(tests/test_mnist_data.py), every example's flags (tests/test_example_runs.py), the run
helpers (tests/test_runs.py) and a checkpoint for another architecture
(tests/test_train_faults.py).
"""
import json
import os

import numpy as np
import pytest

from tinydiff.checkpoint import META_KEY, CheckpointError, load_checkpoint, save_checkpoint
from tinydiff.diffusion import GaussianDiffusion
from tinydiff.guidance import ClassifierFreeGuidance, drop_labels
from tinydiff.models import ToyMLP, UNet
from tinydiff.objectives import DiffusionLoss, make_diffusion
from tinydiff.samplers import ddim_sample_loop, ddpm_sample_loop, langevin_sample_loop, respace, sample
from tinydiff.schedules import cosine_beta_schedule, linear_beta_schedule, logsnr_beta_schedule
from tinydiff.train import Trainer

RNG = np.random.default_rng
D = GaussianDiffusion(linear_beta_schedule(10))
LEARNED = GaussianDiffusion(linear_beta_schedule(10), model_var_type="learned_range", loss_type="hybrid")
MLP = ToyMLP(hidden=8, rng=RNG(0))
NET = UNet(base_channels=8, channel_mults=(1, 2), num_classes=10, rng=RNG(0))
X = np.zeros((4, 2), np.float32)
T4 = np.zeros(4, np.int64)
IMG = np.zeros((2, 1, 8, 8), np.float32)
T2 = np.zeros(2, np.int64)


def nan_model(x, t, **kwargs):
    return np.full_like(np.asarray(x), np.nan)


def huge_variance_model(x, t, **kwargs):                   # eps = 0, log sigma^2 = 1e4: finite, overflows
    x = np.asarray(x)
    return np.concatenate([np.zeros_like(x), np.full_like(x, 1e4)], axis=1)


def inf_late_model(x, t, **kwargs):                        # fine at first, inf from t = 2 down
    out = np.zeros_like(np.asarray(x))
    out[np.asarray(t) < 3] = np.inf
    return out


CATALOGUE = [
    # ---- data for a model: rank, shape, dtype, channels
    ("ToyMLP: data of rank 3", lambda: MLP(np.zeros((4, 2, 1), np.float32), T4),
     r"x must have shape \[B, 2\], got \(4, 2, 1\)"),
    ("ToyMLP: points of dimension 3", lambda: MLP(np.zeros((4, 3), np.float32), T4),
     r"x must have shape \[B, 2\], got \(4, 3\)"),
    ("ToyMLP: integer points", lambda: MLP(np.zeros((4, 2), np.int64), T4),
     r"x: expected float points \[B, 2\], got dtype int64"),
    ("UNet: 3 channels for a 1-channel model", lambda: NET(np.zeros((2, 3, 8, 8), np.float32), T2),
     r"x: expected images \[B, 1, H, W\], got shape \(2, 3, 8, 8\)"),
    ("UNet: images without a channel axis", lambda: NET(np.zeros((2, 8, 8), np.float32), T2),
     r"x: expected images \[B, 1, H, W\], got shape \(2, 8, 8\)"),
    ("UNet: 8-bit images not scaled", lambda: NET(np.zeros((2, 1, 8, 8), np.uint8), T2),
     r"x: expected float images in \[-1, 1\], got dtype uint8"),
    ("UNet: odd image size", lambda: NET(np.zeros((2, 1, 7, 7), np.float32), T2),
     r"x: height and width must divide by 2 for 2 levels, got 7 x 7"),
    ("diffusion: integer data", lambda: D.q_sample(np.zeros((4, 2), np.int64), T4, rng=RNG(0)),
     r"x0: expected a float32 or float64 array \[B, \*D\], got dtype int64 \(scale integer images"),
    ("diffusion: float16 data", lambda: D.q_sample(np.zeros((4, 2), np.float16), T4, rng=RNG(0)),
     r"x0: expected a float32 or float64 array \[B, \*D\], got dtype float16"),
    ("diffusion: a list for data", lambda: D.q_sample([[0.0, 1.0]], T4[:1], rng=RNG(0)),
     r"x0: expected a float32 or float64 numpy array \[B, \*D\], got list"),
    ("diffusion: a scalar for data", lambda: D.prior_bpd(np.zeros((), np.float32)),
     r"x0: expected an array \[B, \*D\] with a batch axis, got a 0-d array"),
    ("diffusion: examples with no values", lambda: D.prior_bpd(np.zeros((3, 0), np.float32)),
     r"x0: expected examples with at least one value each, got shape \(3, 0\)"),
    ("diffusion: data without channels for a loss", lambda: D.training_losses(MLP, np.zeros(4, np.float32), T4,
                                                                              rng=RNG(0)),
     r"x0: expected \[B, C, \*rest\] with channels on axis 1, got shape \(4,\)"),
    ("diffusion: x0 and x_t of different shapes", lambda: D.q_posterior_mean_variance(X, X[:, :1], T4),
     r"x0: expected the shape of x_t, \(4, 1\), got \(4, 2\)"),
    ("diffusion: eps of another shape", lambda: D.predict_x0_from_eps(X, T4, np.zeros((4, 3), np.float32)),
     r"eps: expected the shape of x_t, \(4, 2\), got \(4, 3\)"),
    ("diffusion: a model output without the variance channels",
     lambda: LEARNED.p_mean_variance_from_output(np.zeros((4, 2), np.float32), X, T4),
     r"model output: expected shape \(4, 4\) for x_t of shape \(4, 2\) and model_var_type='learned_range', "
     r"got \(4, 2\)"),
    # ---- timesteps
    ("t out of range", lambda: D.q_sample(X, np.full(4, 10), rng=RNG(0)), r"t: timesteps must lie in 0..9, got 10"),
    ("t negative", lambda: D.q_sample(X, np.full(4, -1), rng=RNG(0)), r"t: timesteps must lie in 0..9, got -1"),
    ("t float", lambda: D.q_sample(X, np.zeros(4), rng=RNG(0)),
     r"t: expected an int array of shape \[B\], got dtype float64, shape \(4,\)"),
    ("t of the wrong length", lambda: D.q_sample(X, np.zeros(3, np.int64), rng=RNG(0)),
     r"t: expected one timestep per example \(4\), got shape \(3,\)"),
    ("t a scalar", lambda: D.q_sample(X, 3, rng=RNG(0)),
     r"t: expected an int array of shape \[B\], got dtype int64, shape \(\)"),
    ("t of rank 2", lambda: D.q_sample(X, np.zeros((4, 1), np.int64), rng=RNG(0)),
     r"t: expected an int array of shape \[B\], got dtype int64, shape \(4, 1\)"),
    ("t out of range for a model call", lambda: D.p_sample(MLP, X, np.full(4, 12), rng=RNG(0)),
     r"t: timesteps must lie in 0..9, got 12"),
    ("a model called with negative t", lambda: MLP(X, -T4 - 1), r"t: timesteps must be >= 0, got -1"),
    ("a model called with float t", lambda: NET(IMG, np.zeros(2)),
     r"t: expected int timesteps of shape \[2\] \(one per example\), got shape \(2,\) dtype float64"),
    ("a model called with t of the wrong length", lambda: MLP(X, T4[:3]),
     r"t: expected int timesteps of shape \[4\] \(one per example\), got shape \(3,\)"),
    # ---- schedules
    ("an empty schedule", lambda: GaussianDiffusion([]), r"betas: expected at least one timestep, got an empty array"),
    ("a 2-D schedule", lambda: GaussianDiffusion(np.full((2, 2), 0.1)),
     r"betas: expected a 1-D array of shape \[T\], got shape \(2, 2\)"),
    ("a schedule with NaN", lambda: GaussianDiffusion([0.1, np.nan]), r"betas\[1\] = nan: every beta must be finite"),
    ("a schedule with inf", lambda: GaussianDiffusion([np.inf, 0.1]), r"betas\[0\] = inf: every beta must be finite"),
    ("a beta of 0", lambda: GaussianDiffusion([0.0, 0.1]), r"betas\[0\] = 0.0: .* strictly inside \(0, 1\)"),
    ("a beta of 1", lambda: GaussianDiffusion([0.1, 1.0]), r"betas\[1\] = 1.0: .* strictly inside \(0, 1\)"),
    ("a negative beta", lambda: GaussianDiffusion([-0.1, 0.1]), r"betas\[0\] = -0.1: .* strictly inside \(0, 1\)"),
    ("a schedule whose alpha_bar underflows", lambda: GaussianDiffusion(np.full(200, 0.999)),
     r"betas: alpha_bar underflows to 0 at t = \d+ in float64"),
    ("a schedule of words", lambda: GaussianDiffusion("abc"), r"betas: expected a 1-D array of floats \[T\], got 'abc'"),
    ("T = 0", lambda: linear_beta_schedule(0), r"T: expected a positive int number of timesteps, got 0"),
    ("T = 2.5", lambda: cosine_beta_schedule(2.5), r"T: expected a positive int number of timesteps, got 2.5"),
    ("a linear schedule past 1", lambda: linear_beta_schedule(10, 0.5, 1.5), r"betas\[\d\] = .*: every beta must be"),
    ("cosine max_beta of 1", lambda: cosine_beta_schedule(10, max_beta=1.0),
     r"max_beta: expected a value in \(0, 1\), got 1.0"),
    ("logsnr ends swapped", lambda: logsnr_beta_schedule(10, -5.0, 14.0),
     r"logsnr_max: expected a finite value above logsnr_min = 14.0, got -5.0"),
    ("an unknown objective", lambda: make_diffusion("x0-mse", linear_beta_schedule(10)),
     r"objective: expected one of \['eps', 'hybrid', 'sohl-dickstein'\], got 'x0-mse'"),
    ("mse with a learned variance", lambda: GaussianDiffusion(linear_beta_schedule(10), model_var_type="learned"),
     r"loss_type='mse' with model_var_type='learned': the MSE gives the variance no gradient"),
    # ---- NaN or inf in data, or in a model's output during sampling
    ("NaN data in q_sample", lambda: D.q_sample(X + np.nan, T4, rng=RNG(0)),
     r"x0: holds 8 NaN or inf values \(of 8\); expected finite numbers"),
    ("inf data in the training loss", lambda: D.training_losses(MLP, np.full((4, 2), np.inf, np.float32), T4,
                                                                rng=RNG(0)),
     r"x0: holds 8 NaN or inf values"),
    ("NaN data in the bound", lambda: D.calc_bpd_loop(MLP, X + np.nan, rng=RNG(0)), r"x0: holds 8 NaN or inf values"),
    ("injected noise with inf", lambda: D.q_sample(X, T4, noise=np.full((4, 2), np.inf, np.float32)),
     r"noise: holds 8 NaN or inf values"),
    ("NaN in the Trainer's arrays", lambda: Trainer(MLP, D, np.full((5, 2), np.nan, np.float32), log_every=0),
     r"data: the array holds 10 NaN or inf values \(the first at index \(0, 0\): nan\); expected finite numbers"),
    ("inf from the Trainer's data function",
     lambda: Trainer(MLP, D, lambda rng, n: np.full((n, 2), np.inf, np.float32), log_every=0),
     r"data: a trial batch of 2 holds 4 NaN or inf values"),
    ("a NaN model in DDPM sampling", lambda: ddpm_sample_loop(D, nan_model, (4, 2), RNG(0)),
     r"model output: 4 of 4 examples hold NaN or inf, at timesteps t = \[9\]"),
    ("a model turning inf in DDIM sampling", lambda: ddim_sample_loop(D, inf_late_model, (4, 2), RNG(0)),
     r"model output: 4 of 4 examples hold NaN or inf, at timesteps t = \[2\]"),
    ("a NaN model in Langevin sampling", lambda: langevin_sample_loop(D, nan_model, (4, 2), RNG(0)),
     r"model output: 4 of 4 examples hold NaN or inf, at timesteps t = \[9\]"),
    ("a finite model whose variance overflows the sample",
     lambda: ddpm_sample_loop(GaussianDiffusion(linear_beta_schedule(10), model_var_type="learned", loss_type="kl"),
                              huge_variance_model, (4, 2), RNG(0)),
     r"ddpm_sample_loop: the sample became NaN or inf although every model output was finite"),
    ("a NaN model in the bound", lambda: D.calc_bpd_loop(nan_model, X, rng=RNG(0)),
     r"model output: 4 of 4 examples hold NaN or inf, at timesteps t = \[9\]"),
    ("data so large the result overflows", lambda: D.predict_x0_from_eps(np.full((2, 1), 3.4e38, np.float32),
                                                                         np.full(2, 9), np.zeros((2, 1), np.float32)),
     r"predict_x0_from_eps: the result overflowed to inf or NaN although every input is finite \(they reach 3.4e\+38\)"),
    # ---- labels for a conditional model
    ("a label above the classes", lambda: NET(IMG, T2, y=np.array([3, 11])),
     r"y: labels must lie in 0..K per attribute \(K = \[10\] is the null label\), got values in \[3, 11\]"),
    ("a negative label", lambda: NET(IMG, T2, y=np.array([-1, 3])), r"y: labels must lie in 0..K .* got values in \[-1, 3\]"),
    ("float labels", lambda: NET(IMG, T2, y=np.array([3.0, 1.0])), r"y: expected integer labels, got dtype float64"),
    ("labels of the wrong length", lambda: NET(IMG, T2, y=np.array([3])),
     r"y: expected labels of shape \[2\] or \[2, 1\] for 1 attribute\(s\), got shape \(1, 1\)"),
    ("labels for an unconditional model", lambda: UNet(base_channels=8, channel_mults=(1, 2), rng=RNG(0))(IMG, T2, y=T2),
     r"y: this UNet is unconditional \(num_classes=None\)"),
    ("labels out of range through guidance",
     lambda: ClassifierFreeGuidance(NET, 3.0)(IMG, T2, y=np.array([12, 0])), r"y: labels must lie in 0..K"),
    ("float labels to drop", lambda: drop_labels(np.array([0.5, 1.0]), 0.1, 10, RNG(0)),
     r"y: expected integer labels, got dtype float64"),
    # ---- training and sampling settings
    ("batch size 0", lambda: Trainer(MLP, D, X, batch_size=0), r"batch_size must be a positive integer, got 0"),
    ("a negative gradient clip", lambda: Trainer(MLP, D, X, grad_clip=-1.0),
     r"grad_clip: expected a positive max gradient norm or None, got -1.0"),
    ("a negative learning rate", lambda: Trainer(MLP, D, X, lr=-1.0), r"lr must be >= 0, got -1.0"),
    ("an EMA decay above 1", lambda: Trainer(MLP, D, X, ema_decay=1.5), r"EMA decay must be in \[0, 1\], got 1.5"),
    ("label dropout above 1", lambda: DiffusionLoss(D, label_dropout=1.5),
     r"label_dropout: expected a probability in \[0, 1\], got 1.5"),
    ("not a loss function", lambda: Trainer(MLP, "mse", X), r"loss_fn: expected a function .* got str"),
    ("0 sampling steps", lambda: respace(D, 0),
     r"steps: expected a number of steps in 1..10 \(the trained chain's length\), 'ddimK' or a list of steps, got 0"),
    ("more sampling steps than T", lambda: ddim_sample_loop(D, MLP, (4, 2), RNG(0), steps=5000),
     r"steps: expected a number of steps in 1..10 .* got 5000"),
    ("a negative guidance scale", lambda: ClassifierFreeGuidance(NET, -1.5),
     r"scale: expected guidance scales w >= -1 \(0 = no guidance, -1 = the unconditional model\), got -1.5"),
    ("guidance for a model without a null label", lambda: ClassifierFreeGuidance(MLP, 2.0),
     r"null_labels: the model has no null label"),
    ("an unknown sampler", lambda: sample(D, MLP, (4, 2), RNG(0), sampler="euler"),
     r"sampler: expected one of \['ddim', 'ddpm', 'langevin', 'ode', 'sde'\], got 'euler'"),
    ("DDIM eta above 1", lambda: ddim_sample_loop(D, MLP, (4, 2), RNG(0), eta=2.0),
     r"eta: expected a value in \[0, 1\], got 2.0"),
    ("a Langevin step too large", lambda: langevin_sample_loop(D, MLP, (4, 2), RNG(0), step_lr=1e-3),
     r"step_lr: 0.001 / sigma_min\^2 = 10 .* diverge at 4 or more, so use step_lr below 0.0004"),
    ("no rng and no noise", lambda: D.q_sample(X, T4), r"rng: pass noise= or a numpy.random.Generator as rng=, got rng=None"),
]


@pytest.mark.parametrize("what, call, message", CATALOGUE, ids=[row[0] for row in CATALOGUE])
def test_bad_input_is_named(what, call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---------------------------------------------------------------- checkpoints
def good_checkpoint(path):
    save_checkpoint(path, {"model/w": np.ones((3, 2), np.float32), "losses": np.zeros(4)}, {"step": 4, "config": {}})
    return path.read_bytes()


def damage(kind, path, data):
    if kind == "truncated":
        path.write_bytes(data[:len(data) * 2 // 3])
    elif kind == "corrupted":                       # bytes of the stored metadata flipped: its CRC no longer matches
        raw = bytearray(data)
        i = raw.find(b'"format"')
        raw[i:i + 8] = bytes(b ^ 0x20 for b in raw[i:i + 8])
        path.write_bytes(bytes(raw))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "a picture":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif kind == "foreign npz":
        np.savez(path, weights=np.ones(3))
    elif kind == "bare npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif kind == "pickle inside":
        header = json.dumps({"format": "tinydiff-checkpoint", "version": 1, "meta": {}}).encode()
        np.savez(path, obj=np.array([{"run": "this"}], dtype=object), **{META_KEY: np.frombuffer(header, np.uint8)})
    elif kind == "other version":
        header = json.dumps({"format": "tinydiff-checkpoint", "version": 7, "meta": {}}).encode()
        np.savez(path, **{META_KEY: np.frombuffer(header, np.uint8)})
    elif kind == "metadata not JSON":
        np.savez(path, **{META_KEY: np.frombuffer(b"{not json", np.uint8)})


CHECKPOINT_DAMAGE = [("truncated", r"not a readable .npz file"),
                     ("corrupted", r"not a readable .npz file \(BadZipFile: Bad CRC-32"),
                     ("empty", r"not a readable .npz file \(not a zip archive\)"),
                     ("a picture", r"not a readable .npz file \(not a zip archive\)"),
                     ("foreign npz", r"has no '__tinydiff_meta__' entry; it was not written by tinydiff"),
                     ("bare npy", r"is a bare .npy array"),
                     ("pickle inside", r"contains a pickled object array; refusing to load it"),
                     ("other version", r"has format version 7, this tinydiff reads version 1"),
                     ("metadata not JSON", r"metadata is not valid UTF-8 JSON")]


@pytest.mark.parametrize("kind, message", CHECKPOINT_DAMAGE, ids=[k for k, _ in CHECKPOINT_DAMAGE])
def test_a_damaged_or_foreign_checkpoint_is_named_and_left_alone(tmp_path, kind, message):
    path = tmp_path / "checkpoint.npz"
    damage(kind, path, good_checkpoint(path))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    trainer = Trainer(ToyMLP(hidden=8, rng=RNG(1)), D, X, log_every=0)
    weights = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        trainer.resume(path)
    assert all(np.array_equal(v, weights[k]) for k, v in trainer.model.state_dict().items()) and trainer.step == 0
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_checkpoint_missing_its_parts_names_them(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"model/w": np.ones(2)}, {"step": 1})
    with pytest.raises(CheckpointError, match=r"is missing keys \['losses'\]; it holds \['model/w'\]"):
        Trainer(MLP, D, X, log_every=0).resume(path)
    save_checkpoint(path, {"losses": np.zeros(1)}, {"step": 1})
    with pytest.raises(CheckpointError, match=r"(?s)does not fit this trainer, nothing was loaded: .*missing keys: "
                                              r"net.0.weight"):
        Trainer(MLP, D, X, log_every=0).resume(path)


def test_catalogue_size():
    """For the record: how many bad inputs this file tries."""
    assert len(CATALOGUE) + len(CHECKPOINT_DAMAGE) + 2 >= 80
