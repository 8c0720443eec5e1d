"""examples/color_digits.py end to end: a tiny run in seconds (a tiny UNet, 300 digits), the
default run with its targets behind the slow mark."""
import json
import os

import numpy as np
import pytest

import tinydiff as td
from mnist_copy import MNIST_DIR, needs_mnist

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "color_digits.py")
pytestmark = needs_mnist
TINY = ["--width", "8", "--steps", "12", "--batch", "16", "--train-limit", "300", "--T", "50",
        "--per-pair", "1", "--sample-steps", "4", "--no-download", "--no-score"]


def run(argv) -> dict:
    """python examples/color_digits.py *argv, in this process; returns the run's metrics."""
    return td.runs.run_example(EXAMPLE, argv)["metrics"]


def test_tiny_run_writes_grids_and_both_forms_of_metrics(tmp_path):
    out = tmp_path / "run"
    metrics = run(TINY + ["--data-dir", str(MNIST_DIR), "--out", str(out)])
    for name in ("grid_joint.png", "grid_composed.png", "samples.npy", "labels.npy", "metrics.json", "checkpoint.npz"):
        assert (out / name).is_file(), name
    samples, labels = np.load(out / "samples.npy"), np.load(out / "labels.npy")
    assert samples.shape == (2, 60, 3, 28, 28) and labels.shape == (60, 2)
    assert {tuple(p) for p in labels.tolist()} == {(d, c) for d in range(10) for c in range(6)}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for form in ("joint", "composed"):
        assert metrics[form]["seen"]["n"] == 50 and metrics[form]["held_out"]["n"] == 10
        assert 0 <= metrics[form]["held_out"]["colour_accuracy"] <= 1
        assert len(metrics[form]["held_out_pairs"]) == 10
    assert metrics["composed"]["liu_weight"] == [3.0, 3.0] and metrics["joint"]["liu_weight"] == 3.0
    # a finished run re-sampled with another scale: new file names, the run's own files kept
    again = run(TINY + ["--data-dir", str(MNIST_DIR), "--out", str(out), "--resume", "--guidance", "1"])
    assert again["steps"] == 12 and (out / "grid_joint.guidance-1.0.png").is_file()
    assert json.loads((out / "metrics.json").read_text())["joint"]["scale"] == 2.0
    with pytest.raises(SystemExit, match="--width"):              # a run flag cannot change on --resume
        run(TINY[2:] + ["--width", "16", "--data-dir", str(MNIST_DIR), "--out", str(out), "--resume"])


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """docs/two-attributes.md: the default run (3,000 steps) reads >= 90% of the digits as asked on
    seen pairs with joint guidance, and >= 95% of the colours with both forms. (Composed guidance at
    its default scales is reported beside it, not asserted: docs/two-attributes.md measures it below
    90% and shows the scales that meet it. The time is measured by the run, not asserted.)"""
    metrics = run(["--data-dir", str(MNIST_DIR), "--no-download", "--out", str(tmp_path / "run")])
    assert metrics["steps"] == 3000
    assert metrics["joint"]["seen"]["digit_accuracy"] >= 0.9
    for form in ("joint", "composed"):
        assert metrics[form]["seen"]["colour_accuracy"] >= 0.95
