"""What a learner sees when a run goes wrong, for every example: one line naming the flag or
the file, and nothing they already have overwritten.

* flags out of range or that make no sense together: an argparse error (exit 2, one line),
  before any work;
* --resume with flags that change the run: refused by name with both values;
* --resume with other sampling flags: the outputs get new names, the run's own stay;
* an existing run, or a checkpoint that cannot be read: never silently replaced;
* an output folder that cannot be written or a disk that fills: said in one line, with the
  previous files intact.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mnist_copy

import tinydiff as td
from tinydiff.runs import TEMPORARY, RunError

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def load(name):
    """python examples/<name>.py *argv as a function of argv, run in this process; returns the metrics."""
    return lambda argv: td.runs.run_example(os.path.join(EXAMPLES, f"{name}.py"), argv)["metrics"]


# --eval-points 200: fewer evaluation points, these tests are about files and flags
TOY = ["--steps", "30", "--T", "20", "--schedule", "logsnr", "--batch", "32", "--hidden", "16", "--no-gifs",
       "--eval-points", "200"]


def parse_error(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        module(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage:") and "Traceback" not in "".join(err)
    return err[-1]


# flag values that are out of range or make no sense together -> words the message must contain
TOY_BAD_FLAGS = [
    (["--lr", "-1"], "argument --lr: expected a finite number > 0, got '-1'"),
    (["--lr", "nan"], "argument --lr: expected a finite number > 0"),
    (["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    (["--steps", "-5"], "argument --steps: expected an integer >= 1"),
    (["--batch", "0"], "argument --batch: expected an integer >= 1"),
    (["--T", "0"], "argument --T: expected an integer >= 1"),
    (["--T", "2.5"], "argument --T: expected an integer >= 1, got '2.5'"),
    (["--hidden", "0"], "argument --hidden: expected an integer >= 1"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0"),
    (["--ema", "1"], "argument --ema: expected a number in [0, 1)"),
    (["--ema", "-0.5"], "argument --ema: expected a number in [0, 1)"),
    (["--beta-start", "0"], "argument --beta-start: expected a number strictly between 0 and 1"),
    (["--beta-end", "1.5"], "argument --beta-end: expected a number strictly between 0 and 1"),
    (["--logsnr-max", "inf"], "argument --logsnr-max: expected a finite number"),
    (["--noise", "-0.1", "--dataset", "moons"], "argument --noise: expected a finite number >= 0"),
    (["--sample-steps", "0"], "argument --sample-steps: expected an integer >= 1"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: expected an integer >= 1"),
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    (["--objective", "x0"], "argument --objective: invalid choice: 'x0'"),
    (["--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    (["--schedule", "quadratic"], "argument --schedule: invalid choice"),
    (["--lr-decay", "step"], "argument --lr-decay: invalid choice"),
    (["--resume", "--restart"], "argument --restart: not allowed with argument --resume"),
    (["--sample-steps", "5000"], "--sample-steps 5000: a sampler can visit at most the T = 1000 trained steps"),
    (["--T", "1"], "--schedule linear with --T 1: the chain ends at alpha_bar_T = 0.9999"),
    (["--T", "10"], "--schedule linear with --T 10: the chain ends at alpha_bar_T"),
    (["--T", "20", "--schedule", "rescaled"], "the last beta, --beta-end * 1000 / T = 1, must stay below 1"),
    (["--schedule", "logsnr", "--logsnr-max", "-6"], "--schedule logsnr with --T 1000: logsnr_max"),
    (["--schedule", "logsnr", "--sampler", "langevin"], "--sampler langevin with --schedule logsnr: step_lr"),
    (["--noise", "0.1"], "--noise: only swiss_roll and moons have a noise level, got --dataset 8gaussians"),
    (["--sd-mean", "residual"], "--sd-mean residual: only the sohl-dickstein objective outputs a mean"),
    (["--sd-mean", "average"], "argument --sd-mean: invalid choice"),
]


@pytest.mark.parametrize("argv, words", TOY_BAD_FLAGS, ids=[" ".join(a) for a, _ in TOY_BAD_FLAGS])
def test_toy2d_refuses_bad_flags_while_parsing(argv, words, capsys):
    assert words in parse_error(load("toy2d"), argv, capsys)


def test_toy2d_a_resumed_run_must_be_the_same_run(tmp_path, capsys):
    toy, out = load("toy2d"), str(tmp_path / "run")
    first = toy(TOY + ["--out", out])
    files = {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(out)}

    refused = [(["--T", "100"], "--T 100 (the checkpoint has 20)"),
               (["--objective", "eps"], "--objective eps (the checkpoint has hybrid)"),
               (["--schedule", "cosine"], "--schedule cosine (the checkpoint has logsnr)"),
               (["--hidden", "32"], "--hidden 32 (the checkpoint has 16)"),
               (["--dataset", "moons"], "--dataset moons (the checkpoint has 8gaussians)"),
               (["--seed", "1"], "--seed 1 (the checkpoint has 0)"),
               (["--lr", "1e-3"], "--lr 0.001 (the checkpoint has 0.002)"),
               (["--steps", "40"], "--steps 40 (the checkpoint has 30)")]     # the cosine lr decay depends on it
    for flags, words in refused:
        with pytest.raises(RunError) as info:
            toy(TOY + flags + ["--out", out, "--resume"])
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RunError, match=r"already holds a run \(step 30 of 30\)"):
        toy(TOY + ["--out", out])                                  # no --resume: never overwritten
    assert {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(out)} == files

    again = toy(TOY + ["--out", out, "--resume"])                  # the same flags: the same numbers
    assert {k: v for k, v in again.items() if k != "train_seconds"} == \
           {k: v for k, v in first.items() if k != "train_seconds"}
    assert (tmp_path / "run" / "samples.npy").read_bytes() == files["samples.npy"]

    capsys.readouterr()
    other = toy(TOY + ["--out", out, "--resume", "--sampler", "ddim", "--sample-steps", "10"])
    assert "outputs are named *.sampler-ddim.sample-steps-10.*" in capsys.readouterr().out
    assert other["sampler"] == "ddim" and other["nll_bound_bits"] == first["nll_bound_bits"]
    for name in ("samples.npy", "samples.png", "loss.png", "metrics.json"):
        stem, ext = os.path.splitext(name)
        assert (tmp_path / "run" / f"{stem}.sampler-ddim.sample-steps-10{ext}").is_file()
        assert (tmp_path / "run" / name).read_bytes() == files[name] or name in ("loss.png", "samples.png",
                                                                                 "metrics.json")
    assert (tmp_path / "run" / "metrics.json").read_text().count('"sampler": "ddpm"') == 1
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == files["checkpoint.npz"]   # config unchanged


def test_toy2d_growing_steps_is_the_same_run_only_without_lr_decay(tmp_path):
    toy, out = load("toy2d"), str(tmp_path / "run")
    toy(TOY + ["--out", out, "--lr-decay", "none"])
    longer = toy(TOY[:1] + ["50"] + TOY[2:] + ["--out", out, "--lr-decay", "none", "--resume"])
    assert longer["steps"] == 50
    with pytest.raises(RunError, match=r"--steps 30 \(the checkpoint's run has 50; it can only grow\)"):
        toy(TOY + ["--out", out, "--lr-decay", "none", "--resume"])


def test_toy2d_unreadable_checkpoint_missing_checkpoint_and_bad_out(tmp_path):
    toy = load("toy2d")
    with pytest.raises(RunError, match="--resume: there is no checkpoint at"):
        toy(TOY + ["--out", str(tmp_path / "none"), "--resume"])
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunError, match=r"--out .*file: this is a file, expected a folder"):
        toy(TOY + ["--out", str(tmp_path / "file")])
    with pytest.raises(RunError, match=r"--out .*file/sub: cannot create the folder"):
        toy(TOY + ["--out", str(tmp_path / "file" / "sub")])

    out = tmp_path / "broken"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 the first bytes of a zip and then nothing")
    for extra in (["--resume"], []):
        with pytest.raises(RunError, match=r"checkpoint.npz cannot be read .* left as it is: move it away, or "
                                           r"pass --restart"):
            toy(TOY + ["--out", str(out)] + extra)
    assert os.listdir(out) == ["checkpoint.npz"]
    assert toy(TOY + ["--out", str(out), "--restart"])["steps"] == 30   # the user chose to start over


def test_toy2d_full_disk_before_and_after_training(tmp_path, monkeypatch):
    import shutil
    toy, out = load("toy2d"), tmp_path / "run"
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1_000_000))
    with pytest.raises(RunError, match=r"--out .*run: 1.0 MB free on this disk, but this run needs about 10.\d MB"):
        toy(TOY + ["--out", str(out)])
    assert os.listdir(out) == []                                         # refused before any work
    monkeypatch.undo()

    toy(TOY + ["--out", str(out)])
    files = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def full(*args, **kwargs):                                           # every atomic rename fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(RunError, match=r"could not write the outputs in .*No space left on device.*files already "
                                       r"there are intact and the checkpoint holds step 30: --resume"):
        toy(TOY + ["--out", str(out), "--resume"])
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == files   # nothing half-written

    def full_mid_run(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out2 = tmp_path / "run2"
    real_replace = os.replace
    calls = []

    def fail_after_two(src, dst):
        calls.append(dst)
        if len(calls) > 2:
            full_mid_run()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_after_two)
    with pytest.raises(RunError, match=r"could not write the checkpoint .*checkpoint.npz at step 3 \(No space left "
                                       r"on device\); the previous checkpoint \(step 2\) is intact"):
        toy(TOY + ["--out", str(out2), "--checkpoint-every", "1"])
    monkeypatch.undo()
    assert sorted(os.listdir(out2)) == ["checkpoint.npz"]
    assert toy(TOY + ["--out", str(out2), "--checkpoint-every", "1", "--resume"])["steps"] == 30


def test_toy2d_ctrl_c_says_where_to_resume_from(tmp_path, monkeypatch):
    toy = load("toy2d")
    from tinydiff.train import Trainer
    real_step = Trainer.train_step

    def interrupted(self):
        if self.step == 7:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(RunError, match=r"interrupted at step 7; .*checkpoint.npz holds step 5 \(--resume continues"):
        toy(TOY + ["--out", str(tmp_path / "run"), "--checkpoint-every", "5"])


@pytest.mark.skipif(os.name != "posix", reason="fcntl.flock and SIGKILL")
def test_toy2d_a_second_run_into_a_folder_in_use_is_refused_and_a_killed_run_leaves_it_free(tmp_path):
    """Two runs started into one --out: the second stops at once, naming the first (pid, command,
    start time); the first is then SIGKILLed, and --resume continues it: no lock is left stuck."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.path.abspath(os.path.join(EXAMPLES, "..")) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    first = subprocess.Popen([sys.executable, "-u", os.path.join(EXAMPLES, "toy2d.py"), *TOY[2:], "--steps", "100000",
                              "--checkpoint-every", "5", "--out", str(out)], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        while not first.stdout.readline().startswith("training "):
            assert first.poll() is None, "the first run ended before training"
        while not (out / "checkpoint.npz").exists():
            time.sleep(0.05)
        with pytest.raises(RunError) as info:
            load("toy2d")(TOY + ["--out", str(out), "--resume"])
        message = str(info.value)
        assert "\n" not in message and f"another run is writing there (pid {first.pid} on " in message
        assert "toy2d.py" in message and f"--out {out}" in message and "started 20" in message
        assert first.poll() is None                                           # the first run goes on, untouched:
        assert json.loads((out / ".run.lock").read_text())["pid"] == first.pid   # its lock, its files only
        assert {name for name in os.listdir(out) if not TEMPORARY.match(name)} == {"checkpoint.npz", ".run.lock"}
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert json.loads((out / ".run.lock").read_text())["pid"] == first.pid       # its note stays, stale
    # locked no more: the checkpoint is read (and this run refused, by name, as a different one)
    with pytest.raises(RunError, match=r"--steps 30 \(the checkpoint has 100000\)"):
        load("toy2d")(TOY + ["--out", str(out), "--resume"])
    assert not (out / ".run.lock").exists()


