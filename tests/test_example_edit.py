"""examples/edit.py end to end: a tiny MNIST checkpoint (examples/mnist.py, seconds) edited at
tiny sizes; the default run (which trains its own model) with its targets behind the slow mark."""
import importlib.util
import json
import os

import pytest

from test_example_mnist import MNIST_DIR
from test_example_mnist import TINY as MNIST_TINY
from test_example_mnist import EXAMPLE as MNIST_EXAMPLE

import tinydiff as td

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "edit.py")
pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST copy at {MNIST_DIR}")


def load_example():
    spec = importlib.util.spec_from_file_location("edit_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_edit_run_writes_pictures_and_metrics(tmp_path):
    td.runs.run_example(MNIST_EXAMPLE, MNIST_TINY + ["--bpd-digits", "0", "--data-dir", str(MNIST_DIR),
                                                     "--out", str(tmp_path / "mnist")])
    out = tmp_path / "edit"
    metrics = load_example().main(["--checkpoint", str(tmp_path / "mnist" / "checkpoint.npz"), "--n", "4",
                                   "--t0", "0.3,0.7", "--sample-steps", "6", "--resample", "2", "--jump", "2",
                                   "--no-score", "--no-download", "--data-dir", str(MNIST_DIR), "--out", str(out)])
    for name in ("sdedit.png", "inpaint.png", "inversion.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert [r["t0"] for r in metrics["sdedit"]] == [0.3, 0.7]
    assert metrics["sdedit"][0]["timestep"] == 14                        # round(0.3 * 50) - 1
    masks = [(r["hidden"], r["resample"], r["label"]) for r in metrics["inpaint"]]
    assert masks == [("left half", 1, "null"), ("top half", 1, "null"), ("random 50%", 1, "null"),
                     ("left half", 2, "null"), ("left half", 1, "original")]
    assert all(r["known_pixels_unchanged"] for r in metrics["inpaint"])
    assert metrics["inpaint"][0]["known_fraction"] == 0.5
    assert metrics["inversion"]["reconstruction_pixel_error"] >= 0


def test_bad_flags_end_in_one_line(tmp_path, capsys):
    example = load_example()
    with pytest.raises(SystemExit, match="--checkpoint .*nothing.npz: there is no file there"):
        example.main(["--checkpoint", str(tmp_path / "nothing.npz"), "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit):
        example.main(["--t0", "0.5,1.5"])
    assert "--t0: SDEdit strengths lie in (0, 1]" in capsys.readouterr().err
    (tmp_path / "other.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="--checkpoint .*other.npz cannot be read"):
        example.main(["--checkpoint", str(tmp_path / "other.npz"), "--out", str(tmp_path / "e")])


@pytest.mark.slow
def test_default_run_meets_its_targets(tmp_path):
    """No checkpoint: trains mnist.py's model for 9 minutes, then edits. Targets of README
    "Editing": some t0 with >= 80% of SDEdit edits read as the new label; the left half
    inpainted read as the original digit >= 85%."""
    metrics = load_example().main(["--checkpoint", str(tmp_path / "mnist" / "checkpoint.npz"), "--no-download",
                                   "--data-dir", str(MNIST_DIR), "--out", str(tmp_path / "edit")])
    assert max(r["read_as_new_label"] for r in metrics["sdedit"]) >= 0.8
    left = [r for r in metrics["inpaint"] if r["hidden"] == "left half" and r["label"] == "original"][0]
    assert left["read_as_original_label"] >= 0.85
