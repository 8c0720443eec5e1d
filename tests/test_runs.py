"""tinydiff.runs: the checks every example makes around training, one by one."""
import argparse
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tinydiff import runs
from tinydiff.checkpoint import save_checkpoint
from tinydiff.schedules import cosine_beta_schedule, linear_beta_schedule


# ---------------------------------------------------------------- argparse types
TYPES = [
    (runs.positive_int, ["1", "6000"], ["0", "-3", "1.5", "ten", "", "nan"]),
    (runs.nonnegative_int, ["0", "7"], ["-1", "0.5", "x"]),
    (runs.finite_float, ["-5", "14", "1e-3"], ["nan", "inf", "-inf", "x"]),
    (runs.positive_float, ["2e-3", "10"], ["0", "-1", "nan", "inf", "x"]),
    (runs.nonnegative_float, ["0", "3.5"], ["-0.1", "nan", "inf"]),
    (runs.probability, ["0", "0.1", "1"], ["-0.1", "1.01", "nan"]),
    (runs.open_unit, ["1e-4", "0.5"], ["0", "1", "2", "nan"]),
    (runs.decay_rate, ["0", "0.999"], ["1", "-0.1", "nan"]),
]


@pytest.mark.parametrize("kind, good, bad", TYPES, ids=[t[0].__name__ for t in TYPES])
def test_argparse_types_accept_good_values_and_refuse_bad_ones_in_one_line(kind, good, bad, capsys):
    parser = argparse.ArgumentParser(prog="example")
    parser.add_argument("--x", type=kind)
    for text in good:
        assert parser.parse_args([f"--x={text}"]).x == pytest.approx(float(text))
    for text in bad:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([f"--x={text}"])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("example: error: argument --x: expected ") and repr(text) in err[-1], err


# ---------------------------------------------------------------- the output folder
def test_output_dir_is_created_probed_and_cleaned(tmp_path):
    folder = tmp_path / "a" / "b"
    assert runs.prepare_output_dir(folder) == []
    assert folder.is_dir() and os.listdir(folder) == []                  # the probe is gone
    strays = [".checkpoint.npz.0123456789ab.tmp", ".samples.png.0123456789ab.tmp.png"]
    keep = ["checkpoint.npz", ".hidden", "notes.tmp", ".x.tmp"]
    for name in strays + keep:
        (folder / name).write_bytes(b"x")
    assert runs.prepare_output_dir(folder) == sorted(strays)
    assert sorted(os.listdir(folder)) == sorted(keep)


def test_output_dir_problems_are_one_line_naming_the_flag_and_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(runs.RunError, match=r"--out .*file: this is a file, expected a folder"):
        runs.prepare_output_dir(tmp_path / "file")
    with pytest.raises(runs.RunError, match=r"--out .*file/sub: cannot create the folder \(Not a directory\)"):
        runs.prepare_output_dir(tmp_path / "file" / "sub")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(runs.RunError, match=r"--data .*: cannot write in this folder \(No space left on device\)"):
        runs.prepare_output_dir(tmp_path / "full", name="--data")
    monkeypatch.undo()
    assert os.listdir(tmp_path / "full") == []                           # the probe did not stay behind

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(runs.RunError, match=r"1.0 MB free on this disk, but this run needs about 5.0 MB"):
        runs.prepare_output_dir(tmp_path / "small", need_bytes=5_000_000)
    for err in (runs.RunError("x"),):
        assert isinstance(err, SystemExit) and str(err) == "x"


# ---------------------------------------------------------------- resume or refuse
def write_run(path, step=5, **config):
    save_checkpoint(path, {"losses": np.zeros(step)}, {"step": step, "config": {"steps": 10, **config}})


