"""Runs that survive their users: everything an example does around its lesson.

An example uses one object, ``td.Run`` (below), in a few lines: it declares the flags, checks
them, prepares and locks the output folder, resumes or refuses, trains, and writes the
outputs. Learners kill runs, fill disks, mistype flags, resume with other settings and start
a second run into a folder in use; every such case ends in one line that names what was
wrong, and nothing the user already has is overwritten or lost:

    Run(name, doc)     the run object: run_flag / eval_flag / flag, parse, start, train, path,
                       save, finish (see its docstring; run_example runs a script in-process)
    FolderLock(folder) one run per output folder: fcntl.flock on OUT/.run.lock, which the
                       kernel drops when the process dies, so a killed run never leaves it stuck
    argparse types     positive_int, nonnegative_int, finite_float, positive_float,
                       nonnegative_float, probability, open_unit, decay_rate:
                       ``type=positive_int`` makes ``--steps 0``
                       fail while parsing, in one line, before any work is done.
    check_reaches_noise(betas), check_chain(betas, args)
                       refuse a schedule whose last step is still mostly data (--T 1), and
                       --sample-steps above --T.
    prepare_output_dir(folder, need_bytes)
                       create the output folder, prove it writable, check the free space,
                       and remove temporary files a killed run left behind.
    read_run_config(checkpoint, resume=, restart=)
                       resume or refuse: the config saved in the checkpoint, or None for a
                       fresh start. A checkpoint is never silently replaced: without
                       --resume or --restart an existing one stops the script, and one that
                       cannot be read is named and kept until the user chooses.
    check_same_run(saved, current, run_flags)
                       a resumed run must be the same run: refuse, by flag name and with
                       both values, any flag that would change the model, diffusion or data.
    evaluation_tag(saved, current, eval_flags), tagged(name, tag)
                       flags that only change sampling or evaluation are allowed on resume;
                       their outputs get new names (samples.sampler-ddim.png), so the
                       original run's samples.png and metrics.json are never overwritten.
    train_within_budget(trainer, checkpoint, steps=, minutes=, saved=)
                       train a fixed number of steps, or for a time budget (the first steps
                       measure the speed, which fixes the step count and the learning-rate
                       decay), or finish a resumed run; Ctrl-C and NaNs end in one line.
    load_trained(checkpoint, build)
                       rebuild a finished run's diffusion and model, with its averaged (EMA)
                       weights, from its checkpoint (td.recipes.load_mnist_run uses it).

A script sorts its flags into three kinds: *run flags* define what is trained (T, the
schedule, the data, the objective, the width, the seed, the batch, the learning rate);
*evaluation flags* only change what is computed from the trained model (the sampler, its
number of steps, a guidance scale); everything else (--out, --resume, --no-gifs) is
neither. The saved ``config`` is always the original run's, so later resumes compare
against the run as it was trained.

Errors are ``RunError``, a SystemExit: Python prints its message alone, with no traceback,
and exits with status 1, which is what a command-line user should see. Tests catch it as
SystemExit and read the message from ``str(err)``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import runpy
import shutil
import socket
import sys
import time
import uuid
from types import SimpleNamespace

import numpy as np

from .checkpoint import CheckpointError, atomic_write, load_checkpoint, unflatten_state
from .samplers import check_langevin_step_lr
from .train import CheckpointWriteError, NonFiniteError

# Temporary files of atomic_write / atomic_path: ".<name>.<12 hex digits>.tmp[<ext>]".
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[A-Za-z0-9]+)?$")


class RunError(SystemExit):
    """A problem with the run's flags, files or folder, stated in one line (exit status 1).

    >>> issubclass(td.runs.RunError, SystemExit)               # a script ends with the message, no traceback
    True
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


def flag(name: str) -> str:
    """The command-line spelling of an argparse destination: "sample_steps" -> "--sample-steps".

    >>> td.runs.flag("sample_steps")
    '--sample-steps'
    """
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------- argparse types
def _number(text, kind, expected, ok):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (isinstance(value, int) or math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def finite_float(text) -> float:
    """argparse type: any finite number (refuses nan and inf).

    >>> td.runs.finite_float("-5")
    -5.0
    """
    return _number(text, float, "a finite number", lambda v: True)


def positive_int(text) -> int:
    """argparse type: an int >= 1 (steps, batch size, T, widths).

    >>> td.runs.positive_int("6000")
    6000
    """
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def nonnegative_int(text) -> int:
    """argparse type: an int >= 0 (a seed, a count that may be zero).

    >>> td.runs.nonnegative_int("0")
    0
    """
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text) -> float:
    """argparse type: a finite number > 0 (a learning rate, minutes).

    >>> td.runs.positive_float("2e-3")
    0.002
    """
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def nonnegative_float(text) -> float:
    """argparse type: a finite number >= 0 (a noise level, a guidance scale w).

    >>> td.runs.nonnegative_float("0")
    0.0
    """
    return _number(text, float, "a finite number >= 0", lambda v: v >= 0)


def probability(text) -> float:
    """argparse type: a number in [0, 1] (label dropout).

    >>> td.runs.probability("0.1")
    0.1
    """
    return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def open_unit(text) -> float:
    """argparse type: a number strictly between 0 and 1 (a beta).

    >>> td.runs.open_unit("0.02")
    0.02
    """
    return _number(text, float, "a number strictly between 0 and 1", lambda v: 0 < v < 1)


