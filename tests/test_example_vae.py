"""examples/vae.py and examples/latent_diffusion.py end to end: tiny fast runs in the default
suite (a few hundred digits, tiny networks), the default runs with their targets behind the slow mark."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import tinydiff as td
from mnist_copy import MNIST_DIR, needs_mnist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


pytestmark = needs_mnist
DATA = ["--data-dir", str(MNIST_DIR), "--no-download"]


def run(name, argv) -> dict:
    """python examples/<name>.py *argv, in this process; returns the run's metrics."""
    return td.runs.run_example(EXAMPLES / f"{name}.py", argv)["metrics"]


TINY_VAE = ["--channels", "8,16", "--steps", "12", "--batch", "16", "--train-limit", "300", "--eval-digits", "30",
            "--elbo-samples", "2", "--n-samples", "20", "--no-score"]
HAVE_SCORER = Path.home().joinpath(".cache", "tinydiff", "scorer", "mnist_cnn_v1.npz").is_file()


@pytest.mark.skipif(not HAVE_SCORER, reason="no cached scorer weights (python -m tinydiff.scorer trains them)")
def test_tiny_vae_run_scores_prior_samples_and_posterior_draws(tmp_path):
    """The scorer's two readings: 20 prior samples, and the decoder fed posterior draws of the
    first 20 of the 30 evaluated test digits."""
    argv = [a for a in TINY_VAE if a != "--no-score"]
    metrics = run("vae", argv + ["--latent", "3"] + DATA + ["--out", str(tmp_path / "vae")])
    assert metrics["scorer"]["n"] == 20 and sum(metrics["scorer"]["class_counts"]) == 20
    assert metrics["scorer_posterior"]["n"] == 20 and "q(z|x)" in metrics["scorer_posterior"]["on"]
    for key in ("scorer", "scorer_posterior"):
        assert 0 <= metrics[key]["confident_fraction"] <= 1 and math.isfinite(metrics[key]["fid"])


