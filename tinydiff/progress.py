"""A progress line that behaves in a terminal, in a notebook and in a log file.

    bar = Progress(6000, "train")
    for step in range(1, 6001):
        ...
        bar.update(step, loss=0.53)         # "train  4200/6000  loss 0.5300  98.1 it/s  0:43  ETA 0:18"
    bar.close()

Two ideas make it pleasant:

* **Where it writes decides how.** On a terminal, or in a Jupyter notebook, one line is
  redrawn in place with a carriage return (at most ten times a second); anywhere else (a
  pipe, a log file, pytest's capture) that would leave a mess, so a plain line is written
  every ``every`` updates and at the end.
* **The speed is recent.** It is the number of steps done in the last ``window`` seconds
  (at least the last five updates) divided by the time they took, leaving out a *pause*:
  a single wait of more than 2 s that is over 20 times the typical time per step (a
  laptop asleep, an evaluation between steps). An average since the start would make the
  ETA jump after a pause and remember the slow first steps for ever. A machine shared with
  other work slows every step a little rather than one step a lot, so that slowness stays
  in the estimate, as it should.

Samplers and ``calc_bpd_loop`` call ``progress(i, n)``; a ``Progress`` is such a callable.
"""
from __future__ import annotations

import collections
import numbers
import sys
import time


def format_seconds(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on.

    >>> format_seconds(75), format_seconds(3725)
    ('1:15', '1:02:05')
    """
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session, where '\\r' redraws a line in place.

    >>> in_notebook()
    False
    """
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return bool(get and get() is not None and "ipykernel" in sys.modules)


class Progress:
    """A progress line for a loop of ``total`` steps.

    Args:
        total: the number of steps (the line shows ``i/total`` and an ETA).
        label: what is running ("train", "sampling (ddpm)").
        every: in plain mode, write a line each time the count passes a multiple of this
            (default: about ten lines in all); the last update always writes one.
        file: where the line goes (default ``sys.stdout``).
        log: instead of ``file``, a function that takes each finished line (e.g. a
            logger); lines are then always plain.
        in_place: redraw one line in place (default: when ``file`` is a terminal or we run
            in a notebook).
        window: the seconds of recent progress the speed is measured over.
        unit: the name of one step in the speed ("it", "steps").
        initial: steps already done when the line starts (a resumed run).
        clock: a function returning seconds (tests pass a fake clock).

    ``update(i, **fields)`` reports that ``i`` steps are done, with extra fields such as
    ``loss=0.53`` shown as ``loss 0.5300``; ``progress(i, n)`` does the same (the callback
    shape samplers use); ``close()`` ends an in-place line with a newline.

    >>> lines = []
    >>> bar = Progress(4, "demo", every=2, log=lines.append)
    >>> for i in range(1, 5):
    ...     bar.update(i, loss=1.0 / i)
    >>> len(lines), lines[-1].split()[:4]
    (2, ['demo', '4/4', 'loss', '0.2500'])
    """

    def __init__(self, total: int, label: str = "", *, every: int | None = None, file=None, log=None,
                 in_place: bool | None = None, window: float = 20.0, unit: str = "it", initial: int = 0,
                 clock=time.perf_counter):
        for name, value, low in (("total", total, 0), ("initial", initial, 0), ("every", every, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                      or value < low):
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        self.total, self.label, self.unit, self.clock = int(total), label, unit, clock
        self.auto_every = every is None
        self.every = max(1, self.total // 10) if every is None else int(every)
        self.file, self.log = file, log
        out = sys.stdout if file is None else file
        if in_place is None:
            in_place = log is None and ((hasattr(out, "isatty") and out.isatty()) or
                                        (file is None and in_notebook()))
        self.in_place = bool(in_place) and log is None
        self.start = clock()
        self.window = float(window)
        self.marks = collections.deque([(self.start, int(initial))])       # (time, steps done), recent ones
        self.last_draw, self.width, self.closed = -1.0, 0, False

    # ------------------------------------------------------------------ speed
    def rate(self) -> float:
        """Steps per second over the recent marks, pauses left out (0 if not yet known)."""
        marks = list(self.marks)
        steps = [(t1 - t0, i1 - i0) for (t0, i0), (t1, i1) in zip(marks, marks[1:]) if i1 > i0]
        if not steps:
            return 0.0
        per_step = sorted(dt / di for dt, di in steps)
        typical = per_step[len(per_step) // 2]
        kept = [(dt, di) for dt, di in steps if not (dt > 2.0 and dt / di > 20.0 * typical)]   # drop pauses
        seconds, done = sum(dt for dt, _ in kept), sum(di for _, di in kept)
        return done / seconds if seconds > 0 else 0.0

    def line(self, done: int, fields: dict) -> str:
        """The text of the progress line after ``done`` steps."""
        now = self.clock()
        rate = self.rate()
        parts = [self.label, f"{done:>{len(str(self.total))}}/{self.total}"] if self.label else \
            [f"{done:>{len(str(self.total))}}/{self.total}"]
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        parts.append(f"{rate:.1f} {self.unit}/s" if rate else f"- {self.unit}/s")
        parts.append(format_seconds(now - self.start))
        if done < self.total:
            parts.append(f"ETA {format_seconds((self.total - done) / rate)}" if rate else "ETA -")
        return "  ".join(parts)

    # ------------------------------------------------------------------ reporting
    def update(self, done: int, **fields) -> None:
        """Record that ``done`` of ``total`` steps are finished, and show it if it is time."""
        now = self.clock()
        previous = self.marks[-1][1]
        self.marks.append((now, done))
        while len(self.marks) > 5 and self.marks[0][0] < now - self.window:   # keep the last window seconds
            self.marks.popleft()
        finished = done >= self.total
        if self.in_place:
            if finished or now - self.last_draw >= 0.1:
                self.last_draw = now
                text = self.line(done, fields)
                out = sys.stdout if self.file is None else self.file
                out.write("\r" + text + " " * max(0, self.width - len(text)))   # blank a longer old line
                self.width = len(text)
                if finished:
                    out.write("\n")
                    self.closed = True
                out.flush()
        elif finished or done // self.every > previous // self.every:     # crossed a multiple of every
            text = self.line(done, fields)
            if self.log is not None:
                self.log(text)
            else:
                out = sys.stdout if self.file is None else self.file
                out.write(text + "\n")
                out.flush()

    def __call__(self, done: int, total: int | None = None) -> None:
        """progress(i, n): the callback shape of the samplers and calc_bpd_loop."""
        if total is not None and total != self.total:
            self.total = int(total)
            if self.auto_every:
                self.every = max(1, self.total // 10)
        self.update(done)

    def close(self) -> None:
        """End an in-place line (a no-op in plain mode or once the last step was shown)."""
        if self.in_place and not self.closed and self.width:
            out = sys.stdout if self.file is None else self.file
            out.write("\n")
            out.flush()
        self.closed = True