def decay_rate(text) -> float:
    """argparse type: a number in [0, 1) (an EMA decay; 1 would never move).

    >>> td.runs.decay_rate("0.995")
    0.995
    """
    return _number(text, float, "a number in [0, 1)", lambda v: 0 <= v < 1)


# ---------------------------------------------------------------- flags that make no sense together
MAX_SIGNAL_AT_T = 0.5      # alpha_bar_T above this: x_T is more data than noise


def check_reaches_noise(betas, max_signal: float = MAX_SIGNAL_AT_T) -> None:
    """A ValueError if the chain ends too far from noise for sampling from N(0, I) to work.

    alpha_bar_T is the fraction of the data's variance still signal at the last step. A
    sampler starts from x_T ~ N(0, I); when alpha_bar_T is large (DDPM's linear betas with
    T = 1 keep 0.9999) the samples come out wrong whatever the model learned, and the prior
    term L_T = KL(q(x_T | x_0) || N(0, I)) of the bound is large: about
    -1/2 log2(1 - alpha_bar_T) bits per dimension for unit-variance data.

    >>> td.runs.check_reaches_noise(td.linear_beta_schedule(1000))        # ends at alpha_bar_T = 4e-5: fine
    >>> td.runs.check_reaches_noise(td.linear_beta_schedule(10))
    Traceback (most recent call last):
    ...
    ValueError: ...
    """
    alpha_bar_T = float(np.prod(1.0 - np.asarray(betas, dtype=np.float64)))
    if alpha_bar_T > max_signal:
        prior_bits = -0.5 * math.log2(1.0 - alpha_bar_T)
        raise ValueError(f"the chain ends at alpha_bar_T = {alpha_bar_T:.4g}: {alpha_bar_T:.0%} of the data's "
                         f"variance is still signal after the last step (at most {max_signal:.0%} makes sense), "
                         f"so x_T is not noise and sampling from N(0, I) cannot work (the prior term L_T alone "
                         f"costs ~{prior_bits:.2g} bits per dimension); use a larger --T or a schedule that "
                         "ends nearer noise")


def check_chain(betas, args, langevin_step_lr: float | None = None) -> None:
    """Refuse, with a ValueError naming the flags, a chain sampling cannot work with: one that
    ends too far from noise (``check_reaches_noise``), --sample-steps above --T, and (with
    ``langevin_step_lr``) a Langevin step too large for the schedule's smallest noise level.
    ``args`` carries the flags (schedule, sample_steps); T is ``len(betas)``.

    >>> from types import SimpleNamespace
    >>> td.runs.check_chain(td.linear_beta_schedule(1000), SimpleNamespace(schedule="linear", sample_steps=5000))
    Traceback (most recent call last):
    ...
    ValueError: --sample-steps 5000: a sampler can visit at most the T = 1000 trained steps
    """
    T, steps = len(betas), getattr(args, "sample_steps", None)
    if steps is not None and steps > T:
        raise ValueError(f"--sample-steps {steps}: a sampler can visit at most the T = {T} trained steps")
    try:
        check_reaches_noise(betas)
    except ValueError as err:
        raise ValueError(f"--schedule {args.schedule} with --T {T}: {err}") from None
    if langevin_step_lr is not None:
        try:
            check_langevin_step_lr(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)), langevin_step_lr)
        except ValueError as err:
            raise ValueError(f"--sampler langevin with --schedule {args.schedule}: {err}") from None


def add_mnist_run_flags(parser: argparse.ArgumentParser, name: str, checkpoint_every: int = 250,
                        redo: str = "re-sample") -> None:
    """The "data and files" flags every MNIST example shares: --data-dir, --no-download,
    --train-limit, --out (default out/<name>), --resume or --restart, --checkpoint-every.
    redo says what --resume does to a finished run ("re-sample", "re-evaluate").

    >>> p = argparse.ArgumentParser()
    >>> td.runs.add_mnist_run_flags(p, "mnist")
    >>> args = p.parse_args(["--resume"])
    >>> args.out, args.resume, args.restart, args.checkpoint_every
    ('out/mnist', True, False, 250)
    """
    d = parser.add_argument_group("data and files")
    d.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: $TINYDIFF_DATA/mnist "
                                                    "or ~/.cache/tinydiff/mnist)")
    d.add_argument("--no-download", action="store_true", help="never download MNIST; fail if it is missing")
    d.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training digits")
    d.add_argument("--out", default=os.path.join("out", name), help="output folder")
    again = d.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help=f"continue from OUT/checkpoint.npz, or {redo} a finished run (other sampling or "
                            "evaluation flags write their outputs under new names)")
    again.add_argument("--restart", action="store_true",
                       help="start a new run in OUT even though it holds one (its checkpoint is overwritten)")
    d.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every,
                   help="write OUT/checkpoint.npz every this many steps (and at the end)")


def unet_shape_flags(width: int, mults: str, image_size: int = 28) -> tuple:
    """Check --width and parse --mults (comma-separated) for a UNet on image_size x image_size
    images; returns the multipliers as a tuple, or raises ValueError naming the flag.

    The UNet halves the image len(mults) - 1 times, so image_size must divide by
    2 ** (len(mults) - 1); its GroupNorms use 8 groups, so the width must divide by 8.

    >>> td.runs.unet_shape_flags(16, "1,2,2")
    (1, 2, 2)
    >>> td.runs.unet_shape_flags(16, "1,2,2,2")
    Traceback (most recent call last):
    ...
    ValueError: --mults 1,2,2,2: 4 levels halve 28 x 28 images 3 times, which needs 28 to divide by 8
    """
    try:
        parsed = tuple(int(v) for v in str(mults).split(","))
    except ValueError:
        raise ValueError(f"--mults: expected comma-separated integers such as 1,2,2, got {mults!r}") from None
    if not parsed or min(parsed) < 1:
        raise ValueError(f"--mults: expected positive integers such as 1,2,2, got {','.join(map(str, parsed))}")
    if width % 8:
        raise ValueError(f"--width {width}: GroupNorm's 8 groups need a multiple of 8")
    if image_size % 2 ** (len(parsed) - 1):
        raise ValueError(f"--mults {','.join(map(str, parsed))}: {len(parsed)} levels halve {image_size} x "
                         f"{image_size} images {len(parsed) - 1} times, which needs {image_size} to divide by "
                         f"{2 ** (len(parsed) - 1)}")
    return parsed


