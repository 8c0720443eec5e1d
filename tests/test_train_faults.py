"""The Trainer under faults: NaN and inf stop it before they reach the weights and name the
step, the loss term and the parameter; a failed checkpoint write keeps the previous file; a
checkpoint that does not fit is refused whole, leaving the trainer as it was."""
import errno
import os

import numpy as np
import pytest

from tinydiff.checkpoint import CheckpointError
from tinydiff.data import make_dataset
from tinydiff.diffusion import GaussianDiffusion
from tinydiff.engine import Tensor
from tinydiff.models import ToyMLP
from tinydiff.nn import Linear
from tinydiff.schedules import linear_beta_schedule
from tinydiff.train import MAX_SKIPS_IN_A_ROW, CheckpointWriteError, NonFiniteError, Trainer

DATA = make_dataset("8gaussians")


def toy_trainer(path=None, hidden=16, seed=0, **kw):
    diffusion = GaussianDiffusion(linear_beta_schedule(20), model_var_type="learned_range", loss_type="hybrid")
    model = ToyMLP(heads=2, hidden=hidden, rng=np.random.default_rng(seed))
    return Trainer(model, diffusion, lambda rng, n: DATA.sample(n, rng), batch_size=32, log_every=0,
                   checkpoint_path=path, checkpoint_every=1 if path else 0, seed=seed, **kw)


def weights(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


def test_a_nan_weight_stops_training_naming_step_terms_and_parameter(tmp_path):
    path = tmp_path / "ck.npz"
    trainer = toy_trainer(path)
    trainer.train(3)
    saved = path.read_bytes()
    trainer.model.net[2].weight.data[4, 7] = np.nan                     # a corrupted weight
    with pytest.raises(NonFiniteError) as info:
        trainer.train(6)
    message = str(info.value)
    assert "loss became nan at step 4" in message
    assert "non-finite loss terms: mse = nan, loss = nan, vb = nan" in message
    assert "first non-finite parameter: net.2.weight (1 of" in message
    assert "the last checkpoint (step 3" in message and "is intact" in message
    assert trainer.step == 3 and len(trainer.losses) == 3
    assert path.read_bytes() == saved                                    # the last good checkpoint, untouched


def test_a_nonfinite_gradient_with_a_finite_loss_is_named():
    """sqrt at 0 has an infinite derivative: the loss is 0, its gradient NaN."""
    model = Linear(2, 1, rng=np.random.default_rng(0))

    def loss_fn(model, batch, rng):
        out = model(batch)
        return (out * 0.0).sqrt().mean(), {"sqrt": 0.0}

    trainer = Trainer(model, loss_fn, np.ones((8, 2), np.float32), batch_size=4, log_every=0, grad_clip=None)
    before = weights(trainer)
    with pytest.raises(NonFiniteError, match=r"at step 1 the loss is finite \(0\) but the gradient norm is nan.*"
                                             r"every parameter is finite.*first non-finite gradient: weight"):
        with np.errstate(all="ignore"):
            trainer.train(1)
    for k, v in weights(trainer).items():
        np.testing.assert_array_equal(v, before[k])                      # nothing was updated


def test_skip_nonfinite_skips_bad_steps_and_gives_up_after_many_in_a_row():
    model = Linear(1, 1, rng=np.random.default_rng(0))
    calls = []

    def loss_fn(model, batch, rng):
        calls.append(1)
        err = model(batch) - Tensor(np.full((len(batch), 1), 2.0, np.float32))
        loss = (err * err).mean()
        if len(calls) % 3 == 0:                                          # every third batch is poisoned
            loss = loss * float("nan")
        return loss, {"mse": float(loss.item())}

    lines = []
    trainer = Trainer(model, loss_fn, np.ones((16, 1), np.float32), batch_size=4, log_every=0,
                      skip_nonfinite=True, log=lines.append)
    trainer.train(10)
    assert trainer.step == 10 and len(trainer.losses) == 10 and all(np.isfinite(trainer.losses))
    assert trainer.skipped == [3, 5, 7, 9] and len(calls) == 14
    assert len(lines) == 4 and lines[0].startswith("skipped: loss became nan at step 3; non-finite loss terms: mse")

    def always_nan(model, batch, rng):
        return model(batch).mean() * float("nan"), {}

    stuck = Trainer(Linear(1, 1, rng=np.random.default_rng(0)), always_nan, np.ones((4, 1), np.float32),
                    batch_size=2, log_every=0, skip_nonfinite=True, log=lambda line: None)
    with pytest.raises(NonFiniteError, match=f"{MAX_SKIPS_IN_A_ROW} steps in a row were not finite"):
        stuck.train(1)


def test_nonfinite_data_is_refused_when_the_trainer_is_built():
    x = DATA.sample(50, np.random.default_rng(0))
    x[17, 1] = np.inf
    with pytest.raises(ValueError, match=r"data: the array holds 1 NaN or inf values \(the first at index \(17, 1\)"):
        toy_trainer().__class__(ToyMLP(hidden=8), GaussianDiffusion(linear_beta_schedule(10)), x)
    with pytest.raises(ValueError, match=r"data: a trial batch of 2 holds 4 NaN"):
        Trainer(ToyMLP(hidden=8), GaussianDiffusion(linear_beta_schedule(10)),
                lambda rng, n: np.full((n, 2), np.nan, np.float32))


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    trainer = toy_trainer(path)
    trainer.train(2)
    saved = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointWriteError, match=r"could not write the checkpoint .*ck.npz at step 3 "
                                                   r"\(No space left on device\); the previous checkpoint "
                                                   r"\(step 2\) is intact") as info:
        trainer.train(5)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    monkeypatch.undo()
    assert path.read_bytes() == saved and sorted(os.listdir(tmp_path)) == ["ck.npz"]
    trainer.save(path)                                                   # room again: training can go on
    assert toy_trainer().resume(path).step == 3


def test_a_checkpoint_for_another_architecture_is_refused_whole(tmp_path):
    path = tmp_path / "ck.npz"
    toy_trainer(path, hidden=16).train(2)
    other = toy_trainer(hidden=24, seed=5)
    before, rng_before = weights(other), other.rng.bit_generator.state
    with pytest.raises(CheckpointError) as info:
        other.resume(path)
    message = str(info.value)
    assert "ck.npz does not fit this trainer, nothing was loaded" in message
    assert "net.0.weight: checkpoint (16, 66) vs model (24, 66)" in message
    assert "net.6.weight: checkpoint (4, 16) vs model (4, 24)" in message
    for k, v in weights(other).items():
        np.testing.assert_array_equal(v, before[k])
    assert other.step == 0 and other.rng.bit_generator.state == rng_before

    # weights that fit but data state that does not (the checkpoint was made on other data)
    diffusion = GaussianDiffusion(linear_beta_schedule(20), model_var_type="learned_range", loss_type="hybrid")
    x = DATA.sample(100, np.random.default_rng(0))
    first = Trainer(ToyMLP(heads=2, hidden=16), diffusion, x, batch_size=32, log_every=0, checkpoint_path=path)
    first.train(2)
    smaller = Trainer(ToyMLP(heads=2, hidden=16, rng=np.random.default_rng(3)), diffusion, x[:60], batch_size=32,
                      log_every=0)
    before = weights(smaller)
    with pytest.raises(CheckpointError, match="an epoch order of 100 .* does not fit 60 examples"):
        smaller.resume(path)
    for k, v in weights(smaller).items():
        np.testing.assert_array_equal(v, before[k])                      # the model loaded first was rolled back
