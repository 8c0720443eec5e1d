"""Pictures for learners. Every function returns what it drew (a matplotlib ``Figure`` or an
``Animation``) and also writes it when given a path; ``show`` puts it on screen.

    plot_samples(samples, data, path=None)         data beside samples, same limits, equal aspect
    plot_loss([steps,] losses, path=None)          raw and smoothed training loss
    plot_schedules({label: betas}, path=None)      beta_t, alpha_bar_t, SNR, beta-tilde_t / beta_t
    animate_clouds(frames, labels, path=None)      point clouds over t, with a density panel (GIF)
    show(picture)                                  inline in a notebook, a window in a terminal

    figures.py    still figures, ``figure()`` (constrained layout, shows itself in notebooks),
                  ``save`` (atomic), ``show``
    animation.py  ``Animation`` (frames rendered once; inline, GIF or window), ``animate_clouds``

matplotlib and Pillow are optional (``pip install tinydiff[examples]``): they are imported
only when something is drawn, so ``import tinydiff`` works without them.
"""
from .animation import Animation, animate_clouds, blurred_histogram, grid_points
from .figures import (figure, moving_average, plot_loss, plot_samples, plot_schedules, save, show,
                      square_limits)

__all__ = ["plot_samples", "plot_loss", "plot_schedules", "animate_clouds", "Animation", "show", "figure",
           "save", "square_limits", "moving_average", "blurred_histogram", "grid_points"]
