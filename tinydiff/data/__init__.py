"""Datasets for tinydiff. ``toy2d``: 2-D point clouds, several with known densities."""
from .toy2d import (
    DATASETS,
    Checkerboard,
    Gaussian,
    GaussianMixture,
    SwissRoll,
    TwoMoons,
    make_dataset,
)

__all__ = ["DATASETS", "Checkerboard", "Gaussian", "GaussianMixture", "SwissRoll", "TwoMoons",
           "make_dataset"]
