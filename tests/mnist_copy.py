"""Where the tests find real MNIST: one place for every test module that reads it.

$TINYDIFF_MNIST_DIR if set, else ../shared/data/mnist beside the repository (the project's
10,000-digit training subset and the official test split), else /work/shared/data/mnist.
Tests that need it carry ``needs_mnist``: without a copy they are skipped with a reason that
says how to provide one (CI has the copy, so there they always run).
"""
import os
from pathlib import Path

import pytest


def _mnist_dir() -> Path:
    if os.environ.get("TINYDIFF_MNIST_DIR"):
        return Path(os.environ["TINYDIFF_MNIST_DIR"])
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    return beside_repo if beside_repo.is_dir() else Path("/work/shared/data/mnist")


MNIST_DIR = _mnist_dir()
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST copy at {MNIST_DIR}: set "
                                 "TINYDIFF_MNIST_DIR or put the four files in ../shared/data/mnist")