def test_resume_or_refuse_covers_every_case(tmp_path):
    ck = tmp_path / "checkpoint.npz"
    assert runs.read_run_config(ck, resume=False) is None                # nothing there: a new run
    with pytest.raises(runs.RunError, match=r"--resume: there is no checkpoint at .*checkpoint.npz"):
        runs.read_run_config(ck, resume=True)
    write_run(ck, T=1000)
    assert runs.read_run_config(ck, resume=True)["config"]["T"] == 1000
    with pytest.raises(runs.RunError, match=r"already holds a run \(step 5 of 10\); pass --resume .* --restart"):
        runs.read_run_config(ck, resume=False)
    assert runs.read_run_config(ck, resume=False, restart=True) is None
    with pytest.raises(runs.RunError, match="choose one"):
        runs.read_run_config(ck, resume=True, restart=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_a_checkpoint_that_cannot_be_read_is_named_and_kept(tmp_path, damage):
    ck = tmp_path / "checkpoint.npz"
    write_run(ck)
    data = ck.read_bytes()
    damaged = {"truncate": data[:len(data) // 2], "garbage": b"\x00" * 100, "empty": b"",
               "foreign": None}[damage]
    if damaged is None:
        np.savez(ck, weights=np.ones(3))                                 # someone else's .npz
    else:
        ck.write_bytes(damaged)
    before = ck.read_bytes()
    for resume in (True, False):
        with pytest.raises(runs.RunError, match=r"checkpoint.npz cannot be read .*left as it is.*--restart"):
            runs.read_run_config(ck, resume=resume)
    assert ck.read_bytes() == before                                     # never replaced behind the user's back
    assert runs.read_run_config(ck, resume=False, restart=True) is None  # the user's explicit choice


def test_same_run_check_names_every_differing_flag_with_both_values():
    saved = {"T": 1000, "objective": "hybrid", "schedule": "linear", "steps": 6000, "sampler": "ddpm"}
    runs.check_same_run(saved, {**saved, "sampler": "ddim"}, ["T", "objective", "schedule"])   # eval flags are free
    with pytest.raises(runs.RunError) as info:
        runs.check_same_run(saved, {**saved, "T": 100, "objective": "eps"}, ["T", "objective", "schedule"], "ck.npz")
    message = str(info.value)
    assert "\n" not in message
    assert "--T 100 (the checkpoint has 1000)" in message and "--objective eps (the checkpoint has hybrid)" in message
    assert "--schedule" not in message
    runs.check_same_run(saved, {**saved, "steps": 9000}, ["steps"], growable=("steps",))
    with pytest.raises(runs.RunError, match=r"--steps 10 \(the checkpoint's run has 6000; it can only grow\)"):
        runs.check_same_run(saved, {**saved, "steps": 10}, ["steps"], growable=("steps",))
    with pytest.raises(runs.RunError, match=r"--width 32 \(the checkpoint has <not recorded>\)"):
        runs.check_same_run(saved, {"width": 32}, ["width"])
    assert runs.resumed_config(saved, {**saved, "steps": 9000, "sampler": "ddim"}, ("steps",)) == {**saved, "steps": 9000}


def test_re_evaluations_get_their_own_file_names():
    saved = {"sampler": "ddpm", "sample_steps": None, "guidance": 2.0}
    flags = ("sampler", "sample_steps", "guidance")
    assert runs.evaluation_tag(None, {**saved, "sampler": "ddim"}, flags) == ""          # a fresh run
    assert runs.evaluation_tag(saved, dict(saved), flags) == ""                           # the run's own
    tag = runs.evaluation_tag(saved, {**saved, "sampler": "ddim", "sample_steps": 50}, flags)
    assert tag == "sampler-ddim.sample-steps-50"
    assert runs.tagged("samples.png", tag) == "samples.sampler-ddim.sample-steps-50.png"
    assert runs.tagged("metrics.json", "") == "metrics.json"
    assert runs.evaluation_tag(saved, {**saved, "guidance": 0.5}, flags) == "guidance-0.5"
    assert "/" not in runs.evaluation_tag({"x": 1}, {"x": "a/b c"}, ("x",))                 # always a plain name


def test_a_chain_that_never_reaches_noise_is_refused():
    with pytest.raises(ValueError, match=r"alpha_bar_T = 0.9999.*~6.6 bits per dimension"):
        runs.check_reaches_noise(linear_beta_schedule(1))
    runs.check_reaches_noise(linear_beta_schedule(1000))
    runs.check_reaches_noise(cosine_beta_schedule(1))                    # cosine ends at noise even with T = 1


# ---------------------------------------------------------------- one run per folder
def hold_lock(folder):
    """Another process that takes the folder's lock, says so, and waits to be killed."""
    code = ("import sys, time\nfrom tinydiff.runs import FolderLock\nFolderLock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(os.name != "posix", reason="fcntl.flock and SIGKILL")
def test_a_folder_in_use_by_another_process_is_refused_naming_it_and_a_killed_holder_frees_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(runs.RunError) as info:
            runs.FolderLock(tmp_path).acquire()
        message = str(info.value)
        assert "\n" not in message and f"--out {tmp_path}: another run is writing there (pid {holder.pid} on " in message
        assert f"-c {tmp_path}); wait for it to end, stop it, or choose another --out" in message
        assert "started 20" in message                                   # its start time
    finally:
        holder.send_signal(signal.SIGKILL)                               # no chance to clean up
        holder.wait()
    assert os.path.exists(tmp_path / ".run.lock")                        # its note stays behind, stale...
    lock = runs.FolderLock(tmp_path).acquire()                           # ...and the lock is free all the same
    assert json.loads((tmp_path / ".run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="fcntl.flock")
def test_a_stale_note_of_a_dead_run_does_not_block_and_one_process_takes_its_own_lock_over(tmp_path):
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": "elsewhere",
                                                    "started": "2020-01-01 00:00:00", "command": "python old.py"}))
    first = runs.FolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".run.lock").read_text())["command"] != "python old.py"
    second = runs.FolderLock(tmp_path).acquire()           # a notebook re-running its cells: the same process
    assert first.fd is None and second.fd is not None
    second.release()
    assert os.listdir(tmp_path) == []


SCRIPT = """
import numpy as np
import tinydiff as td
run = td.Run("demo")
run.run_flag("steps", 3, "training steps", type=td.runs.positive_int)
args = run.parse()
model = td.models.ToyMLP(hidden=8, rng=np.random.default_rng(0))
run.start(model)
trainer = td.Trainer(model, td.make_diffusion("eps", td.cosine_beta_schedule(10)), td.data.make_dataset("moons"),
                     batch_size=8, log_every=0, checkpoint_path=run.checkpoint, config=run.config)
run.train(trainer)
raise {error}
"""


@pytest.mark.parametrize("error, line", [
    ("KeyboardInterrupt", "interrupted after training; the checkpoint holds step 3: --resume writes the outputs again"),
    ("OSError(28, 'No space left on device')", "could not write the outputs in {out} ([Errno 28] No space left on "
                                               "device); files already there are intact and the checkpoint holds "
                                               "step 3: --resume writes them again")])
def test_an_uncaught_error_after_start_ends_in_one_line_saying_what_is_kept(tmp_path, error, line):
    """The command line (a sys.excepthook the Run installs) and run_example (tests, notebooks) say the same."""
    script, out = tmp_path / "demo.py", tmp_path / "out"
    script.write_text(SCRIPT.format(error=error))
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and done.stderr.strip() == line.format(out=out)          # no traceback
    assert not (out / ".run.lock").exists()
    with pytest.raises(runs.RunError) as info:
        runs.run_example(script, ["--out", str(out), "--resume"])
    assert str(info.value) == line.format(out=out) and not (out / ".run.lock").exists()