# ---------------------------------------------------------------- MNIST
MNIST_DIR = str(mnist_copy.MNIST_DIR)
needs_mnist = mnist_copy.needs_mnist
MNIST = ["--width", "8", "--mults", "1,2", "--steps", "4", "--batch", "4", "--train-limit", "32", "--T", "20",
         "--n-samples", "10", "--sample-steps", "2", "--bpd-digits", "0", "--no-score", "--no-download",
         "--checkpoint-every", "1", "--data-dir", MNIST_DIR]

MNIST_BAD_FLAGS = [
    (["--minutes", "0"], "argument --minutes: expected a finite number > 0, got '0'"),
    (["--minutes", "-2"], "argument --minutes: expected a finite number > 0"),
    (["--steps", "0"], "argument --steps: expected an integer >= 1"),
    (["--batch", "-1"], "argument --batch: expected an integer >= 1"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0"),
    (["--ema", "1.5"], "argument --ema: expected a number in [0, 1)"),
    (["--label-dropout", "1.5"], "argument --label-dropout: expected a number in [0, 1]"),
    (["--seed", "-3"], "argument --seed: expected an integer >= 0"),
    (["--width", "0"], "argument --width: expected an integer >= 1"),
    (["--width", "12"], "--width 12: GroupNorm's 8 groups need a multiple of 8"),
    (["--mults", "1,x"], "--mults: expected comma-separated integers"),
    (["--mults", "1,0"], "--mults: expected positive integers"),
    (["--mults", "1,2,2,2"], "--mults 1,2,2,2: 4 levels halve 28 x 28 images 3 times"),
    (["--T", "0"], "argument --T: expected an integer >= 1"),
    (["--T", "1", "--schedule", "linear", "--sample-steps", "1"],
     "--schedule linear with --T 1: the chain ends at alpha_bar_T = 0.9999"),
    (["--schedule", "logsnr"], "argument --schedule: invalid choice: 'logsnr'"),
    (["--objective", "sohl-dickstein"], "argument --objective: invalid choice"),
    (["--weighting", "p2"], "argument --weighting: invalid choice"),
    (["--sampler", "langevin"], "argument --sampler: invalid choice"),
    (["--sample-steps", "0"], "argument --sample-steps: expected an integer >= 1"),
    (["--sample-steps", "5000"], "--sample-steps 5000: a sampler can visit at most the T = 1000 trained steps"),
    (["--guidance", "-1"], "argument --guidance: expected a finite number >= 0"),
    (["--guidance", "inf"], "argument --guidance: expected a finite number >= 0"),
    (["--n-samples", "0"], "argument --n-samples: expected an integer >= 1"),
    (["--n-samples", "15"], "--n-samples must be a multiple of 10"),
    (["--bpd-digits", "-1"], "argument --bpd-digits: expected an integer >= 0"),
    (["--bpd-timesteps", "1"], "--bpd-timesteps 1: the bound needs at least 2"),
    (["--train-limit", "0"], "argument --train-limit: expected an integer >= 1"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: expected an integer >= 1"),
    (["--resume", "--restart"], "argument --restart: not allowed with argument --resume"),
    (["--unconditional", "--guidance", "3"], "--guidance with --unconditional: a model without labels"),
    (["--unconditional", "--label-dropout=0.2"], "--label-dropout with --unconditional"),
]


@pytest.mark.parametrize("argv, words", MNIST_BAD_FLAGS, ids=[" ".join(a) for a, _ in MNIST_BAD_FLAGS])
def test_mnist_refuses_bad_flags_while_parsing(argv, words, capsys):
    assert words in parse_error(load("mnist"), argv, capsys)


def interrupt_at(monkeypatch, step):
    from tinydiff.train import Trainer
    real_step = Trainer.train_step

    def train_step(self):
        if self.step == step:
            raise KeyboardInterrupt
        return real_step(self)
    monkeypatch.setattr(Trainer, "train_step", train_step)


@needs_mnist
def test_mnist_interrupted_and_resumed_is_bit_for_bit_the_straight_run(tmp_path, monkeypatch):
    """A class-conditional run with label dropout, Ctrl-C after 2 of 4 steps, then --resume: the
    weights, EMA, Adam moments, RNG, data order, losses, samples and metrics equal the run that
    was never interrupted. Then the same-run rules on MNIST's own flags."""
    from tinydiff.checkpoint import load_checkpoint
    mnist = load("mnist")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    first = mnist(MNIST + ["--out", str(straight)])

    interrupt_at(monkeypatch, 2)
    with pytest.raises(RunError, match=r"interrupted at step 2; .*checkpoint.npz holds step 2"):
        mnist(MNIST + ["--out", str(broken)])
    monkeypatch.undo()
    assert sorted(os.listdir(broken)) == ["checkpoint.npz"]
    resumed = mnist(MNIST + ["--out", str(broken), "--resume"])

    a, meta_a = load_checkpoint(straight / "checkpoint.npz")
    b, meta_b = load_checkpoint(broken / "checkpoint.npz")
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert all(meta_a[k] == meta_b[k] for k in ("step", "rng", "optimizer", "data", "warmup"))
    for name in ("samples.npy", "labels.npy"):
        assert (straight / name).read_bytes() == (broken / name).read_bytes()
    drop = ("train_seconds", "sample_seconds", "train_cpu_seconds", "sample_cpu_seconds")   # clocks, not results
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}

    out = str(straight)
    for flags, words in [(["--width", "16"], "--width 16 (the checkpoint has 8)"),
                         (["--mults", "1,2,2"], "--mults 1,2,2 (the checkpoint has 1,2)"),
                         (["--T", "50"], "--T 50 (the checkpoint has 20)"),
                         (["--objective", "hybrid"], "--objective hybrid (the checkpoint has eps)"),
                         (["--unconditional"], "--unconditional True (the checkpoint has False)"),
                         (["--steps", "9"], "--steps 9 (the checkpoint has 4)")]:
        with pytest.raises(RunError) as info:
            mnist(MNIST + flags + ["--out", out, "--resume"])
        assert words in str(info.value)
    before = (straight / "grid.png").read_bytes()
    mnist(MNIST + ["--out", out, "--resume", "--guidance", "5"])
    assert (straight / "grid.guidance-5.0.png").is_file() and (straight / "metrics.guidance-5.0.json").is_file()
    assert (straight / "grid.png").read_bytes() == before
    with pytest.raises(RunError, match="already holds a run"):
        mnist(MNIST + ["--out", out])


# ---------------------------------------------------------------- lessons that open as notebooks
@pytest.mark.parametrize("name", ["toy2d", "mnist", "color_digits", "continue_in_torch"])
def test_the_lesson_is_at_most_200_lines_of_percent_cells_each_runnable_on_its_own(name):
    """What jupytext and VS Code split on: `# %%` cells, markdown cells of prose, and every code
    cell a complete piece of top-level Python (a notebook runs them one by one); no example
    imported by path, no process tuning in the lesson."""
    import re
    text = open(os.path.join(EXAMPLES, f"{name}.py"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 200
    cells = re.split(r"^# %%", text, flags=re.M)[1:]
    markdown = [c for c in cells if c.startswith(" [markdown]")]
    assert len(cells) >= 6 and len(markdown) >= 3
    for cell in cells:
        if cell in markdown:
            assert all(line.startswith("#") for line in cell.splitlines()[1:] if line.strip()), cell
        else:
            compile(cell.split("\n", 1)[1], f"{name}.py cell", "exec")      # after "# %% <title>"
    for stale in ("spec_from_file_location", "OPENBLAS_NUM_THREADS", "reuse_freed_memory", "def main("):
        assert stale not in text, stale
