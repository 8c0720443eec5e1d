"""Datasets for tinydiff. ``toy2d``: 2-D point clouds, several with known densities;
``arrays``: batches from in-memory arrays, in epochs."""
from .arrays import EpochSampler
from .toy2d import (
    DATASETS,
    Checkerboard,
    Gaussian,
    GaussianMixture,
    SwissRoll,
    TwoMoons,
    make_dataset,
)

__all__ = ["EpochSampler", "DATASETS", "Checkerboard", "Gaussian", "GaussianMixture", "SwissRoll", "TwoMoons",
           "make_dataset"]