# ---------------------------------------------------------------- the output folder
def remove_temporaries(folder) -> list:
    """Delete the temporary files (".<name>.<hex>.tmp") that atomic writes leave only when the
    process is killed mid-write. They are never read, so removing them loses nothing.
    Returns the names removed.

    >>> import tempfile
    >>> td.runs.remove_temporaries(tempfile.mkdtemp())
    []
    """
    removed = []
    for name in sorted(os.listdir(folder)):
        if TEMPORARY.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def prepare_output_dir(folder, need_bytes: int = 0, name: str = "--out", clean: bool = True) -> list:
    """Make sure ``folder`` can take this run's files before any work is done.

    Creates it (with parents), writes and deletes a probe file in it, and compares the free
    space with ``need_bytes`` (``shutil.disk_usage``; skipped when 0). Removes temporary files
    a killed run left (``remove_temporaries``; ``clean=False`` leaves them, for a caller that
    first locks the folder) and returns their names. Raises RunError naming
    the flag ``name`` and the folder when any of this fails. A disk that fills up later is
    still possible; the atomic writes then keep the previous files intact.

    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "out", "toy2d")
    >>> td.runs.prepare_output_dir(folder), os.path.isdir(folder)     # created; no temporaries to remove
    ([], True)
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunError(f"{name} {folder}: this is a file, expected a folder for the outputs")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise RunError(f"{name} {folder}: cannot create the folder ({err.strerror or err})") from None
    probe = os.path.join(folder, f".write-probe.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(probe, "wb") as f:
            f.write(b"tinydiff")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise RunError(f"{name} {folder}: cannot write in this folder ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise RunError(f"{name} {folder}: {free / 1e6:.1f} MB free on this disk, but this run needs "
                           f"about {need_bytes / 1e6:.1f} MB (checkpoints and pictures); free some space "
                           f"or choose another {name}")
    return remove_temporaries(folder) if clean else []


def checkpoint_bytes(model) -> int:
    """About how many bytes one checkpoint of ``model`` takes: the weights, their EMA and Adam's
    two moments, i.e. 4 copies of the parameters. Writing one needs twice that on disk
    for a moment (the new file beside the old one).

    >>> td.runs.checkpoint_bytes(td.nn.Linear(10, 10, rng=np.random.default_rng(0)))   # 110 float32 x 4 copies
    1760
    """
    return 4 * sum(p.data.nbytes for p in model.parameters())


# ---------------------------------------------------------------- resume or refuse
def read_run_config(checkpoint, *, resume: bool, restart: bool = False) -> dict | None:
    """Decide between a fresh start and a resume, never losing a checkpoint by accident.

    Returns the checkpoint's metadata ``{"step": ..., "config": {...}}`` when resuming, or
    None for a fresh start. Raises RunError when:
      * --resume is given but there is no checkpoint to resume;
      * the checkpoint cannot be read (truncated, corrupted, not a tinydiff checkpoint): it is
        named and left untouched; the user removes it or passes --restart;
      * a checkpoint exists and neither --resume nor --restart was given: a new run would
        overwrite it and the outputs beside it.
    --restart starts afresh; the old checkpoint is replaced at the new run's first save.

    >>> import os, tempfile
    >>> td.runs.read_run_config(os.path.join(tempfile.mkdtemp(), "checkpoint.npz"), resume=False) is None   # a new run
    True
    """
    checkpoint = os.fspath(checkpoint)
    if resume and restart:
        raise RunError("--resume and --restart: choose one (continue the saved run, or start over)")
    exists = os.path.exists(checkpoint)
    if restart:
        return None
    if not exists:
        if resume:
            raise RunError(f"--resume: there is no checkpoint at {checkpoint} (a run writes its first one "
                           "after its first checkpoint interval); run without --resume to start a new run")
        return None
    try:
        _, meta = load_checkpoint(checkpoint)
        if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("step"), int):
            raise ValueError("it holds no run config and step")
    except (OSError, ValueError) as err:
        raise RunError(f"{checkpoint} cannot be read ({err}); it was left as it is: move it away, or pass "
                       "--restart to start a new run that overwrites it") from None
    if not resume:
        steps = meta["config"].get("steps")
        raise RunError(f"{checkpoint} already holds a run (step {meta['step']}"
                       f"{f' of {steps}' if steps is not None else ''}); pass --resume to continue it, "
                       "--restart to start over and overwrite it, or --out to put a new run elsewhere")
    return meta


def _show(value) -> str:
    """A flag's value as the user would type it: [1, 2, 2] -> 1,2,2."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def as_saved(value):
    """A flag's value as it reads back from a checkpoint's JSON config (a tuple becomes a list).

    >>> td.runs.as_saved((1, 2))                          # JSON has lists, not tuples
    [1, 2]
    """
    return json.loads(json.dumps(value))


