"""examples/mnist.py end to end: a tiny fast run in the default suite (a few hundred digits,
a tiny UNet), the real default run with its targets behind the slow mark."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import tinydiff as td
from mnist_copy import MNIST_DIR, needs_mnist

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "mnist.py")
OUTPUTS = ["grid.png", "guidance.png", "trajectory.png", "samples.npy", "labels.npy", "metrics.json", "checkpoint.npz"]


pytestmark = needs_mnist


def run(argv) -> dict:
    """python examples/mnist.py *argv, in this process; returns the run's metrics."""
    return td.runs.run_example(EXAMPLE, argv)["metrics"]


TINY = ["--width", "8", "--steps", "12", "--batch", "16", "--train-limit", "300", "--T", "50",
        "--n-samples", "20", "--sample-steps", "5", "--bpd-digits", "20", "--bpd-timesteps", "6",
        "--no-download", "--no-score"]


# DDPM's linear betas need T >= ~70 to end nearer noise than data (the example refuses less).
@pytest.mark.parametrize("extra", [[], ["--objective", "hybrid", "--sampler", "ddpm", "--schedule", "linear",
                                         "--T", "100"],
                                   ["--unconditional", "--weighting", "none"]])
def test_tiny_run_writes_every_output(tmp_path, extra):
    out = tmp_path / "run"
    metrics = run(TINY + extra + ["--data-dir", str(MNIST_DIR), "--out", str(out)])
    for name in OUTPUTS:
        if name == "guidance.png" and "--unconditional" in extra:
            continue
        assert (out / name).is_file(), name
    samples = np.load(out / "samples.npy", allow_pickle=False)
    labels = np.load(out / "labels.npy", allow_pickle=False)
    assert samples.shape == (20, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1 and list(labels[:10]) == list(range(10))
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["steps"] == 12 and metrics["sample_steps"] == 5
    bpd = metrics["bpd"]
    assert math.isfinite(bpd["total"]) and bpd["digits"] == 20 and bpd["model_calls_per_digit"] == 6
    assert bpd["total"] == pytest.approx(bpd["prior_L_T"] + bpd["decoder_L_0"] + bpd["kl_terms_L_1_to_L_T-1"])
    with Image.open(out / "grid.png") as im:                   # 10 rows of 2 digits (20 samples), 3x enlarged
        assert im.size == ((2 * 30 + 2) * 3, (10 * 30 + 2) * 3) if "--unconditional" not in extra else True


def test_resume_continues_a_finished_run(tmp_path):
    out = str(tmp_path / "run")
    first = run(TINY + ["--data-dir", str(MNIST_DIR), "--out", out])
    again = run(TINY + ["--data-dir", str(MNIST_DIR), "--out", out, "--resume", "--bpd-digits", "0"])
    assert again["steps"] == first["steps"] == 12


def test_cosine_offset_is_kept_by_the_checkpoint(tmp_path):
    """--cosine-s sets the cosine schedule's offset; the run's checkpoint rebuilds that schedule,
    and its first step (the decoder's noise at t = 1) is smaller than with the default offset."""
    out = tmp_path / "run"
    run(TINY + ["--objective", "hybrid", "--cosine-s", "5e-4", "--data-dir", str(MNIST_DIR), "--out", str(out)])
    diffusion, _, meta = td.recipes.load_mnist_run(str(out / "checkpoint.npz"))
    assert meta["config"]["cosine_s"] == 5e-4
    np.testing.assert_array_equal(diffusion.betas, td.cosine_beta_schedule(50, s=5e-4))
    assert diffusion.betas[0] < 0.7 * td.recipes.mnist_betas(50)[0]                  # 0.12x at T = 1000
    with pytest.raises(ValueError, match="cosine_s.*got 1.5"):
        td.recipes.mnist_betas(50, cosine_s=1.5)


def test_minutes_budget_sets_the_step_count_and_never_overruns(tmp_path):
    """--minutes instead of --steps: the step count comes from the speed of the first steps, is
    saved, and training stops at the budget (here a few seconds) even if the estimate was high."""
    args = [a for a in TINY if a not in ("--steps", "12")] + ["--minutes", "0.05"]
    metrics = run(args + ["--data-dir", str(MNIST_DIR), "--out", str(tmp_path / "run")])
    assert metrics["planned_steps"] >= 20 and 1 <= metrics["steps"] <= metrics["planned_steps"]
    assert metrics["train_seconds"] <= 0.05 * 60 + 2


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """The README's default run: >= 95% of 500 guided samples read as the digit asked for, a Frechet
    distance within 4x of the real-vs-real floor. (Its time targets, 10 minutes of training and 60 s
    of sampling, are measured by the run itself and reported, not asserted: no timed tests.)"""
    metrics = run(["--data-dir", str(MNIST_DIR), "--no-download", "--out", str(tmp_path / "run")])
    score = metrics["scorer"]
    assert score["accuracy"] >= 0.95
    assert score["fid"] <= 4 * score["fid_floor"]
    assert metrics["steps"] == 2000


@pytest.mark.slow
def test_long_run_meets_its_targets(tmp_path):
    """The README's long run (12,000 steps): >= 98% read as asked, Frechet distance within 2x of its floor."""
    metrics = run(["--steps", "12000", "--data-dir", str(MNIST_DIR), "--no-download",
                                   "--out", str(tmp_path / "run")])
    score = metrics["scorer"]
    assert score["accuracy"] >= 0.98
    assert score["fid"] <= 2 * score["fid_floor"]
