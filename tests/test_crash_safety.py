"""Crash safety and exact resume of a whole example run, proven with SIGKILL.

examples/toy2d.py (tiny settings, a checkpoint after every step) runs in a subprocess and
is killed with SIGKILL at moments drawn from a seeded Generator, most of them while a
checkpoint is being written (writing it is most of each step). After every kill:

* the checkpoint loads (the previous complete file or the new complete one, never torn);
* the next start, with --resume, says it resumed at exactly the step the file holds;
* temporary files the kill left are gone once the next start is under way;

and when the run is finally let through, its weights, EMA, optimizer moments, RNG, data
order, losses, samples and metrics are bit-for-bit those of a run that was never killed.
The default suite kills 3 times; the slow suite 20 times.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tinydiff.checkpoint import load_checkpoint
from tinydiff.runs import TEMPORARY

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLE = os.path.join(ROOT, "examples", "toy2d.py")
TINY = ["--T", "20", "--schedule", "logsnr", "--batch", "32", "--hidden", "16", "--no-gifs", "--eval-points", "200",
        "--checkpoint-every", "1"]


def start(out, steps, *extra):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-u", EXAMPLE, *TINY, "--steps", str(steps), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def lines_until_training(proc) -> list:
    """The lines printed before training starts (resume and clean-up notices), then stop reading."""
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise AssertionError(f"the run ended before training started: {lines}\n{proc.stderr.read()}")
        lines.append(line.rstrip())
        if line.startswith("training "):
            return lines


def finish(proc) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def temporaries(folder) -> set:
    return {name for name in os.listdir(folder) if TEMPORARY.match(name)}


def kill_and_resume(tmp_path, kills: int, steps: int, window: float, seed: int):
    """Run straight into tmp_path/straight; run again into tmp_path/killed, killing it `kills`
    times, checking the checkpoint and the next start after each kill. Returns both folders and
    how many kills landed while a checkpoint was being written."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    finish(start(straight, steps))

    rng = np.random.default_rng(seed)
    checkpoint = killed / "checkpoint.npz"
    mid_write = 0
    expected_step, leftovers = None, set()
    for _ in range(kills):
        proc = start(killed, steps, *(["--resume"] if checkpoint.exists() else []))
        before = lines_until_training(proc)
        if expected_step is not None:               # the start after a kill: resumed exactly where the file was
            assert any(line.startswith(f"resumed from {checkpoint} at step {expected_step} of ") for line in before), \
                before
        assert not leftovers & temporaries(killed), "a killed run's temporary files were not cleaned"
        time.sleep(rng.uniform(0.0, window))
        if proc.poll() is not None:
            raise AssertionError("the run finished before it could be killed; use more steps")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        leftovers = temporaries(killed)
        mid_write += bool({name for name in leftovers if name.startswith(".checkpoint.npz.")})
        if checkpoint.exists():
            _, meta = load_checkpoint(checkpoint)   # loads after every kill: old or new, never torn
            expected_step = meta["step"]
            assert 0 < expected_step < steps
    proc = start(killed, steps, *(["--resume"] if checkpoint.exists() else []))
    finish(proc)
    assert not temporaries(killed)
    return straight, killed, mid_write


def assert_same_run(straight, killed):
    """Bit for bit: every array and every piece of state in the checkpoint, the samples, the metrics."""
    arrays_a, meta_a = load_checkpoint(straight / "checkpoint.npz")
    arrays_b, meta_b = load_checkpoint(killed / "checkpoint.npz")
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:
        assert arrays_a[key].tobytes() == arrays_b[key].tobytes(), key
    for key in ("step", "rng", "optimizer", "data", "warmup"):
        assert meta_a[key] == meta_b[key], key
    assert (straight / "samples.npy").read_bytes() == (killed / "samples.npy").read_bytes()
    metrics_a = json.loads((straight / "metrics.json").read_text())
    metrics_b = json.loads((killed / "metrics.json").read_text())
    metrics_a.pop("train_seconds"), metrics_b.pop("train_seconds")
    assert metrics_a == metrics_b


def test_three_kills_then_the_same_run_bit_for_bit(tmp_path):
    straight, killed, _ = kill_and_resume(tmp_path, kills=3, steps=400, window=0.25, seed=3)
    assert_same_run(straight, killed)


@pytest.mark.slow
def test_twenty_kills_then_the_same_run_bit_for_bit(tmp_path):
    straight, killed, mid_write = kill_and_resume(tmp_path, kills=20, steps=1500, window=0.8, seed=20)
    assert_same_run(straight, killed)
    assert mid_write >= 1, "no kill landed inside a checkpoint write; the test proved less than it claims"
    print(f"20 kills survived; {mid_write} landed inside a checkpoint write")
