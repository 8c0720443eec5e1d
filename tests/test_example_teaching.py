"""The teaching examples end to end (quickstart, forward_process, basics, score): tiny fast runs in
the default suite, the documented default runs with their targets behind the slow mark; each
lesson opens as a notebook; and the README's quickstart typed as a teacher would, in a fresh
interpreter.

The lessons are top-level code in `# %%` cells (no main()), so a test runs one as the command
line does, in this process (td.runs.run_example: runpy with sys.argv set), and reads what it
computed from the module's globals."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tinydiff as td

ROOT = os.path.join(os.path.dirname(__file__), "..")
LESSONS = ["quickstart", "forward_process", "basics", "score"]


def run_example(name, argv):
    """Run examples/<name>.py with these flags, as `python examples/<name>.py ARGV` would; its globals."""
    return td.runs.run_example(os.path.join(ROOT, "examples", f"{name}.py"), argv)


def pictures_ok(folder, names):
    for name in names:
        with Image.open(folder / name) as im:
            im.verify()


def test_quickstart_tiny(tmp_path, capsys):
    """20 steps of the written-out loop must already learn: an untrained eps-network's loss is
    about E[eps^2] = 1, and it falls by a fifth within 20 steps."""
    g = run_example("quickstart", ["--steps", "20", "--samples", "100", "--out", tmp_path])
    pictures_ok(tmp_path, ["schedule.png", "noising.gif", "loss.png", "samples.png"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == g["metrics"] and 0 <= metrics["mode_coverage"] <= 8 and 0 <= metrics["mode_precision"] <= 1
    losses = np.asarray(g["losses"])
    assert len(losses) == 20 and np.mean(losses[:3]) > 0.8 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    said = capsys.readouterr().out
    assert f"wrote {tmp_path.resolve()}" in said and "(target 8/8)" in said


def test_forward_process_tiny_routes_agree_with_the_closed_form(tmp_path, capsys):
    """Both routes to x_t (T kernel steps; one closed-form jump) must match sqrt(alpha_bar_t) and
    1 - alpha_bar_t within 5 standard errors at every t."""
    g = run_example("forward_process", ["--size", "24", "--T", "60", "--out", tmp_path])
    pictures_ok(tmp_path, ["forward.png", "schedules.png"])
    metrics = g["metrics"]
    assert metrics["ok"] and json.loads((tmp_path / "metrics.json").read_text())["T"] == 60
    rows = metrics["schedules"]
    assert rows["linear, T = 1000"]["fraction_snr_below_0.01"] > 4 * rows["cosine, T = 1000"]["fraction_snr_below_0.01"]
    assert capsys.readouterr().out.count(": ok") == 2
    picture = g["test_picture"](64)                                    # generated, not downloaded
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 5


def test_forward_process_reads_any_photo(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photo)
    metrics = run_example("forward_process", [photo, "--size", "16", "--T", "20", "--out", tmp_path / "o"])["metrics"]
    assert metrics["image"] == "photo.jpg" and metrics["ok"]


def test_forward_process_names_a_photo_it_cannot_read(tmp_path):
    with pytest.raises(SystemExit) as err:
        run_example("forward_process", [tmp_path / "missing.jpg", "--out", tmp_path / "o"])
    assert "missing.jpg" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def basics_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("basics")
    return out, run_example("basics", ["--n", "4000", "--out", out])


def test_basics_tiny(basics_tiny):
    out, g = basics_tiny
    pictures_ok(out, ["basics.png"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["density_from_autograd_max_error"] < 1e-9
    assert metrics["score_function"]["d_mu_std_per_sample"] > metrics["reparameterised"]["d_mu_std_per_sample"]


def test_basics_newton_inverse_cdf_inverts_the_cdf(basics_tiny):
    """The truth: F(F^{-1}(u)) = u, with F evaluated independently (exact erf, not the tanh Phi)."""
    _, g = basics_tiny
    u = np.linspace(0.001, 0.999, 101)
    np.testing.assert_allclose(g["mixture_cdf"](g["mixture_inverse_cdf"](u)), u, atol=3e-4)   # tanh Phi: 2e-4


def test_score_tiny(tmp_path):
    g = run_example("score", ["--steps", "20", "--hidden", "16", "--batch", "64", "--T", "600",
                              "--langevin-levels", "5", "--langevin-steps", "2", "--n-eval", "200", "--out", tmp_path])
    pictures_ok(tmp_path, ["score.png", "samples.png"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["samplers"]) == {"ancestral, network", "langevin, network", "ancestral, exact score",
                                        "langevin, exact score"}
    assert all(np.isfinite(v) for v in metrics["score_mse_per_t"].values())
    assert metrics["samplers"]["ancestral, exact score"]["mode_coverage"] == 8   # the oracle cannot miss a mode
    assert g["trainer"].step == 20


@pytest.mark.parametrize("name, argv, words", [
    ("quickstart", ["--steps", "0"], "--steps"),
    ("score", ["--T", "100"], "--T must be >= 600"),
    ("basics", ["--n", "50"], "--n must be >= 100"),
    ("forward_process", ["--size", "1"], "--size and --T must be >= 2"),
])
def test_bad_flags_fail_in_one_line_before_any_work(tmp_path, capsys, name, argv, words):
    with pytest.raises(SystemExit) as err:
        run_example(name, argv + ["--out", tmp_path / "o"])
    assert err.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", LESSONS + ["vae", "latent_diffusion", "edit"])
def test_lesson_opens_as_a_notebook_of_cells(name):
    """Percent-format cells (what jupytext and VS Code split on): code and markdown cells, every
    markdown cell prose, not code; at most 200 lines; no example imported by path, no process
    tuning (the library does it)."""
    text = open(os.path.join(ROOT, "examples", f"{name}.py"), encoding="utf-8").read()
    cells = re.split(r"^# %%", text, flags=re.M)[1:]
    markdown = [c for c in cells if c.startswith(" [markdown]")]
    assert len(cells) >= 6 and len(markdown) >= 3
    for cell in markdown:
        body = [line for line in cell.splitlines()[1:] if line.strip()]
        assert body and all(line.startswith("#") for line in body), cell
    assert len(text.splitlines()) <= 200
    assert "spec_from_file_location" not in text and "OPENBLAS" not in text and "reuse_freed_memory" not in text


def readme_quickstart():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_readme_quickstart(tmp_path, code):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT), MPLBACKEND="Agg", TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)


def test_readme_quickstart_runs_in_a_fresh_interpreter_and_shows_every_figure(tmp_path):
    """Typed as written, with 10 in place of every 2000 (steps and points); without a display
    each td.viz.show saves a file."""
    code = readme_quickstart()
    assert "2000" in code and "td.viz.show(" in code
    result = run_readme_quickstart(tmp_path, re.sub(r"\b2000\b", "10", code))
    assert result.returncode == 0, result.stderr[-3000:]
    shown = re.findall(r"saved the picture to (\S+)", result.stdout)
    assert len(shown) == code.count("td.viz.show(")
    assert all(os.path.getsize(path) > 0 for path in shown)


@pytest.mark.slow
def test_readme_quickstart_as_written(tmp_path):
    result = run_readme_quickstart(tmp_path, readme_quickstart())
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSONS)
def test_default_run_meets_its_targets(tmp_path, name):
    metrics = run_example(name, ["--out", tmp_path])["metrics"]
    assert metrics["mode_coverage"] == 8 if name == "quickstart" else metrics["ok"]


@pytest.mark.parametrize("name", LESSONS + ["toy2d"])
def test_help_states_one_default_per_flag(name, capsys):
    """--help shows each default once: never "(default: the dataset's own, 0.5 / 0.1) (default: None)"."""
    with pytest.raises(SystemExit):
        run_example(name, ["--help"])
    text = " ".join(capsys.readouterr().out.split())                   # undo argparse's line wrapping
    assert "(default: None)" not in text
    options = re.split(r"\s(?=--?[a-zA-Z])", text.split("options:", 1)[1])
    assert all(option.count("(default:") <= 1 for option in options), [o for o in options if o.count("(default:") > 1]
    assert "--out" in text
