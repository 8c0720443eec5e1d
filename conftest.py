"""pytest's doctest setup: every docstring example in tinydiff/ runs with ``np`` and ``td``
already imported, as the package docstring promises readers."""
import numpy as np
import pytest

import tinydiff as td


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["np"] = np
    doctest_namespace["td"] = td
