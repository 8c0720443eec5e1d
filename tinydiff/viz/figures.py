"""Still figures: samples beside data, loss curves, noise schedules; and showing any picture.

Every plotting function returns a matplotlib ``Figure`` and also saves it when given a
``path``. Figures are built without pyplot (a ``Figure`` on an Agg canvas), so scripts
never accumulate open windows; in a notebook a returned figure displays itself, and from
a terminal ``show(fig)`` opens a window.
"""
import os
import tempfile

import numpy as np

from ..checkpoint import atomic_write
from ..progress import in_notebook

INSTALL_HINT = "pip install tinydiff[examples]"
DATA_COLOR, SAMPLE_COLOR = "#4c72b0", "#dd8452"
_FIGURE_CLASS = []          # the Figure subclass, made on first use (matplotlib is imported late)


def figure(figsize=(6.4, 4.0), dpi=110):
    """A matplotlib Figure on an Agg canvas, laid out by matplotlib's constrained layout
    (titles, tick labels and colour bars are never cut off), that displays itself when it
    is the last value of a notebook cell. No pyplot, no global backend switch.

    >>> fig = figure((4, 3), dpi=50)
    >>> ax = fig.subplots()
    >>> fig.get_size_inches().tolist()
    [4.0, 3.0]
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"tinydiff.viz needs matplotlib for pictures: {INSTALL_HINT}") from e
    if not _FIGURE_CLASS:
        class NotebookFigure(Figure):
            """A Figure that notebooks show inline (IPython calls _repr_png_)."""

            def _repr_png_(self):
                import io
                buffer = io.BytesIO()
                self.savefig(buffer, format="png")
                return buffer.getvalue()
        _FIGURE_CLASS.append(NotebookFigure)
    fig = _FIGURE_CLASS[0](figsize=figsize, dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.06)     # inches of margin: room for subscripts' descent
    FigureCanvasAgg(fig)
    return fig


def check_suffix(path, allowed):
    """The file suffix of ``path`` without its dot, checked against ``allowed``.

    >>> check_suffix("out/samples.PNG", ("png", "svg"))
    'png'
    """
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext not in allowed:
        raise ValueError(f"path {os.fspath(path)!r} must end with one of "
                         f"{['.' + a for a in allowed]}, got {'.' + ext if ext else 'no suffix'}")
    return ext


def save(fig, path):
    """Write ``fig`` to ``path`` (.png, .pdf or .svg) atomically: a crash never leaves half a
    picture. Returns ``fig``.

    >>> import os, tempfile
    >>> fig = figure((2, 2), dpi=40)
    >>> path = os.path.join(tempfile.mkdtemp(), "empty.png")
    >>> save(fig, path) is fig, os.path.getsize(path) > 0
    (True, True)
    """
    fmt = check_suffix(path, ("png", "pdf", "svg"))
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt)
    return fig


def show(picture, block=None):
    """Show a Figure or an Animation: inline in a notebook, in a window from a terminal.

    Where no window can open (no display, so matplotlib runs its file-only Agg backend),
    the picture is saved to a temporary file and the path printed instead. ``block`` is
    passed to ``matplotlib.pyplot.show``. Returns ``picture``.

    >>> fig = td.viz.plot_loss(np.arange(1, 11), 1.0 / np.arange(1, 11))
    >>> td.viz.show(fig)                                      # doctest: +SKIP
    """
    from .animation import Animation
    if in_notebook():
        from IPython.display import display
        display(picture)
        return picture
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"tinydiff.viz.show needs matplotlib: {INSTALL_HINT}") from e
    if isinstance(picture, Animation):
        fig, keep_alive = picture.to_pyplot(plt)
    else:
        fig, keep_alive = _adopt(plt, picture), None
    if getattr(fig.canvas, "required_interactive_framework", None) is None:     # Agg: no window possible
        suffix = ".gif" if isinstance(picture, Animation) else ".png"
        fd, path = tempfile.mkstemp(prefix="tinydiff-", suffix=suffix)
        os.close(fd)
        picture.save(path) if isinstance(picture, Animation) else save(picture, path)
        plt.close(fig)
        print(f"no window can open here (matplotlib backend {plt.get_backend()!r}); saved the picture to {path}")
        return picture
    plt.show(block=block)
    del keep_alive
    return picture


def _adopt(plt, fig):
    """Hand a Figure made without pyplot to pyplot, so plt.show() opens a window for it."""
    try:
        return plt.figure(fig)                   # matplotlib >= 3.10 adopts an unmanaged Figure
    except (TypeError, ValueError):
        holder = plt.figure(figsize=fig.get_size_inches(), dpi=fig.dpi)   # older: borrow a manager
        manager = holder.canvas.manager
        manager.canvas.figure = fig
        fig.set_canvas(manager.canvas)
        return fig


def points(name, x):
    """``x`` as a numeric array [N, 2], or a ValueError naming ``name``.

    >>> points("data", [[0, 1], [2, 3]]).shape
    (2, 2)
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array of shape [N, 2], got shape {x.shape}, "
                         f"dtype {x.dtype}")
    return x


