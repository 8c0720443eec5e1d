"""The progress line: in place on a terminal, plain lines elsewhere, and a speed measured
over recent steps so that a pause does not distort the ETA."""
import io

import pytest

from tinydiff.progress import Progress, format_seconds


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_after_a_pause_the_eta_comes_back_to_the_true_pace():
    """8 steps/s, a 60 s pause, 8 steps/s again: an average since the start would say ~1.4 steps/s
    and an ETA six times too long; leaving the pause out gives 8 steps/s right after it."""
    clock, lines = FakeClock(), []
    bar = Progress(1000, "step", every=1, log=lines.append, clock=clock)
    for i in range(1, 101):
        clock.now += 0.125
        bar.update(i)
    clock.now += 60.0                                   # the laptop sleeps
    for i in range(101, 106):
        clock.now += 0.125
        bar.update(i)
    assert bar.rate() == 8.0
    assert lines[-1].endswith(f"ETA {format_seconds(895 / 8.0)}")
    assert "8.0 it/s" in lines[-1]


def test_a_slow_start_is_forgotten_once_it_is_older_than_the_window():
    clock = FakeClock()
    bar = Progress(5000, clock=clock, log=lambda line: None, window=2.0)
    for i in range(1, 501):
        clock.now += 1.0 if i <= 5 else 0.01            # first steps allocate, compile, warm up
        bar.update(i)
    assert bar.rate() == pytest.approx(100.0)


def test_a_shared_machine_slows_the_estimate_as_it_should():
    """Bursts (fast steps, then the process waits its turn): the time lost between bursts is real
    and stays in the speed; only waits over 2 s that dwarf a step count as pauses."""
    clock = FakeClock()
    bar = Progress(10000, clock=clock, log=lambda line: None)
    for i in range(1, 1001):
        clock.now += 0.02 if i % 10 else 0.3            # every tenth step waits 0.3 s for the CPU
        bar.update(i)
    assert bar.rate() == pytest.approx(1 / (0.9 * 0.02 + 0.1 * 0.3), rel=0.05)   # ~21 steps/s, not 50


def test_on_a_terminal_one_line_is_redrawn_in_place():
    clock, out = FakeClock(), FakeTerminal()
    bar = Progress(50, "sampling", file=out, clock=clock)
    assert bar.in_place
    for i in range(1, 51):
        clock.now += 0.05
        bar.update(i)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")          # one line, ended once
    assert 10 <= text.count("\r") <= 26                            # redrawn, at most ten times a second
    assert text.split("\r")[-1].startswith("sampling  50/50")


def test_elsewhere_plain_lines_about_ten_of_them():
    clock, out = FakeClock(), io.StringIO()                       # not a terminal: a log file
    bar = Progress(200, "bound", file=out, clock=clock)
    assert not bar.in_place
    for i in range(1, 201):
        clock.now += 0.01
        bar(i, 200)                                                # the samplers' progress(i, n) shape
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("bound   20/200") and lines[-1].startswith("bound  200/200")


def test_resumed_runs_measure_speed_from_where_they_start():
    clock, lines = FakeClock(), []
    bar = Progress(100, initial=90, every=5, log=lines.append, clock=clock)
    for i in range(91, 101):
        clock.now += 0.5
        bar.update(i, loss=0.25)
    assert bar.rate() == pytest.approx(2.0) and len(lines) == 2
    assert "loss 0.2500" in lines[-1]


def test_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match="total: expected an int >= 0, got -1"):
        Progress(-1)
    with pytest.raises(ValueError, match="every: expected an int >= 1, got 0"):
        Progress(10, every=0)


def test_the_trainer_draws_one_line_on_a_terminal(monkeypatch):
    """Trainer(log=print) on a terminal: one line, redrawn, ended once; no line per log_every."""
    import numpy as np

    import tinydiff as td
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    d = td.make_diffusion("eps", td.linear_beta_schedule(20))
    model = td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0))
    td.Trainer(model, d, td.data.make_dataset("8gaussians"), batch_size=8, log_every=5).train(30)
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.count("\r") >= 1 and text.split("\r")[-1].startswith("step  30/30")
