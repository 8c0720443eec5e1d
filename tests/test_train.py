"""The shared training loop: per-example timesteps over the whole chain, checkpoints
that resume exactly, and crash safety."""
import os

import numpy as np
import pytest

from tinydiff.checkpoint import load_checkpoint
from tinydiff.data import make_dataset
from tinydiff.diffusion import GaussianDiffusion
from tinydiff.models import ToyMLP
from tinydiff.schedules import linear_beta_schedule
from tinydiff.train import Trainer

DATA = make_dataset("8gaussians")


def make_trainer(seed=0, loss_type="hybrid", T=20, **kw):
    var = "learned_range" if loss_type != "mse" else "fixed_large"
    diffusion = GaussianDiffusion(linear_beta_schedule(T), model_var_type=var, loss_type=loss_type)
    model = ToyMLP(heads=2 if loss_type != "mse" else 1, hidden=32, rng=np.random.default_rng(seed))
    kw.setdefault("log_every", 0)
    return Trainer(model, diffusion, lambda rng, n: DATA.sample(n, rng), batch_size=64, lr=1e-3,
                   warmup_steps=5, seed=seed, **kw)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    """Train 12 steps straight; or 7, checkpoint, rebuild from scratch, resume, 5 more: same weights,
    same optimizer moments, same EMA, same losses, same RNG stream."""
    straight = make_trainer()
    straight.train(12)

    path = tmp_path / "ck.npz"
    first = make_trainer(checkpoint_path=path)
    first.train(7)
    resumed = make_trainer(seed=123).resume(path)            # different init: everything must come from disk
    assert resumed.step == 7
    first_state, resumed_state = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert first_state.keys() == resumed_state.keys()
    for key in first_state:
        np.testing.assert_array_equal(first_state[key], resumed_state[key])
    resumed.train(12)

    np.testing.assert_array_equal(resumed.losses, straight.losses)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for key, value in straight.ema.state_dict().items():
        np.testing.assert_array_equal(value, resumed.ema.state_dict()[key])
    assert straight.optimizer.lr == resumed.optimizer.lr


def test_checkpoint_holds_everything_and_no_pickles(tmp_path):
    path = tmp_path / "ck.npz"
    trainer = make_trainer(checkpoint_path=path, checkpoint_every=2, config={"name": "test"})
    trainer.train(4)
    arrays, meta = load_checkpoint(path)
    assert meta["step"] == 4 and meta["config"] == {"name": "test"}
    assert any(k.startswith("model/") for k in arrays) and any(k.startswith("ema/") for k in arrays)
    assert any("exp_avg_sq" in k for k in arrays) and arrays["losses"].shape == (4,)
    with np.load(path, allow_pickle=False) as f:                # readable without pickle
        assert len(f.files) == len(arrays) + 1
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    trainer = make_trainer(checkpoint_path=path)
    trainer.train(3)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert path.read_bytes() == before
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_timesteps_are_per_example_and_cover_the_whole_chain():
    """Pitfalls of a well-known course script: one t for the whole batch, and the first step
    (the paper's t = 1, our t = 0) never trained. Record the t the loss sees."""
    trainer = make_trainer(loss_type="kl", T=10)
    seen = []
    original = trainer.diffusion.training_losses

    def spy(model, x0, t, **kw):
        seen.append(np.array(t))
        return original(model, x0, t, **kw)

    trainer.diffusion.training_losses = spy
    trainer.train(20)
    assert all(len(np.unique(t)) > 1 for t in seen)            # per example, not per batch
    assert set(np.concatenate(seen)) == set(range(10))          # t = 0 (paper t = 1) through T-1


def test_progress_lines_and_nonfinite_loss_is_reported():
    lines = []
    trainer = make_trainer(log_every=2, log=lines.append)
    trainer.train(4)
    assert len(lines) == 2 and "step      4/4" in lines[-1] and "steps/s" in lines[-1] and "ETA" in lines[-1]
    bad = make_trainer()
    bad.optimizer.lr = 1e30
    bad.grad_clip = None
    with pytest.raises(FloatingPointError, match="loss became"), np.errstate(all="ignore"):
        bad.train(50)                                       # diverges on purpose: overflow is expected
