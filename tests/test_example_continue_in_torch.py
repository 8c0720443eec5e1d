"""examples/continue_in_torch.py end to end under torchrun with 2 processes (gloo): a tiny run in
the default suite, the documented run with its targets behind the slow mark. Skipped without torch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tinydiff as td  # noqa: E402
from mnist_copy import MNIST_DIR, needs_mnist  # noqa: E402

pytestmark = needs_mnist
ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLE = os.path.join(ROOT, "examples", "continue_in_torch.py")
DATA = ["--data-dir", str(MNIST_DIR), "--no-download"]


def torchrun(argv, processes=2, timeout=900):
    """torchrun --standalone --nproc_per_node N examples/continue_in_torch.py *argv, in a subprocess."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               EXAMPLE, *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_tiny_run_on_two_processes_trains_writes_and_comes_back(tmp_path):
    tiny = ["--width", "8", "--mults", "1,2", "--T", "50", "--steps", "4", "--batch", "16", "--train-limit", "200",
            "--n-samples", "10", "--sample-steps", "3", "--bpd-digits", "0", "--no-score"]
    td.runs.run_example(os.path.join(ROOT, "examples", "mnist.py"), tiny + DATA + ["--out", str(tmp_path / "mnist")])
    out = tmp_path / "torch"
    result = torchrun(["--checkpoint", str(tmp_path / "mnist" / "checkpoint.npz"), "--steps", "3", "--batch", "8",
                       "--train-limit", "200", "--eval-digits", "20", "--n-samples", "10", "--no-score",
                       "--out", str(out)] + DATA)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["backend"] == "gloo" and metrics["steps"] == 3
    assert all(np.isfinite(metrics[k]) for k in ("torch_first_loss", "torch_final_loss", "tinydiff_final_loss"))
    assert (out / "grid.png").is_file() and (out / "config.json").is_file()
    # the weights came back: a tinydiff UNet built from the file alone, not the weights it started from
    model, diffusion, config = td.export.load_export(out / "model.safetensors")
    _, start, _ = td.recipes.load_mnist_run(tmp_path / "mnist" / "checkpoint.npz")
    assert config["model"]["args"]["base_channels"] == 8 and diffusion.num_timesteps == 50
    moved = [k for k, v in start.state_dict().items() if not np.array_equal(v, model.state_dict()[k])]
    assert len(moved) >= 0.9 * len(start.state_dict())     # (a bias that a GroupNorm cancels gets no gradient)
    assert json.loads((out / "config.json").read_text()) == config
    # a second run into the same folder is refused, not written over
    again = torchrun(["--checkpoint", str(tmp_path / "mnist" / "checkpoint.npz"), "--out", str(out)] + DATA, 1)
    assert again.returncode != 0 and "holds a finished run" in again.stderr


@pytest.mark.slow
def test_documented_run_continues_the_default_mnist_run(tmp_path):
    """The run docs/export.md shows: examples/mnist.py's default run, then 1,000 steps on 2
    processes. The test loss falls from where tinydiff stopped; >= 95% of the digits sampled by
    tinydiff from the returned weights read as asked."""
    td.runs.run_example(os.path.join(ROOT, "examples", "mnist.py"),
                        DATA + ["--bpd-digits", "0", "--out", str(tmp_path / "mnist")])
    out = tmp_path / "torch"
    result = torchrun(["--checkpoint", str(tmp_path / "mnist" / "checkpoint.npz"), "--out", str(out)] + DATA,
                      timeout=7200)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_loss_after"]["ema"] < metrics["test_loss_before"]["ema"]
    assert metrics["test_loss_after"]["model"] < metrics["test_loss_before"]["model"]
    assert metrics["scorer"]["accuracy"] >= 0.95
