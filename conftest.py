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
def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


collect_ignore = [] if _installed("torch") else ["tinydiff/export/torch_models.py", "tinydiff/export/torch_text.py",
                                                 "tinydiff/export/torch_diffusion.py"]
