"""examples/toy2d.py end to end: a tiny fast run in the default suite, the real
default run (with its targets) behind the slow mark."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import tinydiff as td

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "toy2d.py")
OUTPUTS = ["samples.npy", "samples.png", "loss.png", "forward.gif", "reverse.gif", "metrics.json", "checkpoint.npz"]


def run(argv) -> dict:
    """python examples/toy2d.py *argv, in this process; returns the run's metrics."""
    return td.runs.run_example(EXAMPLE, argv)["metrics"]


# cosine: with T = 20 DDPM's linear betas would end far from noise, which the example refuses.
TINY = ["--steps", "40", "--T", "20", "--schedule", "cosine", "--batch", "64", "--hidden", "32"]


@pytest.mark.parametrize("objective,sampler", [("hybrid", "ddpm"), ("eps", "ddim"), ("sohl-dickstein", "langevin")])
def test_tiny_run_writes_every_output_with_sane_metrics(tmp_path, objective, sampler):
    out = tmp_path / "run"
    metrics = run(TINY + ["--objective", objective, "--sampler", sampler, "--out", str(out)])
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    samples = np.load(out / "samples.npy", allow_pickle=False)
    assert samples.shape == (2000, 2) and samples.dtype == np.float32 and np.all(np.isfinite(samples))
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    for key in ["steps", "train_seconds", "nll_bound_bits", "true_nll_bits", "mode_coverage", "mode_precision",
                "energy_distance"]:
        assert math.isfinite(metrics[key]), key
    assert metrics["steps"] == 40 and 0 <= metrics["mode_coverage"] <= 8 and 0 <= metrics["mode_precision"] <= 1
    assert metrics["true_nll_bits"] == pytest.approx(0.4503, abs=1e-3)     # 3 + log2(2 pi e 0.01)
    # a bound is a bound: never below the truth by more than its standard error allows
    assert metrics["nll_bound_bits"] > metrics["true_nll_bits"] - 4 * metrics["nll_bound_bits_stderr"]
    assert Image.open(out / "forward.gif").n_frames > 10
    Image.open(out / "samples.png").verify()


@pytest.mark.parametrize("sd_mean,schedule", [("residual", "logsnr"), ("direct", "rescaled")])
def test_tiny_swiss_roll_sohl_dickstein_run_reports_the_full_bound(tmp_path, sd_mean, schedule):
    """The 2015 setting in miniature: the full bound (prior and decoder included) beside the roll's entropy."""
    metrics = run(TINY + ["--dataset", "swiss_roll", "--noise", "0.05", "--schedule", schedule,
                                          "--objective", "sohl-dickstein", "--sd-mean", sd_mean, "--no-gifs",
                                          "--T", "40", "--out", str(tmp_path / "roll")])
    assert metrics["true_nll_bits"] == pytest.approx(-1.379, abs=2e-3)     # SwissRoll(noise=0.05).entropy_bits()
    for key in ["nll_bound_bits", "prior_bits", "decoder_bits", "bound_gap_bits"]:
        assert math.isfinite(metrics[key]), key
    assert 0 < metrics["prior_bits"] < 0.1 if schedule == "logsnr" else metrics["prior_bits"] > 0
    assert metrics["nll_bound_bits"] > metrics["true_nll_bits"] - 4 * metrics["nll_bound_bits_stderr"]
    assert "mode_coverage" not in metrics


def parse_error(argv, capsys) -> str:
    """The one line argparse prints for refused flags (it exits with status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_flags_that_cannot_apply_are_refused_by_name(capsys):
    assert "--noise: only swiss_roll and moons" in parse_error(TINY + ["--noise", "0.1"], capsys)
    assert "the last beta, --beta-end * 1000 / T = 1, must stay below 1" in parse_error(
        TINY + ["--schedule", "rescaled"], capsys)
    assert "--sd-mean residual: only the sohl-dickstein objective" in parse_error(
        TINY + ["--objective", "eps", "--sd-mean", "residual"], capsys)


def test_resume_continues_from_the_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    run(TINY + ["--out", out, "--no-gifs", "--lr-decay", "none"])
    metrics = run(TINY[:1] + ["60"] + TINY[2:] + ["--out", out, "--no-gifs", "--lr-decay", "none",
                                                          "--resume"])
    assert "resumed from" in capsys.readouterr().out and metrics["steps"] == 60


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        run(["--help"])
    text = capsys.readouterr().out
    for flag in ["--dataset", "--objective", "--schedule", "--T", "--steps", "--batch", "--seed", "--sampler",
                 "--out", "--resume"]:
        assert flag in text
    assert "default: out/toy2d" in text.replace(os.sep, "/")


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """The documented default run: 8/8 modes, precision >= 0.95, bound within 0.3 bits of the truth."""
    metrics = run(["--out", str(tmp_path / "default")])
    assert metrics["mode_coverage"] == 8
    assert metrics["mode_precision"] >= 0.95
    assert metrics["bound_gap_bits"] <= 0.3
    assert metrics["bound_gap_bits"] > -4 * metrics["nll_bound_bits_stderr"]


@pytest.mark.slow
def test_swiss_roll_sohl_dickstein_beats_the_papers_bound(tmp_path):
    """README's swiss-roll command: K = -bound must beat Sohl-Dickstein et al. (2015) Table 1's 2.35 bits
    and stay below the roll's true log-likelihood (3.70 bits at noise 0.01)."""
    metrics = run(["--dataset", "swiss_roll", "--noise", "0.01", "--T", "40", "--schedule", "logsnr",
                                   "--objective", "sohl-dickstein", "--sd-mean", "residual", "--steps", "24000",
                                   "--lr", "1e-3", "--no-gifs", "--out", str(tmp_path / "roll")])
    k = -metrics["nll_bound_bits"]
    assert k > 2.35
    assert k < -metrics["true_nll_bits"] + 4 * metrics["nll_bound_bits_stderr"]