def check_same_run(saved: dict, current: dict, run_flags, checkpoint="the checkpoint", growable=()) -> None:
    """Refuse to resume with run flags that differ from the ones saved in the checkpoint.

    saved: the checkpoint's config; current: this invocation's flags (``vars(args)``);
    run_flags: the names that define the run. ``growable`` names flags that may grow but not
    shrink (``steps`` when the learning rate does not decay with it: training for longer is
    the same run, continued). Raises one RunError listing every differing flag with both
    values, e.g. ``--T 100 (the checkpoint has 1000)``.

    >>> td.runs.check_same_run({"T": 1000, "lr": 0.002}, {"T": 100, "lr": 0.002}, ["T", "lr"])
    Traceback (most recent call last):
    ...
    tinydiff.runs.RunError: ... --T 100 (the checkpoint has 1000)...
    """
    differ = []
    for name in run_flags:
        old, new = saved.get(name, "<not recorded>"), as_saved(current.get(name))
        if name in growable and isinstance(old, (int, float)) and isinstance(new, (int, float)):
            if new < old:
                differ.append(f"{flag(name)} {new} (the checkpoint's run has {old}; it can only grow)")
        elif old != new:
            differ.append(f"{flag(name)} {_show(new)} (the checkpoint has {_show(old)})")
    if differ:
        raise RunError(f"--resume: {checkpoint} is a different run: " + ", ".join(differ) + ". These flags "
                       "define the model, the diffusion or the data; drop them to continue that run, or "
                       "pass --out to train a new one")


def resumed_config(saved: dict, current: dict, growable=()) -> dict:
    """The config a resumed run saves: the original run's, with grown flags updated.

    >>> td.runs.resumed_config({"steps": 100, "T": 10}, {"steps": 300, "T": 10}, growable=("steps",))
    {'steps': 300, 'T': 10}
    """
    return {**saved, **{name: current[name] for name in growable if name in current}}


# ---------------------------------------------------------------- names of re-evaluated outputs
def evaluation_tag(saved: dict | None, current: dict, eval_flags) -> str:
    """"" for the run's own evaluation, else a tag naming the evaluation flags that differ.

    A fresh run (saved None) and a resume with the run's own evaluation flags get "";
    ``--resume --sampler ddim --sample-steps 50`` on a run sampled with ddpm gets
    "sampler-ddim.sample-steps-50": one "<flag>-<value>" per differing flag, in the order of
    eval_flags. Pass the tag to ``tagged``.

    >>> td.runs.evaluation_tag({"sampler": "ddpm"}, {"sampler": "ddim"}, ["sampler"])
    'sampler-ddim'
    """
    if saved is None:
        return ""
    parts = [f"{name.replace('_', '-')}-{_show(as_saved(current.get(name)))}" for name in eval_flags
             if saved.get(name) != as_saved(current.get(name))]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", ".".join(parts))      # a safe file name on every system


def tagged(filename: str, tag: str) -> str:
    """``tagged("samples.png", "sampler-ddim")`` -> "samples.sampler-ddim.png"; an empty tag
    leaves the name alone.

    >>> td.runs.tagged("samples.png", "sampler-ddim"), td.runs.tagged("samples.png", "")
    ('samples.sampler-ddim.png', 'samples.png')
    """
    if not tag:
        return filename
    stem, ext = os.path.splitext(filename)
    return f"{stem}.{tag}{ext}"


