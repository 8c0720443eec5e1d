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
from tinydiff.data import EpochSampler
from tinydiff.engine import Tensor
from tinydiff.guidance import drop_labels
from tinydiff.nn import Linear
from tinydiff.objectives import DiffusionLoss
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
    original = trainer.loss_fn.diffusion.training_losses

    def spy(model, x0, t, **kw):
        seen.append(np.array(t))
        return original(model, x0, t, **kw)

    trainer.loss_fn.diffusion.training_losses = spy
    trainer.train(20)
    assert all(len(np.unique(t)) > 1 for t in seen)            # per example, not per batch
    assert set(np.concatenate(seen)) == set(range(10))          # t = 0 (paper t = 1) through T-1


def test_progress_lines_and_nonfinite_loss_is_reported():
    lines = []
    trainer = make_trainer(log_every=2, log=lines.append)
    trainer.train(4)
    assert len(lines) == 2 and lines[-1].startswith("step  4/4  loss ") and "steps/s" in lines[-1]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]           # nothing left to wait for at the end
    bad = make_trainer()
    bad.optimizer.lr = 1e30
    bad.grad_clip = None
    with pytest.raises(FloatingPointError, match="loss became"), np.errstate(all="ignore"):
        bad.train(50)                                       # diverges on purpose: overflow is expected


def test_trainer_takes_any_loss_function():
    """A least-squares fit y = 3x - 1 through the same loop (no diffusion): the loss goes to ~0
    and the weights to the truth, which is what a VAE's ELBO will use."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1)).astype(np.float32)
    data = (x, 3 * x[:, 0] - 1)

    def loss_fn(model, batch, rng):
        xb, kwargs = batch
        err = model(xb)[:, 0] - Tensor(kwargs["y"].astype(np.float32))
        loss = (err * err).mean()
        return loss, {"mse": loss.item()}

    model = Linear(1, 1, rng=np.random.default_rng(1))
    trainer = Trainer(model, loss_fn, data, batch_size=32, lr=0.05, ema_decay=0.0, log_every=0)
    trainer.train(300)
    assert trainer.losses[-1] < 1e-4 and set(trainer.last_logs) == {"mse"}
    np.testing.assert_allclose([model.weight.data[0, 0], model.bias.data[0]], [3, -1], atol=1e-2)


def test_epochs_visit_every_example_once_and_resume_exactly(tmp_path):
    """EpochSampler: one epoch = a permutation (each index once); a resumed trainer's data order
    (mid-epoch) equals the uninterrupted one's, checked through the losses bit for bit."""
    sampler, rng = EpochSampler(np.arange(10)), np.random.default_rng(0)
    seen = np.concatenate([sampler(rng, 3) for _ in range(10)])          # 30 = three epochs
    for epoch in range(3):
        assert sorted(seen[10 * epoch:10 * epoch + 10]) == list(range(10))

    x = DATA.sample(100, np.random.default_rng(5))                        # 100 points, batch 64
    def run(n_first, path=None):
        diffusion = GaussianDiffusion(linear_beta_schedule(20), model_var_type="fixed_large")
        model = ToyMLP(hidden=16, rng=np.random.default_rng(0))
        trainer = Trainer(model, diffusion, x, batch_size=64, log_every=0, checkpoint_path=path)
        trainer.train(n_first)
        return trainer, diffusion
    straight, _ = run(7)
    first, diffusion = run(3, tmp_path / "ck.npz")
    resumed = Trainer(ToyMLP(hidden=16, rng=np.random.default_rng(9)), diffusion, x, batch_size=64,
                      log_every=0).resume(tmp_path / "ck.npz")
    resumed.train(7)
    np.testing.assert_array_equal(resumed.losses, straight.losses)


def test_label_dropout_replaces_labels_by_null_independently():
    """drop_labels against its definition: each entry is kept or set to its own attribute's null,
    with the dropped fraction near p; p = 0 keeps everything, p = 1 drops everything."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=(20000, 2))
    out = drop_labels(y, 0.1, (10, 6), rng)
    dropped = out != y
    assert np.all(out[dropped[:, 0], 0] == 10) and np.all(out[dropped[:, 1], 1] == 6)
    assert abs(dropped.mean() - 0.1) < 0.01
    assert abs(np.mean(dropped[:, 0] & dropped[:, 1]) - 0.01) < 0.003       # independent: p^2
    np.testing.assert_array_equal(drop_labels(y[:, 0], 0.0, 10, rng), y[:, 0])
    assert np.all(drop_labels(y[:, 0], 1.0, 10, rng) == 10)


def test_diffusion_loss_drops_labels_for_the_model():
    """DiffusionLoss(label_dropout=p) hands the model labels dropped to null at rate p."""
    seen = []

    class Spy:
        null_labels = (3,)

        def __call__(self, x, t, y=None):
            seen.append(np.array(y))
            return Tensor(np.zeros_like(x))

    loss = DiffusionLoss(GaussianDiffusion(linear_beta_schedule(10)), label_dropout=0.5)
    x0, y = np.zeros((4000, 2), np.float32), np.zeros(4000, dtype=np.int64)
    loss(Spy(), (x0, {"y": y}), np.random.default_rng(0))
    assert set(np.unique(seen[0])) == {0, 3} and abs(np.mean(seen[0] == 3) - 0.5) < 0.03


@pytest.mark.parametrize("data, message", [
    ("not data", "data: expected a dataset"),
    (lambda n, rng: np.zeros((n, 2)), r"drawing a trial batch of 2 failed .* sample\(rng, n\)"),
    (lambda rng, n: [0.0] * n, "a trial batch of 2 came back as list"),
])
def test_bad_data_fails_when_the_trainer_is_built(data, message):
    diffusion = GaussianDiffusion(linear_beta_schedule(10))
    with pytest.raises((TypeError, ValueError), match=message):
        Trainer(ToyMLP(hidden=8, rng=np.random.default_rng(0)), diffusion, data)
