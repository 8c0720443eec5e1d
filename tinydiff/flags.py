"""Command-line flags that fail at once: argparse types, and checks of flags that make no sense together.

A mistyped flag should stop a script while it parses, in one line, before any work is done;
these are the pieces ``td.Run`` (tinydiff/runs.py) and the examples use for that:

    argparse types     positive_int, nonnegative_int, finite_float, positive_float,
                       nonnegative_float, probability, open_unit, decay_rate:
                       ``type=positive_int`` makes ``--steps 0``
                       fail while parsing, in one line, before any work is done.
    check_reaches_noise(betas), check_chain(betas, args)
                       refuse a schedule whose last step is still mostly data (--T 1), and
                       --sample-steps above --T.
    unet_shape_flags(width, mults)
                       refuse a UNet width and depth the image size cannot take.
    HelpFormatter      --help shows each flag's default, except where None says it in words.
    flag(name)         the command-line spelling of a flag: "sample_steps" -> "--sample-steps".

Errors are ``RunError``, a SystemExit: Python prints its message alone, with no traceback,
and exits with status 1, which is what a command-line user should see. Tests catch it as
SystemExit and read the message from ``str(err)``. The output folder (tinydiff/folder.py) and
resume (tinydiff/resume.py) raise it too. Examples reach every name here as ``td.runs.<name>``
(tinydiff/runs.py re-exports them).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from .langevin import check_langevin_step_lr


class RunError(SystemExit):
    """A problem with the run's flags, files or folder, stated in one line (exit status 1).

    >>> issubclass(td.flags.RunError, SystemExit)               # a script ends with the message, no traceback
    True
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


def flag(name: str) -> str:
    """The command-line spelling of an argparse destination: "sample_steps" -> "--sample-steps".

    >>> td.flags.flag("sample_steps")
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

    >>> td.flags.finite_float("-5")
    -5.0
    """
    return _number(text, float, "a finite number", lambda v: True)


def positive_int(text) -> int:
    """argparse type: an int >= 1 (steps, batch size, T, widths).

    >>> td.flags.positive_int("6000")
    6000
    """
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def nonnegative_int(text) -> int:
    """argparse type: an int >= 0 (a seed, a count that may be zero).

    >>> td.flags.nonnegative_int("0")
    0
    """
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text) -> float:
    """argparse type: a finite number > 0 (a learning rate, minutes).

    >>> td.flags.positive_float("2e-3")
    0.002
    """
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def nonnegative_float(text) -> float:
    """argparse type: a finite number >= 0 (a noise level, a guidance scale w).

    >>> td.flags.nonnegative_float("0")
    0.0
    """
    return _number(text, float, "a finite number >= 0", lambda v: v >= 0)


def probability(text) -> float:
    """argparse type: a number in [0, 1] (label dropout).

    >>> td.flags.probability("0.1")
    0.1
    """
    return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def open_unit(text) -> float:
    """argparse type: a number strictly between 0 and 1 (a beta).

    >>> td.flags.open_unit("0.02")
    0.02
    """
    return _number(text, float, "a number strictly between 0 and 1", lambda v: 0 < v < 1)


def decay_rate(text) -> float:
    """argparse type: a number in [0, 1) (an EMA decay; 1 would never move).

    >>> td.flags.decay_rate("0.995")
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

    >>> td.flags.check_reaches_noise(td.linear_beta_schedule(1000))        # ends at alpha_bar_T = 4e-5: fine
    >>> td.flags.check_reaches_noise(td.linear_beta_schedule(10))
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
    >>> td.flags.check_chain(td.linear_beta_schedule(1000), SimpleNamespace(schedule="linear", sample_steps=5000))
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


def unet_shape_flags(width: int, mults: str, image_size: int = 28) -> tuple:
    """Check --width and parse --mults (comma-separated) for a UNet on image_size x image_size
    images; returns the multipliers as a tuple, or raises ValueError naming the flag.

    The UNet halves the image len(mults) - 1 times, so image_size must divide by
    2 ** (len(mults) - 1); its GroupNorms use 8 groups, so the width must divide by 8.

    >>> td.flags.unet_shape_flags(16, "1,2,2")
    (1, 2, 2)
    >>> td.flags.unet_shape_flags(16, "1,2,2,2")
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


# ---------------------------------------------------------------- --help
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" after each flag, except where the default is None: those flags
    say in their own words what happens when they are left out.

    >>> p = argparse.ArgumentParser(formatter_class=td.flags.HelpFormatter)
    >>> _ = p.add_argument("--T", type=int, default=1000, help="diffusion steps")
    >>> "(default: 1000)" in p.format_help()
    True
    """

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


__all__ = ["RunError", "flag", "finite_float", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float",
           "probability", "open_unit", "decay_rate", "MAX_SIGNAL_AT_T", "check_reaches_noise", "check_chain",
           "unet_shape_flags", "HelpFormatter"]