# ---------------------------------------------------------------- training for a time budget
def train_within_budget(trainer, checkpoint, *, steps=None, minutes=10.0, saved=None, warmup=100, log=print):
    """Train ``trainer`` to the end of its run and return the seconds it took.

    Three cases:
      * ``saved`` (the checkpoint's metadata, from ``read_run_config``): resume from
        ``checkpoint`` and train to ``steps``, or when it is None to the run's own step count
        (``config["steps_resolved"]``); a finished run trains no further.
      * ``steps`` given: train exactly that many steps.
      * otherwise: a budget of ``minutes``, calibration included. 5 steps warm up, 10 more
        are timed, and the speed sets the step count; the learning rate then warms up for
        min(warmup, steps / 10) steps and, if the trainer decays it, reaches 0 at the last step. If the
        machine slows down, training stops at the budget anyway (``Trainer.train``'s
        max_seconds) and says so; ``--resume`` finishes the planned steps.
    The step count is saved as ``trainer.config["steps_resolved"]``, so a resumed run keeps
    it. Ctrl-C and a non-finite loss or failed checkpoint write become a RunError naming the
    step the checkpoint holds.

    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(100))
    >>> model = td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0))
    >>> trainer = td.Trainer(model, d, td.data.make_dataset("8gaussians"), batch_size=32, log_every=0,
    ...                      lr_decay_steps=30)
    >>> seconds = td.runs.train_within_budget(trainer, None, steps=30, log=lambda line: None)
    >>> trainer.step, trainer.config["steps_resolved"], trainer.warmup.decay_steps
    (30, 30, 30)
    """
    begin, budget = time.perf_counter(), None
    try:                                    # Ctrl-C, a NaN, a failed write: one line, at any moment
        if saved is not None:
            try:
                trainer.resume(checkpoint)
            except CheckpointError as err:
                raise RunError(str(err)) from None
            steps = steps or int((trainer.resumed_config or {}).get("steps_resolved", trainer.step))
            log(f"resumed from {checkpoint} at step {trainer.step} of {steps}")
        elif steps is None:                 # calibrate: 5 steps to warm up, 10 timed, within the budget
            budget = minutes * 60
            trainer.train(5, max_seconds=budget)
            mid, done = time.perf_counter(), trainer.step
            if mid - begin < budget:
                trainer.train(15, max_seconds=budget - (mid - begin))
            now = time.perf_counter()
            rate = (trainer.step - done) / (now - mid) if trainer.step > done else trainer.step / (now - begin)
            steps = max(20, int((budget - (time.perf_counter() - begin)) * rate) + 15)
            log(f"{rate:.2f} steps/s: {minutes:g} minutes is about {steps} steps of batch {trainer.batch_size} "
                "(training stops at the budget if the machine slows down)")
            # the learning-rate schedule, now that the step count is known
            trainer.warmup.warmup_steps = min(warmup, steps // 10)
            if trainer.warmup.decay_steps is not None:
                trainer.warmup.decay_steps = steps
            trainer.optimizer.lr = trainer.warmup.lr_at(trainer.warmup.step_count)
        trainer.config["steps_resolved"] = steps
        log(f"training to step {steps} with batches of {trainer.batch_size}")
        left = None if budget is None else budget - (time.perf_counter() - begin)
        if left is None or left > 0:
            trainer.train(steps, max_seconds=left)
        elif trainer.checkpoint_path:
            trainer.save(trainer.checkpoint_path)   # the calibration used up the budget: save the planned steps
    except KeyboardInterrupt:
        kept = f"{checkpoint} holds step {trainer.saved_step}" if trainer.saved_step else "no checkpoint was written"
        raise RunError(f"interrupted at step {trainer.step}; {kept} (--resume continues from it)") from None
    except (NonFiniteError, CheckpointWriteError) as err:
        raise RunError(str(err)) from None
    if trainer.step < steps:
        log(f"the {minutes:g}-minute budget ran out at step {trainer.step} of {steps} "
            "(--resume finishes the planned steps)")
    return time.perf_counter() - begin


# ---------------------------------------------------------------- a finished run's model
def load_trained(checkpoint, build, *, weights: str = "ema", name: str = "--checkpoint"):
    """Rebuild a trained diffusion and model from a checkpoint an example wrote.

    build: the example's own builder, ``build(config) -> (diffusion, model)``, called with the
    run's flags (``meta["config"]``, as attributes: ``config.T``, ``config.width``, ...), so
    the model is built exactly as it was trained. weights: "ema" (the averaged weights the
    examples sample with: ``ema/shadow.<name>`` in the file) or "model" (the raw weights of
    the last step). name: how errors call the file's flag.

    Returns (diffusion, model, meta); meta["config"] holds the run's flags, meta["step"] its
    last step. Raises RunError, one line naming the file, when it is missing, unreadable, not
    a run's checkpoint, or does not fit what ``build`` makes (another example's file).

        diffusion, model, meta = td.runs.load_trained("out/mnist/checkpoint.npz", td.recipes.mnist_model)

    >>> import os, tempfile
    >>> from types import SimpleNamespace
    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(100))
    >>> build = lambda config: (d, td.models.ToyMLP(hidden=config.hidden, rng=np.random.default_rng(0)))
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> trainer = td.Trainer(build(SimpleNamespace(hidden=16))[1], d, td.data.make_dataset("8gaussians"),
    ...                      batch_size=32, log_every=0, checkpoint_path=path, config={"hidden": 16})
    >>> _ = trainer.train(3)
    >>> diffusion, model, meta = td.runs.load_trained(path, build)
    >>> meta["step"], bool(np.array_equal(model.state_dict()["net.0.weight"], trainer.ema.shadow[0]))
    (3, True)
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights: expected 'ema' or 'model', got {weights!r}")
    checkpoint = os.fspath(checkpoint)
    if not os.path.isfile(checkpoint):
        raise RunError(f"{name} {checkpoint}: there is no checkpoint there")
    try:
        arrays, meta = load_checkpoint(checkpoint)
        if not isinstance(meta.get("config"), dict):
            raise ValueError("it holds no run config")
    except (OSError, ValueError) as err:
        raise RunError(f"{name} {checkpoint} cannot be read ({err})") from None
    try:
        diffusion, model = build(SimpleNamespace(**meta["config"]))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise RunError(f"{name} {checkpoint}: its run config does not describe this kind of model ({err}); "
                       "is it another example's checkpoint?") from None
    state = unflatten_state(arrays).get(weights, {})
    if weights == "ema":
        state = {key[len("shadow."):]: value for key, value in state.items() if key.startswith("shadow.")}
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as err:
        raise RunError(f"{name} {checkpoint}: its {weights} weights do not fit the model its config describes "
                       f"({err}); is it another example's checkpoint?") from None
    return diffusion, model, meta


# ---------------------------------------------------------------- one process per output folder
class FolderLock:
    """An exclusive lock on an output folder, so two runs never write into one folder at once.

    ``acquire()`` takes ``fcntl.flock`` on ``<folder>/.run.lock`` and writes the holder into
    it (pid, host, start time, command); a second process gets a RunError naming that run.
    The kernel drops a flock when its process ends in any way (SIGKILL included), so a killed
    run never leaves the folder locked: its ``.run.lock`` is then a stale note that the next
    run takes over. ``release()`` removes the file and drops the lock. Within one process a
    new lock on a folder replaces an earlier one (a notebook re-running its cells, tests
    calling an example twice). Systems without ``fcntl`` (Windows) run without the lock.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> lock = td.runs.FolderLock(folder).acquire()
    >>> json.load(open(os.path.join(folder, ".run.lock")))["pid"] == os.getpid()
    True
    >>> lock.release(); os.listdir(folder)
    []
    """
    NAME = ".run.lock"
    held: dict = {}                     # real path of the folder -> the FolderLock this process holds

    def __init__(self, folder, flag_name: str = "--out"):
        self.folder, self.flag_name, self.fd = os.fspath(folder), flag_name, None
        self.path = os.path.join(self.folder, self.NAME)

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:             # no flock on this system: run unlocked
            return self
        key = os.path.realpath(self.folder)
        if key in FolderLock.held:      # this process's earlier run in the folder never finished
            FolderLock.held[key].release()
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise RunError(f"{self.flag_name} {self.folder}: another run is writing there ({holder}); "
                               f"wait for it to end, stop it, or choose another {self.flag_name}") from None
            try:                        # the holder before us removed the file after we opened it: retry
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunError(f"{self.flag_name} {self.folder}: could not lock the folder ({self.path} keeps changing)")
        note = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode(), 0)
        self.fd, FolderLock.held[key] = fd, self
        return self

    def _holder(self, fd) -> str:
        """'pid 123 on host, started 2026-01-01 10:00:00: python examples/toy2d.py --out x' from the file."""
        note = {}
        for _ in range(20):             # the holder may be writing its note at this very moment
            with contextlib.suppress(OSError, ValueError):
                note = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
            if note.get("pid") and _alive(note["pid"]):
                break
            time.sleep(0.05)
        if not note.get("pid"):
            return "its details are not written yet"
        return f"pid {note['pid']} on {note.get('host', '?')}, started {note.get('started', '?')}: {note.get('command', '?')}"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)        # first remove, then unlock: see the samestat check in acquire
        os.close(self.fd)
        self.fd = None
        if FolderLock.held.get(os.path.realpath(self.folder)) is self:
            del FolderLock.held[os.path.realpath(self.folder)]


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True                     # exists but is not ours (EPERM), or a strange note: assume alive
    return True


# ---------------------------------------------------------------- the run object an example uses
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" after each flag, except where the default is None: those flags
    say in their own words what happens when they are left out.

    >>> p = argparse.ArgumentParser(formatter_class=td.runs.HelpFormatter)
    >>> _ = p.add_argument("--T", type=int, default=1000, help="diffusion steps")
    >>> "(default: 1000)" in p.format_help()
    True
    """

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Run:
    """One run of an example: its flags, output folder, resume or refusal, training and files.

        run = td.Run("toy2d", __doc__)          # adds --out (out/toy2d), --resume, --restart, --minutes, --checkpoint-every
        run.run_flag("T", 1000, "diffusion steps", type=td.runs.positive_int)      # defines what is trained
        run.eval_flag("sampler", "ddpm", "the sampler", choices=["ddpm", "ddim"])   # only what is computed from it
        run.flag("no_gifs", False, "skip the animations")                           # neither (a bool: a switch)
        args = run.parse()                      # a bad flag: one line, exit status 2
        model = ...
        run.start(model)                        # folder checked and locked, resume or refuse, evaluation tag
        trainer = td.Trainer(..., checkpoint_path=run.checkpoint, config=run.config)
        run.train(trainer)                      # --steps, or a --minutes budget; resumes; Ctrl-C, NaN: one line
        run.save("samples.npy", samples)        # atomic; named samples.<tag>.npy when re-evaluated
        td.viz.plot_samples(samples, data, run.path("samples.png"))
        run.finish(metrics)                     # metrics.json, the list of files, the lock released

    Run flags (``run_flag``, plus --steps and --minutes) define what is trained: a --resume
    with another value is refused by name with both values. Evaluation flags (``eval_flag``)
    only change what is computed from the trained model: a --resume with other values writes
    its outputs under tagged names (grid.guidance-5.0.png), never over the run's own. Errors
    are ``RunError``: one line, exit status 1. Uncaught Ctrl-C, NaN and failed writes after
    ``start`` also end in one line that says what is kept (``explain``).

    >>> import tempfile
    >>> run = td.Run("demo", log=lambda line: None)
    >>> run.run_flag("steps", 30, "training steps", type=td.runs.positive_int)
    >>> run.eval_flag("sampler", "ddim", "the sampler", choices=["ddpm", "ddim"])
    >>> args = run.parse(["--out", tempfile.mkdtemp()])
    >>> model = td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0))
    >>> diffusion = td.make_diffusion("eps", td.cosine_beta_schedule(20))
    >>> _ = run.start(model)
    >>> trainer = td.Trainer(model, diffusion, td.data.make_dataset("8gaussians"), batch_size=16, log_every=0,
    ...                      checkpoint_path=run.checkpoint, config=run.config)
    >>> seconds = run.train(trainer)
    >>> samples = td.sample(diffusion, model, (5, 2), np.random.default_rng(1), sampler=args.sampler)
    >>> run.save("samples.npy", samples)
    >>> sorted(os.listdir(args.out)), run.finish({"steps": trainer.step})
    (['.run.lock', 'checkpoint.npz', 'samples.npy'], {'steps': 30})
    >>> again = td.Run("demo", log=lambda line: None)
    >>> again.run_flag("steps", 30, "training steps", type=td.runs.positive_int)
    >>> again.eval_flag("sampler", "ddim", "the sampler", choices=["ddpm", "ddim"])
    >>> _ = again.parse(["--out", args.out, "--steps", "40", "--resume"])
    >>> again.start(model)                         # a run flag differs: refused by name, with both values
    Traceback (most recent call last):
    ...
    tinydiff.runs.RunError: --resume: ... is a different run: --steps 40 (the checkpoint has 30). ...
    """

    active = None                       # the Run started last in this process (see run_example)

    def __init__(self, name: str, doc: str | None = None, *, checkpoint_every: int | None = None,
                 log=print):
        self.name, self.log = name, log
        self.parser = argparse.ArgumentParser(description=(doc or "").strip().split("\n\n")[0] or None,
                                              formatter_class=HelpFormatter)
        self.groups = {kind: self.parser.add_argument_group(title) for kind, title in (
            ("run", "what is trained (--resume refuses other values)"),
            ("eval", "what is computed from the trained model (--resume with other values: new file names)"),
            ("other", "files and options"))}
        self.run_flags, self.eval_flags = ["steps", "minutes"], []
        files = self.groups["other"]
        files.add_argument("--out", default=os.path.join("out", name), help="output folder")
        again = files.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true",
                           help="continue the run in OUT/checkpoint.npz, or re-evaluate a finished one")
        again.add_argument("--restart", action="store_true",
                           help="start a new run in OUT even though it holds one (its checkpoint is overwritten)")
        files.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every,
                           help="write OUT/checkpoint.npz every this many steps (and at the end)"
                                + ("" if checkpoint_every else "; default: a quarter of --steps"))
        self.groups["run"].add_argument("--minutes", type=positive_float, default=None,
                                        help="train for this many minutes instead of --steps: the first steps "
                                             "measure the speed, which sets the step count")
        self.args, self.saved, self.tag, self.config, self.trainer, self.lock = None, None, "", {}, None, None
        self.outputs: list = []
        self.train_cpu_seconds = 0.0

    # ------------------------------------------------------------ flags
    def _add(self, kind, name, default, help, type=None, choices=None):
        options = {"action": "store_true"} if default is False and type is None else {
            "type": type or str, "default": default, "choices": choices}
        if type is None and choices is None and not isinstance(default, (str, bool)):
            raise TypeError(f"{flag(name)}: give a type= for a default of {default!r} (td.runs.positive_int, ...)")
        self.groups[kind].add_argument(flag(name), help=help, **options)
        if kind == "run" and name not in self.run_flags:
            self.run_flags.append(name)
        if kind == "eval":
            self.eval_flags.append(name)

    def run_flag(self, name: str, default, help: str, *, type=None, choices=None) -> None:
        """A flag that defines what is trained (``name`` as in Python: "beta_start" is --beta-start)."""
        self._add("run", name, default, help, type, choices)

    def eval_flag(self, name: str, default, help: str, *, type=None, choices=None) -> None:
        """A flag that only changes what is computed from the trained model."""
        self._add("eval", name, default, help, type, choices)

    def flag(self, name: str, default, help: str, *, type=None, choices=None) -> None:
        """A flag that is neither (a data folder, a switch that skips pictures)."""
        self._add("other", name, default, help, type, choices)

    def parse(self, argv=None, check=None):
        """Parse the command line (argv, or sys.argv; none in a notebook) and return the args.

        check(args) may refuse flags that make no sense together by raising ValueError (its
        message becomes argparse's one-line error, exit status 2), and may fill in values.
        """
        if argv is None:
            from .progress import in_notebook
            argv = [] if in_notebook() else sys.argv[1:]
        self.typed = {word.split("=")[0] for word in argv if word.startswith("--")}
        args = self.parser.parse_args(argv)
        if check is not None:
            try:
                check(args)
            except ValueError as err:
                self.parser.error(str(err))
        self.args = args
        return args

    # ------------------------------------------------------------ the folder, resume or refuse
    def start(self, model=None, *, extra_bytes: int = 20_000_000, growable=()) -> "Run":
        """Make the output folder ready and decide between a new run, a resume and a refusal.

        Checks the folder (created, writable, room for two checkpoints of ``model`` plus
        ``extra_bytes`` of pictures), locks it against a second run (``FolderLock``), removes
        temporary files a killed run left, then reads the checkpoint: without --resume or
        --restart an existing run is never overwritten; with --resume every run flag must
        match (``growable`` names flags that may only grow, such as "steps" when the learning
        rate does not depend on it). Sets ``checkpoint``, ``saved`` (the checkpoint's metadata
        when resuming), ``config`` (saved in checkpoints) and ``tag`` (evaluation flags that
        differ from the run's own: the outputs' names then carry it).
        """
        args = self.args
        Run.active = self
        need = (2 * checkpoint_bytes(model) if model is not None else 0) + extra_bytes
        prepare_output_dir(args.out, need, clean=False)
        self.lock = FolderLock(args.out).acquire()
        try:
            removed = remove_temporaries(args.out)
            if removed:
                self.log(f"removed {len(removed)} temporary file(s) left in {args.out} by a killed run: "
                         f"{', '.join(removed)}")
            self.checkpoint = os.path.join(args.out, "checkpoint.npz")
            self.saved = read_run_config(self.checkpoint, resume=args.resume, restart=args.restart)
            if self.saved is not None:
                check_same_run(self.saved["config"], vars(args), self.run_flags, self.checkpoint, growable)
        except RunError:
            self.release()
            raise
        self.tag = evaluation_tag(self.saved and self.saved["config"], vars(args), self.eval_flags)
        self.config = (dict(vars(args)) if self.saved is None
                       else resumed_config(self.saved["config"], vars(args), growable))
        if self.tag:
            self.log(f"evaluating with other settings than the run's own: outputs are named *.{self.tag}.*")
        if sys.excepthook is not _one_line_excepthook:       # once per process; it asks Run.active
            global _previous_excepthook
            _previous_excepthook, sys.excepthook = sys.excepthook, _one_line_excepthook
        return self

    # ------------------------------------------------------------ training
    def train(self, trainer, *, warmup: int = 100) -> float:
        """Train to --steps (or for a --minutes budget), resuming the saved run; returns the
        wall-clock seconds (``train_cpu_seconds``: the process's CPU time). See
        ``train_within_budget``; every error is one line (RunError) and the lock is released."""
        self.trainer, cpu = trainer, time.process_time()
        try:
            seconds = train_within_budget(trainer, self.checkpoint, saved=self.saved, warmup=warmup, log=self.log,
                                          steps=self.args.steps if self.args.minutes is None else None,
                                          minutes=self.args.minutes)
        except RunError:
            self.release()
            raise
        self.train_cpu_seconds = time.process_time() - cpu
        return seconds

    # ------------------------------------------------------------ outputs
    def path(self, name: str) -> str:
        """OUT/name, or OUT/name with the evaluation tag (samples.sampler-ddim.png) on a re-evaluation."""
        self.outputs.append(tagged(name, self.tag))
        return os.path.join(self.args.out, tagged(name, self.tag))

    def save(self, name: str, value) -> None:
        """Write an array (name.npy) or a dict (name.json) atomically to ``path(name)``."""
        path = self.path(name)
        try:
            with atomic_write(path) as f:
                if name.endswith(".npy"):
                    np.save(f, np.asarray(value), allow_pickle=False)
                elif name.endswith(".json"):
                    f.write(json.dumps(value, indent=2).encode())
                else:
                    raise ValueError(f"{name}: Run.save writes .npy arrays and .json dicts")
        except OSError as err:
            self.release()
            raise RunError(self.explain(err)) from None

    def explain(self, err) -> str | None:
        """The one line a user sees for an error after ``start``, saying what is kept (None: not
        an error of the run's own, shown as usual)."""
        if self.trainer is None:
            when, kept = "before training", "nothing was trained or written"
        else:
            when, kept = "after training", f"the checkpoint holds step {self.trainer.step}"
        if isinstance(err, KeyboardInterrupt):
            return f"interrupted {when}; {kept}" + (": --resume writes the outputs again" if self.trainer else "")
        if isinstance(err, (NonFiniteError, CheckpointWriteError)):
            return str(err)
        if isinstance(err, OSError):
            return (f"could not write the outputs in {self.args.out} ({err}); files already there are intact"
                    + (f" and {kept}: --resume writes them again" if self.trainer else ""))
        return None

    def finish(self, metrics: dict) -> dict:
        """Write metrics.json, say which files are in OUT, release the folder; returns metrics."""
        self.save("metrics.json", metrics)
        names = list(dict.fromkeys(self.outputs + ["checkpoint.npz"]))
        self.log(f"wrote {os.path.abspath(self.args.out)}: {', '.join(names)}")
        self.release()
        return metrics

    def release(self) -> None:
        """Unlock the output folder (also done by finish, by every RunError and at exit)."""
        if self.lock is not None:
            self.lock.release()


