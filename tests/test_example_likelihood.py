"""examples/likelihood.py end to end: a tiny fast run in the default suite (with a tiny MNIST run
for its optional cell), the real default run with its targets behind the slow mark."""
import json
import math
import os

import pytest
from PIL import Image

import tinydiff as td
from mnist_copy import MNIST_DIR, needs_mnist

HERE = os.path.dirname(__file__)
EXAMPLE = os.path.join(HERE, "..", "examples", "likelihood.py")
KEYS = ["true_nll_bits", "oracle_ode_nll_bits", "model_ode_nll_bits", "model_ode_nll_stderr", "bound_bits"]
TINY = ["--steps", "20", "--batch", "64", "--T", "50", "--points", "40", "--oracle-points", "300", "--rtol", "1e-3"]


def run(argv) -> dict:
    return td.runs.run_example(EXAMPLE, argv)["metrics"]


def test_tiny_run_writes_the_figure_and_the_three_numbers(tmp_path):
    out = tmp_path / "run"
    metrics = run(TINY + ["--out", str(out)])
    for name in ("energy.png", "metrics.json", "checkpoint.npz"):
        assert (out / name).is_file(), name
    Image.open(out / "energy.png").verify()
    saved = json.loads((out / "metrics.json").read_text())
    assert {k: saved[k] for k in KEYS} == pytest.approx({k: metrics[k] for k in KEYS})
    for key in KEYS:
        assert math.isfinite(metrics[key]), key
    assert metrics["true_nll_bits"] == pytest.approx(0.4503, abs=1e-3)
    # the exact score at rtol 1e-3: the same points' exact NLL to within 0.02 bits (the solver's error only)
    assert abs(metrics["oracle_tol_0.001"]["gap_to_exact_bits"]) < 0.02
    assert abs(metrics["oracle_tol_0.001"]["gap_to_exact_bits"]) < abs(metrics["oracle_tol_0.01"]["gap_to_exact_bits"])
    assert metrics["model_ode_nfe"] > 10 and metrics["model_ode_nll_stderr"] > 0
    assert metrics["log_z_grid"] == pytest.approx(metrics["log_z_closed_form"], abs=1e-3)


@needs_mnist
def test_tiny_mnist_checkpoint_gets_its_bound_and_ode_nll(tmp_path):
    mnist = os.path.join(HERE, "..", "examples", "mnist.py")
    td.runs.run_example(mnist, ["--width", "8", "--steps", "6", "--batch", "16", "--train-limit", "200", "--T", "50",
                                "--objective", "hybrid", "--n-samples", "10", "--sample-steps", "3", "--bpd-digits", "0",
                                "--no-download", "--no-score", "--data-dir", str(MNIST_DIR), "--out", str(tmp_path / "m")])
    metrics = run(TINY + ["--mnist-checkpoint", str(tmp_path / "m" / "checkpoint.npz"), "--mnist-digits", "4",
                          "--mnist-solver", "heun", "--mnist-ode-steps", "3", "--data-dir", str(MNIST_DIR), "--no-download",
                          "--out", str(tmp_path / "run")])
    m = metrics["mnist"]
    assert m["digits"] == 4 and m["ode_nfe_per_batch"] == [6]              # Heun: 2 calls a step, 3 steps
    for key in ("bound_bits_per_dim", "decoder_L_0", "kl_terms", "prior_L_T", "ode_bits_per_dim", "ode_stderr"):
        assert math.isfinite(m[key]), key
    assert m["bound_bits_per_dim"] == pytest.approx(m["decoder_L_0"] + m["kl_terms"] + m["prior_L_T"], rel=1e-5)


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """The lesson's default run: the exact-score ODE within 0.02 bits of the true NLL 0.450 (20,000
    points, rtol 1e-5); the trained model's ODE NLL not below the same points' true NLL by more
    than its standard error; the bound above the truth."""
    m = run(["--out", str(tmp_path / "run")])
    assert abs(m["oracle_ode_nll_bits"] - m["true_nll_bits"]) <= 0.02
    assert abs(m["oracle_tol_1e-05"]["gap_to_exact_bits"]) < 1e-3
    assert m["ode_minus_true_bits"] >= -m["ode_minus_true_stderr"]
    assert m["bound_bits"] > m["points_true_nll_bits"] - 2 * m["bound_stderr"]
