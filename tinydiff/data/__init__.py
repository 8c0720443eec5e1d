"""Datasets for tinydiff. ``toy2d``: 2-D point clouds, several with known densities;
``mnist``: the MNIST digits, read from IDX files and downloaded with checksums;
``colored_mnist``: MNIST digits drawn in palette colours, two labels each (digit, colour);
``captions``: a grammar of prompts for coloured digits, and their stroke weight;
``arrays``: batches from in-memory arrays, in epochs."""
from . import captions
from .arrays import EpochSampler
from .colored_mnist import (
    COLOUR_NAMES,
    HELD_OUT,
    PALETTE,
    ColoredMNIST,
    colorize,
    held_out_mask,
    nearest_colour,
    to_grey,
)
from .mnist import (
    MNIST,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MIRRORS,
    DownloadError,
    download_mnist,
    from_model_space,
    load_mnist,
    mnist_dir,
    read_idx,
    to_model_space,
)
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
           "make_dataset",
           "MNIST", "MNIST_FILES", "MNIST_MD5", "MNIST_MIRRORS", "DownloadError", "download_mnist",
           "from_model_space", "load_mnist", "mnist_dir", "read_idx", "to_model_space",
           "ColoredMNIST", "PALETTE", "COLOUR_NAMES", "HELD_OUT", "colorize", "held_out_mask", "nearest_colour",
           "to_grey", "captions"]
