"""The teaching examples end to end (quickstart, forward_process, basics, score): tiny fast runs in
the default suite, the documented default runs with their targets behind the slow mark; and the
README's quickstart typed as a teacher would, in a fresh interpreter."""
import importlib.util
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


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pictures_ok(folder, names):
    for name in names:
        with Image.open(folder / name) as im:
            im.verify()


def test_quickstart_tiny(tmp_path, capsys):
    metrics = load("quickstart").main(["--steps", "20", "--samples", "100", "--out", str(tmp_path)])
    pictures_ok(tmp_path, ["schedule.png", "noising.gif", "loss.png", "samples.png"])
    assert 0 <= metrics["mode_coverage"] <= 8 and 0 <= metrics["mode_precision"] <= 1
    said = capsys.readouterr().out
    assert f"wrote {tmp_path.resolve()}" in said and "(target 8/8)" in said


def test_forward_process_tiny_routes_agree_with_the_closed_form(tmp_path, capsys):
    """Both routes to x_t (T kernel steps; one closed-form jump) must match sqrt(alpha_bar_t) and
    1 - alpha_bar_t within 5 standard errors at every t."""
    metrics = load("forward_process").main(["--size", "24", "--T", "60", "--out", str(tmp_path)])
    pictures_ok(tmp_path, ["forward.png", "schedules.png"])
    assert metrics["ok"] and json.loads((tmp_path / "metrics.json").read_text())["T"] == 60
    rows = metrics["schedules"]
    assert rows["linear, T = 1000"]["fraction_snr_below_0.01"] > 4 * rows["cosine, T = 1000"]["fraction_snr_below_0.01"]
    assert capsys.readouterr().out.count(": ok") == 2


def test_forward_process_reads_any_photo(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(photo)
    metrics = load("forward_process").main([str(photo), "--size", "16", "--T", "20", "--out", str(tmp_path / "o")])
    assert metrics["image"] == "photo.jpg" and metrics["ok"]


def test_forward_process_test_picture_is_generated_not_downloaded():
    picture = load("forward_process").test_picture(64)
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 5


def test_basics_tiny(tmp_path):
    metrics = load("basics").main(["--n", "4000", "--out", str(tmp_path)])
    pictures_ok(tmp_path, ["basics.png"])
    assert metrics["density_from_autograd_max_error"] < 1e-9
    assert metrics["score_function"]["d_mu_std_per_sample"] > metrics["reparameterised"]["d_mu_std_per_sample"]


def test_basics_newton_inverse_cdf_inverts_the_cdf():
    """The truth: F(F^{-1}(u)) = u, with F evaluated independently (exact erf, not the tanh Phi)."""
    basics = load("basics")
    u = np.linspace(0.001, 0.999, 101)
    x = basics.mixture_inverse_cdf(u)
    exact = basics.normal_cdf_exact((x[:, None] - basics.MEANS) / basics.STDS) @ basics.WEIGHTS
    np.testing.assert_allclose(exact, u, atol=3e-4)                # Page's tanh Phi is within 2e-4


def test_score_tiny(tmp_path):
    metrics = load("score").main(["--steps", "20", "--hidden", "16", "--batch", "64", "--T", "600",
                                  "--langevin-levels", "5", "--langevin-steps", "2", "--n-eval", "200",
                                  "--out", str(tmp_path)])
    pictures_ok(tmp_path, ["score.png", "samples.png"])
    assert set(metrics["samplers"]) == {"ancestral, network", "langevin, network", "ancestral, exact score",
                                        "langevin, exact score"}
    assert all(np.isfinite(v) for v in metrics["score_mse_per_t"].values())
    assert metrics["samplers"]["ancestral, exact score"]["mode_coverage"] == 8   # the oracle cannot miss a mode


def readme_quickstart():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_readme_quickstart(tmp_path, code):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT), MPLBACKEND="Agg", TMPDIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)


def test_readme_quickstart_runs_in_a_fresh_interpreter_and_shows_every_figure(tmp_path):
    """Typed as written, with fewer steps and points; without a display each td.viz.show saves a file."""
    code = readme_quickstart()
    assert "trainer.train(2000)" in code and "(2000, 2)" in code
    small = code.replace("trainer.train(2000)", "trainer.train(10)").replace("lr_decay_steps=2000", "lr_decay_steps=10")
    small = small.replace("(2000, 2)", "(50, 2)").replace("data.sample(2000, rng)", "data.sample(50, rng)")
    result = run_readme_quickstart(tmp_path, small)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = re.findall(r"saved the picture to (\S+)", result.stdout)
    assert len(shown) == code.count("td.viz.show(") == 4
    assert all(os.path.getsize(path) > 0 for path in shown)


@pytest.mark.slow
def test_readme_quickstart_as_written(tmp_path):
    result = run_readme_quickstart(tmp_path, readme_quickstart())
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "forward_process", "basics", "score"])
def test_default_run_meets_its_targets(tmp_path, name):
    metrics = load(name).main(["--out", str(tmp_path)])
    if name == "quickstart":
        assert metrics["mode_coverage"] == 8
    else:
        assert metrics["ok"]


@pytest.mark.parametrize("name", ["quickstart", "forward_process", "basics", "score", "toy2d"])
def test_help_states_one_default_per_flag(name, capsys):
    """--help used to show "(default: the dataset's own, 0.5 / 0.1) (default: None)"."""
    with pytest.raises(SystemExit):
        if name == "toy2d":                                              # a top-level lesson: run as a script
            td.runs.run_example(os.path.join(ROOT, "examples", "toy2d.py"), ["--help"])
        else:
            load(name).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())                   # undo argparse's line wrapping
    assert "(default: None)" not in text
    options = re.split(r"\s(?=--?[a-zA-Z])", text.split("options:", 1)[1])
    assert all(option.count("(default:") <= 1 for option in options), [o for o in options if o.count("(default:") > 1]
    assert "--out" in text