def square_limits(*clouds, q=0.5, margin=0.1):
    """Square axis limits ((lo_x, hi_x), (lo_y, hi_y)) holding the central 100 - 2q % of every
    cloud (percentiles, so a few runaway samples do not shrink the picture), plus a margin.

    >>> square_limits(np.array([[0.0, 0.0], [1.0, 2.0]]), q=0, margin=0)
    ((-0.5, 1.5), (0.0, 2.0))
    """
    finite = [c[np.isfinite(c).all(axis=1)] for c in clouds]
    pts = np.concatenate([c for c in finite if len(c)] or [np.zeros((1, 2))])
    lo, hi = np.percentile(pts, [q, 100.0 - q], axis=0)                 # [2], [2]
    center, half = (lo + hi) / 2.0, max(float(np.max(hi - lo)) / 2.0, 1e-3) * (1.0 + margin)
    return tuple((float(c - half), float(c + half)) for c in center)


def thin(x, max_points):
    """Every k-th point so at most ``max_points`` are drawn (deterministic, no RNG needed).

    >>> len(thin(np.zeros((10, 2)), 4))
    4
    """
    return x[:: max(1, -(-len(x) // max_points))]


def count_outside(x, lims):
    """How many points of x [N, 2] fall outside the limits ((x0, x1), (y0, y1)).

    >>> count_outside(np.array([[0.0, 0.0], [5.0, 0.0]]), ((-1, 1), (-1, 1)))
    1
    """
    (x0, x1), (y0, y1) = lims
    inside = (x[:, 0] >= x0) & (x[:, 0] <= x1) & (x[:, 1] >= y0) & (x[:, 1] <= y1)
    return int(np.sum(~inside))


def style_axes(ax, lims, title, labels=(True, True)):
    """Shared look of a 2-D point panel: limits, equal aspect, a light grid, and the axis
    names x_1, x_2 where ``labels`` (for x, for y) says so.

    >>> ax = figure((3, 3), dpi=40).subplots()
    >>> style_axes(ax, ((-2, 2), (-2, 2)), "data")
    >>> ax.get_title(), ax.get_xlabel()
    ('data', '$x_1$')
    """
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    ax.set_box_aspect(1.0)              # a square panel the layout engine can plan around
    ax.set_aspect("equal", adjustable="datalim")   # equal units; widen the limits if lims is not square
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.25, linewidth=0.5)
    ax.tick_params(labelsize=8)
    if labels[0]:
        ax.set_xlabel("$x_1$", fontsize=9, labelpad=1)
    if labels[1]:
        ax.set_ylabel("$x_2$", fontsize=9, labelpad=1)


def plot_samples(samples, data, path=None, title=None, lims=None, max_points=20000, dpi=110,
                 names=("data", "samples")):
    """Data (left) beside model samples (right); returns the Figure, saved to ``path`` if given
    (.png, .pdf or .svg). ``names`` titles the two panels (e.g. two samplers side by side).

    Both panels share axis limits and an equal aspect, so shapes and spreads can be compared
    by eye. Default limits hold the central 99% of data and samples together (a handful of
    runaway samples cannot shrink the picture); points outside the view are counted in the
    panel title instead of silently disappearing.

    >>> rng = np.random.default_rng(0)
    >>> fig = plot_samples(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)), lims=((-5, 5), (-5, 5)))
    >>> [ax.get_title() for ax in fig.axes]
    ['data (N = 100)', 'samples (N = 100)']
    """
    samples, data = points("samples", samples), points("data", data)
    if path is not None:
        check_suffix(path, ("png", "pdf", "svg"))
    lims = square_limits(data, samples) if lims is None else lims
    fig = figure((8.0, 4.8), dpi)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, x, name, color in ((axes[0], data, names[0], DATA_COLOR), (axes[1], samples, names[1], SAMPLE_COLOR)):
        shown = thin(x, max_points)
        alpha = float(np.clip(3000.0 / max(len(shown), 1), 0.15, 0.8))
        ax.scatter(shown[:, 0], shown[:, 1], s=3, color=color, alpha=alpha, linewidths=0, rasterized=True)
        label = f"{name} (N = {len(x)})"
        n_out = count_outside(x, lims)
        if n_out:
            label += f", {n_out} outside view"
        style_axes(ax, lims, label, labels=(True, ax is axes[0]))      # the right panel shares the y axis
    if title:
        fig.suptitle(title, fontsize=12)
    return fig if path is None else save(fig, path)


def moving_average(y, window):
    """Centred moving average  m_i = mean(y_j : |i - j| <= window // 2), shrinking at the ends.

    y: [T] -> [T]. Computed with two convolutions (sum of values / number of values).

    >>> moving_average(np.array([0.0, 3.0, 6.0, 9.0]), 3).tolist()
    [1.5, 3.0, 6.0, 7.5]
    """
    kernel = np.ones(int(window))
    return np.convolve(y, kernel, mode="same") / np.convolve(np.ones_like(y), kernel, mode="same")


def plot_loss(steps, losses=None, path=None, title="training loss", window=None, logy="auto", dpi=110):
    """The loss curve, raw values (faint) and their moving average (bold); returns the Figure,
    saved to ``path`` if given. Like matplotlib's plot(y), ``plot_loss(losses)`` numbers the
    steps 1, 2, ... itself (e.g. ``plot_loss(trainer.losses)``).

    window: moving-average width in points (default ~2% of the run, odd).
    logy: True, False, or "auto" = log scale when all losses are > 0 and span > 20x.
    Non-finite losses (a diverged step) are skipped and counted in the legend.

    >>> fig = plot_loss(1.0 / np.arange(1, 101))                  # the steps are 1..100
    >>> fig.axes[0].get_yscale(), fig.axes[0].get_xlabel()
    ('log', 'training step')
    """
    if losses is None:
        steps, losses = np.arange(1, len(steps) + 1), steps
    steps, losses = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != losses.shape:
        raise ValueError(f"steps and losses must be 1-D of equal length, got shapes {steps.shape} "
                         f"and {losses.shape}")
    if path is not None:
        check_suffix(path, ("png", "pdf", "svg"))
    ok = np.isfinite(losses) & np.isfinite(steps)
    if not ok.any():
        raise ValueError(f"losses has no finite values (length {len(losses)})")
    s, y = steps[ok], losses[ok]
    window = 2 * (len(y) // 100) + 1 if window is None else int(window)
    if window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    smooth = moving_average(y, window)
    if logy == "auto":
        logy = bool(np.all(y > 0) and y.max() / y.min() > 20.0)
    fig = figure((6.4, 3.8), dpi)
    ax = fig.subplots()
    raw_label = "raw, one value per step" + (f" ({int(np.sum(~ok))} non-finite skipped)" if not ok.all() else "")
    ax.plot(s, y, color=DATA_COLOR, alpha=0.3, linewidth=0.8, label=raw_label)
    ax.plot(s, smooth, color=DATA_COLOR, linewidth=2.0, label=f"moving average ({window} steps)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss" + (" (log scale)" if logy else ""))
    ax.set_title(f"{title}   (last smoothed value: {smooth[-1]:.4g})", fontsize=10)
    ax.grid(True, which="both", alpha=0.25, linewidth=0.5)
    ax.legend(fontsize=8, frameon=False)
    return fig if path is None else save(fig, path)


def plot_schedules(schedules, path=None, styles=None, title=None, dpi=110):
    """Four views of noise schedules against the fraction t/T of the chain; returns the Figure.

    schedules: {label: betas [T]}; styles: optional {label: matplotlib line keywords}.
    Panels: beta_t (log scale); alpha_bar_t = prod_{s<=t} (1 - beta_s), the signal kept in
    x_t (DDPM eq. 4); the signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (log scale;
    Kingma et al. 2021); and beta-tilde_t / beta_t, the ratio of the two fixed reverse
    variances (DDPM eq. 7), the curve of Nichol & Dhariwal (2021), figure 1: it is ~1
    except in the first few steps, so there the choice of variance matters most.
    Timesteps are the papers' t = 1..T, plotted at t/T so that chains of any length align.

    >>> fig = plot_schedules({"linear": td.linear_beta_schedule(1000)})
    >>> len(fig.axes), fig.axes[0].get_lines()[0].get_label()
    (4, 'linear')
    >>> ratio = fig.axes[3].get_lines()[0].get_ydata()      # beta-tilde_1 = 0: x_0 is known given x_1 and x_0
    >>> float(ratio[0]), bool(ratio[-1] > 0.99)
    (0.0, True)
    """
    if not isinstance(schedules, dict) or not schedules:
        raise ValueError(f"schedules: expected a non-empty dict {{label: betas}}, got {type(schedules).__name__}")
    styles = styles or {}
    fig = figure((9.0, 6.4), dpi)
    axes = fig.subplots(2, 2).ravel()
    for label, betas in schedules.items():
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or not np.all((b > 0) & (b < 1)):
            raise ValueError(f"schedules[{label!r}]: expected betas [T] strictly inside (0, 1)")
        T = len(b)
        frac = np.arange(1, T + 1) / T
        ab = np.cumprod(1.0 - b)
        ab_prev = np.append(1.0, ab[:-1])
        ratio = (1.0 - ab_prev) / (1.0 - ab)                   # beta-tilde_t / beta_t, DDPM eq. 7
        style = {"linewidth": 1.6, **styles.get(label, {})}
        for ax, y in zip(axes, (b, ab, ab / (1.0 - ab), ratio)):
            ax.plot(frac, y, label=label, **style)
    titles = (r"$\beta_t$: noise added at step t (log scale)",
              r"$\bar\alpha_t$: signal left in $x_t$",
              r"signal-to-noise $\bar\alpha_t / (1-\bar\alpha_t)$ (log scale)",
              r"$\tilde\beta_t / \beta_t$: the two fixed reverse variances")
    for ax, text in zip(axes, titles):
        ax.set_title(text, fontsize=10)
        ax.grid(True, alpha=0.25, linewidth=0.5)
        ax.tick_params(labelsize=8)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[3].set_xscale("log")                 # the ratio changes only in the first steps: spread them out
    axes[3].set_ylim(0.0, 1.05)
    axes[2].set_xlabel("diffusion step t / T", fontsize=9)
    axes[3].set_xlabel("diffusion step t / T (log scale)", fontsize=9)
    axes[1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig if path is None else save(fig, path)