_previous_excepthook = sys.excepthook


def _one_line_excepthook(kind, err, traceback):
    """sys.excepthook after a Run started: its errors in one line (Run.explain), others as usual."""
    run = Run.active
    line = run.explain(err) if run is not None else None
    if run is not None:
        run.release()
    if line is None:
        return _previous_excepthook(kind, err, traceback)
    print(line, file=sys.stderr)


def target(text: str, goal: str, ok: bool, log=print) -> bool:
    """Print one line of a run's targets, "text (target goal): ok" or "...: MISSED"; returns ok.

    >>> td.runs.target("modes covered 8/8", "8/8", True)
    modes covered 8/8 (target 8/8): ok
    True
    """
    log(f"{text} (target {goal}): {'ok' if ok else 'MISSED'}")
    return bool(ok)


def run_example(path, argv=()) -> dict:
    """Run an example script in this process, as ``python path *argv`` would, and return its
    global names (``metrics``, ``args``, ``model``, ...): how tests and notebooks drive one.
    An error after the run started ends in the RunError the command line would print.

    >>> import tempfile
    >>> script = os.path.join(tempfile.mkdtemp(), "hello.py")
    >>> _ = open(script, "w").write("import sys; answer = len(sys.argv)")
    >>> td.runs.run_example(script, ["--x", "1"])["answer"]
    3
    """
    path = os.fspath(path)
    argv_before, Run.active = sys.argv, None
    sys.argv = [path, *map(str, argv)]
    try:
        return runpy.run_path(path, run_name="__main__")
    except (KeyboardInterrupt, OSError, FloatingPointError) as err:
        run = Run.active
        line = run.explain(err) if run is not None else None
        if line is None:
            raise
        raise RunError(line) from None
    finally:
        sys.argv = argv_before
        if Run.active is not None:
            Run.active.release()


__all__ = ["RunError", "flag", "finite_float", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float",
           "probability", "open_unit", "decay_rate", "check_reaches_noise", "check_chain", "remove_temporaries", "prepare_output_dir",
           "checkpoint_bytes", "read_run_config", "check_same_run", "resumed_config", "evaluation_tag",
           "tagged", "train_within_budget", "load_trained", "FolderLock", "HelpFormatter", "Run", "target",
           "run_example"]
