"""examples/edit.py end to end: a tiny MNIST checkpoint (examples/mnist.py, seconds) edited at
tiny sizes; a tiny run that trains its own model first; the default run (which trains mnist.py's
default model, 2,000 steps) with its targets behind the slow mark."""
import json
import os

import pytest

import tinydiff as td
from mnist_copy import MNIST_DIR, needs_mnist
from test_example_mnist import TINY as MNIST_TINY

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLE = os.path.join(ROOT, "examples", "edit.py")
DATA = ["--no-download", "--data-dir", str(MNIST_DIR)]
TINY_EDIT = ["--n", "4", "--t0", "0.3,0.7", "--sample-steps", "6", "--resample", "2", "--jump", "2", "--no-score"]
pytestmark = needs_mnist


def test_tiny_edit_run_writes_pictures_and_metrics(tmp_path):
    td.runs.run_example(os.path.join(ROOT, "examples", "mnist.py"),
                        MNIST_TINY + ["--bpd-digits", "0", "--data-dir", str(MNIST_DIR), "--out", tmp_path / "mnist"])
    out = tmp_path / "edit"
    g = td.runs.run_example(EXAMPLE, ["--checkpoint", tmp_path / "mnist" / "checkpoint.npz"] + TINY_EDIT + DATA
                            + ["--out", out])
    metrics = g["metrics"]
    for name in ("sdedit.png", "inpaint.png", "inversion.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert [r["t0"] for r in metrics["sdedit"]] == [0.3, 0.7] and metrics["model_step"] == 12
    assert metrics["sdedit"][0]["timestep"] == 14                        # round(0.3 * 50) - 1
    masks = [(r["hidden"], r["resample"], r["label"]) for r in metrics["inpaint"]]
    assert masks == [("left half", 1, "null"), ("top half", 1, "null"), ("random 50%", 1, "null"),
                     ("left half", 2, "null"), ("left half", 1, "original")]
    assert all(r["known_pixels_unchanged"] for r in metrics["inpaint"])
    assert metrics["inpaint"][0]["known_fraction"] == 0.5
    assert metrics["inversion"]["reconstruction_pixel_error"] >= 0


def test_without_a_checkpoint_it_trains_its_model_first_then_resumes_it(tmp_path):
    """No --checkpoint: mnist.py's model trained in --out for --steps (a fixed count), then the
    edits; the same command again is refused, --resume re-edits the finished run."""
    out = tmp_path / "edit"
    small = ["--steps", "3", "--train-limit", "200", "--n", "2", "--t0", "0.5", "--sample-steps", "4", "--resample",
             "1", "--jump", "1", "--no-score"] + DATA + ["--out", out]
    metrics = td.runs.run_example(EXAMPLE, small)["metrics"]
    assert metrics["model_step"] == 3 and metrics["checkpoint"].endswith("checkpoint.npz")
    diffusion, model, meta = td.recipes.load_mnist_run(out / "checkpoint.npz")     # mnist.py's model, reloadable
    assert meta["step"] == 3 and model.num_parameters() == td.recipes.mnist_model()[1].num_parameters()
    with pytest.raises(SystemExit, match="already holds a run"):
        td.runs.run_example(EXAMPLE, small)
    again = td.runs.run_example(EXAMPLE, small + ["--resume", "--n", "3"])["metrics"]
    assert again["n"] == 3 and again["model_step"] == 3 and (out / "sdedit.n-3.png").is_file()


def test_bad_flags_end_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--checkpoint .*nothing.npz: there is no checkpoint there"):
        td.runs.run_example(EXAMPLE, ["--checkpoint", tmp_path / "nothing.npz", "--out", tmp_path / "e"])
    with pytest.raises(SystemExit):
        td.runs.run_example(EXAMPLE, ["--t0", "0.5,1.5"])
    assert "--t0: SDEdit strengths lie in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        td.runs.run_example(EXAMPLE, ["--jump", "50"])
    assert "--jump 50: RePaint goes back up" in capsys.readouterr().err
    (tmp_path / "other.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="--checkpoint .*other.npz cannot be read"):
        td.runs.run_example(EXAMPLE, ["--checkpoint", tmp_path / "other.npz", "--out", tmp_path / "e"])


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """No checkpoint: trains mnist.py's default model (2,000 steps), then edits. Targets of
    docs/editing.md: some t0 with >= 80% of SDEdit edits read as the new label; the left half
    inpainted under the digit's own label read as the original digit >= 85%."""
    metrics = td.runs.run_example(EXAMPLE, DATA + ["--out", tmp_path / "edit"])["metrics"]
    assert metrics["model_step"] == 2000
    assert max(r["read_as_new_label"] for r in metrics["sdedit"]) >= 0.8
    left = [r for r in metrics["inpaint"] if r["hidden"] == "left half" and r["label"] == "original"][0]
    assert left["read_as_original_label"] >= 0.85
