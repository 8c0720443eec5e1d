"""The teaching surface: ``import tinydiff as td`` carries the whole API, importing it is cheap and
needs neither matplotlib nor Pillow, and every public function and class shows a runnable example.
(That every name of docs/equations.md is reachable as written there is tests/test_docs.py's job.)"""
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import tinydiff as td

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_everything_in_all_exists_and_the_central_names_are_at_the_top():
    for name in td.__all__:
        assert hasattr(td, name), name
    for name in ["Tensor", "no_grad", "nn", "optim", "models", "data", "viz", "GaussianDiffusion",
                 "linear_beta_schedule", "cosine_beta_schedule", "normal_kl", "Trainer", "ddpm_sample_loop",
                 "ddim_sample_loop", "langevin_sample_loop", "make_diffusion", "save_checkpoint", "load_checkpoint"]:
        assert name in td.__all__, name
    assert td.optim.Adam is not None and td.models.ToyMLP is not None and td.data.make_dataset is not None


def run_fresh(code):
    """Run ``code`` in a new interpreter that imports this checkout's tinydiff."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_every_submodule_is_reachable_without_importing_it():
    """In a fresh interpreter: td.<submodule> for every module of the package (tinydiff.viz,
    tinydiff.scorer, ...), as listed in __all__, with no import beyond `import tinydiff`."""
    names = sorted({info.name.split(".")[1] for info in pkgutil.walk_packages(td.__path__, "tinydiff.")}
                   - {"engine", "interop"})                       # the engine's names are at the top
    result = run_fresh("import tinydiff as td\n"
                       f"missing = [n for n in {names!r} if not hasattr(td, n) or n not in td.__all__]\n"
                       "print(missing)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_is_cheap_and_draws_in_no_plotting_library():
    result = run_fresh("import sys, tinydiff as td\n"
                       "print(sorted(m for m in ('matplotlib', 'PIL') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_works_without_matplotlib_and_pillow_and_says_how_to_get_them():
    code = ("import sys\n"
            "sys.modules['matplotlib'] = None; sys.modules['PIL'] = None   # as if not installed\n"
            "import numpy as np, tinydiff as td\n"
            "d = td.GaussianDiffusion(td.linear_beta_schedule(10))\n"
            "try:\n"
            "    td.viz.plot_samples(np.zeros((3, 2)), np.zeros((3, 2)))\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    result = run_fresh(code)
    assert result.returncode == 0, result.stderr
    assert "pip install tinydiff[examples]" in result.stdout


def public_objects():
    """Every public function and class defined in a tinydiff module, with its qualified name."""
    for info in pkgutil.walk_packages(td.__path__, "tinydiff."):
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as err:       # tinydiff.export's PyTorch twins, without torch installed
            if err.name == "torch":
                continue
            raise
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) == module.__name__:
                yield f"{module.__name__}.{name}", obj


def test_every_public_function_and_class_has_an_example():
    """Examples live in docstrings as >>> lines and run as doctests in the default suite."""
    without = sorted(name for name, obj in public_objects() if ">>>" not in (inspect.getdoc(obj) or ""))
    assert not without, f"{len(without)} public names without a >>> example: {without}"


@pytest.mark.parametrize("method", ["q_sample", "q_step", "q_mean_variance", "q_posterior_mean_variance",
                                    "p_mean_variance", "p_sample", "training_losses", "vb_terms_bpd",
                                    "prior_bpd", "calc_bpd_loop", "predict_x0_from_eps", "score_from_eps"])
def test_the_diffusion_methods_a_learner_meets_first_have_examples(method):
    assert ">>>" in (inspect.getdoc(getattr(td.GaussianDiffusion, method)) or "")
