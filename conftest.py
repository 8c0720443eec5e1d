"""pytest's doctest setup: every docstring example in tinydiff/ runs with ``np`` and ``td``
already imported, as the package docstring promises readers."""
import numpy as np
import importlib.util

import pytest

import tinydiff as td


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["np"] = np
    doctest_namespace["td"] = td


# The PyTorch twins import torch at their top: without torch their docstrings are not collected.
collect_ignore = [] if importlib.util.find_spec("torch") else [
    "tinydiff/export/torch_models.py", "tinydiff/export/torch_diffusion.py"]
