"""Resume or refuse: what a run's checkpoint decides, and a run trained to its end.

Learners kill runs, resume with other settings and evaluate a finished run again; each case
ends in one line (``RunError``) or in outputs under new names, and a checkpoint is never
overwritten or lost by accident:

    read_run_config(checkpoint, resume=, restart=)
                       resume or refuse: the config saved in the checkpoint, or None for a
                       fresh start. A checkpoint is never silently replaced: without
                       --resume or --restart an existing one stops the script, and one that
                       cannot be read is named and kept until the user chooses.
    check_same_run(saved, current, run_flags)
                       a resumed run must be the same run: refuse, by flag name and with
                       both values, any flag that would change the model, diffusion or data.
    resumed_config(saved, current, growable)
                       the config a resumed run saves: always the original run's, so later
                       resumes compare against the run as it was trained.
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

*Run flags* define what is trained and *evaluation flags* only what is computed from the
trained model (tinydiff/runs.py: ``Run.run_flag``, ``Run.eval_flag``).
"""
from __future__ import annotations

import json
import os
import re
import time
from types import SimpleNamespace

from .checkpoint import CheckpointError, load_checkpoint, unflatten_state
from .flags import RunError, flag
from .train import CheckpointWriteError, NonFiniteError


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
    >>> td.resume.read_run_config(os.path.join(tempfile.mkdtemp(), "checkpoint.npz"), resume=False) is None  # a new run
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

    >>> td.resume.as_saved((1, 2))                          # JSON has lists, not tuples
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

    >>> td.resume.check_same_run({"T": 1000, "lr": 0.002}, {"T": 100, "lr": 0.002}, ["T", "lr"])
    Traceback (most recent call last):
    ...
    tinydiff.flags.RunError: ... --T 100 (the checkpoint has 1000)...
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

    >>> td.resume.resumed_config({"steps": 100, "T": 10}, {"steps": 300, "T": 10}, growable=("steps",))
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

    >>> td.resume.evaluation_tag({"sampler": "ddpm"}, {"sampler": "ddim"}, ["sampler"])
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

    >>> td.resume.tagged("samples.png", "sampler-ddim"), td.resume.tagged("samples.png", "")
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
    >>> seconds = td.resume.train_within_budget(trainer, None, steps=30, log=lambda line: None)
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

        diffusion, model, meta = td.resume.load_trained("out/mnist/checkpoint.npz", td.recipes.mnist_model)

    >>> import os, tempfile
    >>> from types import SimpleNamespace
    >>> d = td.make_diffusion("eps", td.linear_beta_schedule(100))
    >>> build = lambda config: (d, td.models.ToyMLP(hidden=config.hidden, rng=np.random.default_rng(0)))
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> trainer = td.Trainer(build(SimpleNamespace(hidden=16))[1], d, td.data.make_dataset("8gaussians"),
    ...                      batch_size=32, log_every=0, checkpoint_path=path, config={"hidden": 16})
    >>> _ = trainer.train(3)
    >>> diffusion, model, meta = td.resume.load_trained(path, build)
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


__all__ = ["read_run_config", "as_saved", "check_same_run", "resumed_config", "evaluation_tag", "tagged",
           "train_within_budget", "load_trained"]