@pytest.mark.parametrize("extra", [["--latent", "2"], ["--latent", "4x7x7", "--decoder", "bernoulli"]])
def test_tiny_vae_run_writes_every_output(tmp_path, extra):
    out = tmp_path / "vae"
    metrics = run("vae", TINY_VAE + extra + DATA + ["--out", str(out)])
    names = ["reconstructions.png", "samples.png", "interpolation.png", "loss.png", "samples.npy", "vae.npz",
             "metrics.json", "checkpoint.npz", "elbo_per_digit.npy"] + (["latent_map.png"] if "2" in extra else [])
    for name in names:
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    elbo = metrics["elbo"]
    assert elbo["digits"] == 30 and elbo["samples_per_digit"] == 2 and metrics["steps"] == 12
    assert elbo["nelbo_nats"] == pytest.approx(elbo["reconstruction_nats"] + elbo["kl_nats"])
    assert elbo["bpd"] == pytest.approx(elbo["nelbo_nats"] / (784 * math.log(2)))
    assert ("NOT a likelihood" in elbo["convention"]) == ("bernoulli" in extra)
    per_digit = np.load(out / "elbo_per_digit.npy", allow_pickle=False)
    assert per_digit.shape == (30,) and per_digit.mean() == pytest.approx(elbo["nelbo_nats"])
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (20, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    vae = td.recipes.load_vae(out / "vae.npz")
    assert vae.latent_shape == tuple(int(v) for v in extra[1].split("x")) and not vae.training


def test_tiny_latent_diffusion_run_trains_its_vae_then_the_diffusion(tmp_path):
    out = tmp_path / "ld"
    tiny = ["--steps", "10", "--batch", "16", "--width", "8", "--T", "50", "--sample-steps", "5", "--n-samples", "20",
            "--no-score", "--timing-rounds", "1", "--timing-batch", "4", "--train-limit", "300", "--vae-steps", "8",
            "--vae-channels", "8,16"]
    metrics = run("latent_diffusion", tiny + DATA + ["--out", str(out)])
    for name in ["grid.png", "guidance.png", "prior_vs_diffusion.png", "samples.npy", "labels.npy", "metrics.json",
                 "checkpoint.npz", "vae/vae.npz", "vae/checkpoint.npz"]:
        assert (out / name).is_file(), name
    assert metrics["latent_shape"] == [4, 7, 7] and metrics["steps"] == 10 and metrics["vae_train_seconds"] > 0
    assert 0 < metrics["scale_factor"] < 10 and math.isfinite(metrics["scale_factor"])
    timing = metrics["timing"]
    assert set(timing["sample_seconds_per_100"]) == {"latent", "pixel"}
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (20, 28, 28) and list(np.load(out / "labels.npy")[:10]) == list(range(10))
    again = run("latent_diffusion", tiny + DATA + ["--out", str(out), "--resume", "--timing-rounds", "0"])
    assert again["vae_train_seconds"] == 0 and again["steps"] == 10              # the frozen VAE is reused


def test_latent_diffusion_refuses_a_flat_vae(tmp_path):
    out = tmp_path / "flat"
    run("vae", TINY_VAE + ["--latent", "3"] + DATA + ["--out", str(out)])
    with pytest.raises(SystemExit, match="needs a spatial latent"):
        run("latent_diffusion", ["--vae", str(out / "vae.npz"), "--steps", "2", "--no-score",
                                 "--train-limit", "50"] + DATA + ["--out", str(tmp_path / "ld")])
    with pytest.raises(SystemExit, match="there is no VAE there"):
        td.recipes.load_vae(tmp_path / "missing.npz")


def parse_error(name, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        td.runs.run_example(EXAMPLES / f"{name}.py", argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("name,argv,words", [
    ("vae", ["--latent", "4x8x8"], "argument --latent: expected d (a flat latent) or kx7x7"),
    ("vae", ["--latent", "big"], "argument --latent: expected a size such as 16 or 4x7x7"),
    ("vae", ["--channels", "12,64"], "argument --channels: expected two widths, multiples of 8"),
    ("vae", ["--kl-weight", "-1"], "argument --kl-weight: expected a finite number >= 0"),
    ("vae", ["--steps", "0"], "argument --steps: expected an integer >= 1"),
    ("latent_diffusion", ["--vae-channels", "8"], "argument --vae-channels: expected two widths"),
    ("latent_diffusion", ["--width", "60"], "--width 60: GroupNorm's 8 groups need a multiple of 8"),
    ("latent_diffusion", ["--n-samples", "15"], "--n-samples must be a multiple of 10"),
    ("latent_diffusion", ["--schedule", "linear", "--T", "1", "--sample-steps", "1"], "--schedule linear with --T 1"),
    ("latent_diffusion", ["--prediction", "x0"], "argument --prediction: invalid choice"),
])
def test_bad_flags_fail_in_one_line_before_any_work(name, argv, words, capsys):
    assert words in parse_error(name, argv, capsys)


def test_a_finished_run_is_never_overwritten_and_resume_must_be_the_same_run(tmp_path):
    """tinydiff.runs: without --resume an existing run stops the script; --resume with a flag that
    changes the model is refused by name; --resume with another evaluation setting writes tagged
    files beside the run's own."""
    from tinydiff.runs import RunError
    out = tmp_path / "vae"
    run("vae", TINY_VAE + ["--latent", "3"] + DATA + ["--out", str(out)])
    with pytest.raises(RunError, match="already holds a run"):
        run("vae", TINY_VAE + ["--latent", "3"] + DATA + ["--out", str(out)])
    with pytest.raises(RunError, match=r"--latent .*4.* \(the checkpoint has .*3.*\)"):
        run("vae", TINY_VAE + ["--latent", "4", "--resume"] + DATA + ["--out", str(out)])
    own = (out / "metrics.json").read_bytes()
    again = run("vae", TINY_VAE + ["--latent", "3", "--resume", "--eval-digits", "20"] + DATA + ["--out", str(out)])
    assert again["elbo"]["digits"] == 20 and (out / "metrics.eval-digits-20.json").is_file()
    assert (out / "metrics.json").read_bytes() == own


@pytest.fixture(scope="module")
def default_vae_run(tmp_path_factory):
    return run("vae", DATA + ["--out", str(tmp_path_factory.mktemp("default") / "vae")])


@pytest.mark.slow
def test_default_vae_run_meets_its_targets(default_vae_run):
    """docs/vae-and-latent.md: the bound on 1,000 test digits in bits/dim with its
    terms, and the decoder fed posterior draws reads as digits. (The time target, 5 minutes of
    training, is measured by the run itself and reported, not asserted: no timed tests.)"""
    metrics = default_vae_run
    elbo = metrics["elbo"]
    assert elbo["digits"] == 1000 and 1.0 < elbo["bpd"] < 2.0            # measured 1.572 +- 0.016
    assert elbo["nelbo_nats"] == pytest.approx(elbo["reconstruction_nats"] + elbo["kl_nats"])
    assert metrics["steps"] == 1500 and metrics["latent_shape"] == [8]
    assert metrics["scorer_posterior"]["confident_fraction"] >= 0.80       # measured 87.2%


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="target missed: 64.2% of the default run's prior samples are confident "
                                       "(docs/vae-and-latent.md: every recipe tried); strict, so reaching it "
                                       "shows as XPASS")
def test_default_vae_prior_samples_reach_80_percent_confident(default_vae_run):
    assert default_vae_run["scorer"]["confident_fraction"] >= 0.80


@pytest.mark.slow
def test_default_latent_diffusion_run_meets_its_targets(tmp_path):
    """docs/vae-and-latent.md: >= 90% of 500 guided samples read as the digit asked for (measured 98.2%), sampling at
    least 5x faster per digit than examples/mnist.py's pixel-space UNet at the same steps (a ratio of
    interleaved timings in one process; measured 9.9x). The time target, 10 minutes of training for
    the VAE and the diffusion, is reported by the run (303 s), not asserted: no timed tests."""
    metrics = run("latent_diffusion", DATA + ["--out", str(tmp_path / "ld")])
    assert metrics["vae_train_seconds"] > 0 and metrics["steps"] == 5000       # it trained its own VAE
    assert metrics["scorer"]["accuracy"] >= 0.90
    assert metrics["timing"]["sampling_speedup"] >= 5
