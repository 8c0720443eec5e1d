"""Runs that survive their users: everything an example does around its lesson.

An example uses one object, ``td.Run`` (below), in a few lines: it declares the flags, checks
them, prepares and locks the output folder, resumes or refuses, trains, and writes the
outputs. Learners kill runs, fill disks, mistype flags, resume with other settings and start
a second run into a folder in use; every such case ends in one line that names what was
wrong, and nothing the user already has is overwritten or lost:

    Run(name, doc)     the run object: run_flag / eval_flag / flag, parse, start, train, path,
                       save, finish (see its docstring; run_example runs a script in-process)
    target(text, goal, ok)
                       one line of a run's targets: "modes covered 8/8 (target 8/8): ok"

Run is built from three modules, whose names this module re-exports, so that an example
reads ``td.runs.positive_int`` and ``td.runs.RunError`` from one place:

    tinydiff/flags.py  argparse types (positive_int, ...), check_chain, unet_shape_flags,
                       HelpFormatter, and RunError, the one-line error of all three
    tinydiff/folder.py the output folder: prepare_output_dir (created, writable, room on the
                       disk), remove_temporaries, FolderLock (one run per folder)
    tinydiff/resume.py resume or refuse: read_run_config, check_same_run, evaluation_tag and
                       tagged (names of re-evaluated outputs), train_within_budget, load_trained

A script sorts its flags into three kinds: *run flags* define what is trained (T, the
schedule, the data, the objective, the width, the seed, the batch, the learning rate);
*evaluation flags* only change what is computed from the trained model (the sampler, its
number of steps, a guidance scale); everything else (--out, --resume, --no-gifs) is
neither. The saved ``config`` is always the original run's, so later resumes compare
against the run as it was trained.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time

import numpy as np

from .checkpoint import atomic_write
from .flags import (MAX_SIGNAL_AT_T, HelpFormatter, RunError, check_chain, check_reaches_noise,  # noqa: F401
                    decay_rate, finite_float, flag, nonnegative_float, nonnegative_int, open_unit, positive_float,
                    positive_int, probability, unet_shape_flags)
from .folder import TEMPORARY, FolderLock, checkpoint_bytes, prepare_output_dir, remove_temporaries  # noqa: F401
from .resume import (as_saved, check_same_run, evaluation_tag, load_trained, read_run_config,  # noqa: F401
                     resumed_config, tagged, train_within_budget)
from .train import CheckpointWriteError, NonFiniteError


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
    tinydiff.flags.RunError: --resume: ... is a different run: --steps 40 (the checkpoint has 30). ...
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
        wrote_checkpoint = os.path.exists(getattr(self, "checkpoint", None) or "")
        names = list(dict.fromkeys(self.outputs + (["checkpoint.npz"] if wrote_checkpoint else [])))
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
           "probability", "open_unit", "decay_rate", "check_reaches_noise", "check_chain", "unet_shape_flags",
           "remove_temporaries", "prepare_output_dir", "checkpoint_bytes", "read_run_config", "check_same_run",
           "resumed_config", "evaluation_tag", "tagged", "train_within_budget", "load_trained", "FolderLock",
           "HelpFormatter", "Run", "target", "run_example"]
