"""Pictures for learners: samples beside data, loss curves, and point clouds evolving over t.

    plot_samples(samples, data, path)      two panels, same limits, equal aspect
    plot_loss(steps, losses, path)         raw + moving-average curve, log-y when useful
    save_cloud_gif(frames, labels, path)   cloud + its density for every frame, as a GIF

matplotlib and Pillow are optional (``pip install tinydiff[examples]``) and imported only
inside these functions. Figures are built with ``matplotlib.figure.Figure`` on an Agg
canvas, so nothing touches pyplot's global state or needs a display. Every file is written
atomically (``tinydiff.checkpoint.atomic_write``): a crash never leaves half a picture.
"""
import math
import os

import numpy as np

from .checkpoint import atomic_write

_INSTALL_HINT = "pip install tinydiff[examples]"
_DATA_COLOR, _SAMPLE_COLOR = "#4c72b0", "#dd8452"


def _figure(figsize, dpi):
    """A matplotlib Figure attached to an Agg canvas (no pyplot, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"tinydiff.viz needs matplotlib for pictures: {_INSTALL_HINT}") from e
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _image_module():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"tinydiff.viz needs Pillow to write GIFs: {_INSTALL_HINT}") from e
    return Image


def _points(name, x):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array of shape [N, 2], got shape {x.shape}, "
                         f"dtype {x.dtype}")
    return x


def _suffix(path, allowed):
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext not in allowed:
        raise ValueError(f"path {os.fspath(path)!r} must end with one of "
                         f"{['.' + a for a in allowed]}, got {'.' + ext if ext else 'no suffix'}")
    return ext


def _save(fig, path, fmt):
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt)


def square_limits(*clouds, q=0.5, margin=0.1):
    """Square axis limits ((lo_x, hi_x), (lo_y, hi_y)) holding the central 100 - 2q % of every
    cloud (percentiles, so a few runaway samples do not shrink the picture), plus a margin."""
    finite = [c[np.isfinite(c).all(axis=1)] for c in clouds]
    pts = np.concatenate([c for c in finite if len(c)] or [np.zeros((1, 2))])
    lo, hi = np.percentile(pts, [q, 100.0 - q], axis=0)                 # [2], [2]
    center, half = (lo + hi) / 2.0, max(float(np.max(hi - lo)) / 2.0, 1e-3) * (1.0 + margin)
    return tuple((float(c - half), float(c + half)) for c in center)


def _thin(x, max_points):
    """Every k-th point so at most ``max_points`` are drawn (deterministic, no RNG needed)."""
    return x[:: max(1, math.ceil(len(x) / max_points))]


def _outside(x, lims):
    (x0, x1), (y0, y1) = lims
    inside = (x[:, 0] >= x0) & (x[:, 0] <= x1) & (x[:, 1] >= y0) & (x[:, 1] <= y1)
    return int(np.sum(~inside))


def _style_axes(ax, lims, title):
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.25, linewidth=0.5)
    ax.tick_params(labelsize=7)


def plot_samples(samples, data, path, title=None, lims=None, max_points=20000, dpi=110):
    """Save data (left) beside model samples (right) to ``path`` (.png, .pdf or .svg).

    Both panels share axis limits and an equal aspect, so shapes and spreads can be compared
    by eye. Default limits hold the central 99% of data and samples together (a handful of
    runaway samples cannot shrink the picture); points outside the view are counted in the
    panel title instead of silently disappearing.
    """
    samples, data = _points("samples", samples), _points("data", data)
    fmt = _suffix(path, ("png", "pdf", "svg"))
    lims = square_limits(data, samples) if lims is None else lims
    fig = _figure((8.0, 4.2), dpi)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, x, name, color in ((axes[0], data, "data", _DATA_COLOR),
                               (axes[1], samples, "samples", _SAMPLE_COLOR)):
        shown = _thin(x, max_points)
        alpha = float(np.clip(3000.0 / max(len(shown), 1), 0.15, 0.8))
        ax.scatter(shown[:, 0], shown[:, 1], s=3, color=color, alpha=alpha, linewidths=0,
                   rasterized=True)
        label = f"{name} (N = {len(x)})"
        n_out = _outside(x, lims)
        if n_out:
            label += f", {n_out} outside view"
        _style_axes(ax, lims, label)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    _save(fig, path, fmt)


def moving_average(y, window):
    """Centred moving average  m_i = mean(y_j : |i - j| <= window // 2), shrinking at the ends.

    y: [T] -> [T]. Computed with two convolutions (sum of values / number of values).
    """
    kernel = np.ones(int(window))
    return np.convolve(y, kernel, mode="same") / np.convolve(np.ones_like(y), kernel, mode="same")


def plot_loss(steps, losses, path, title="training loss", window=None, logy="auto", dpi=110):
    """Save the loss curve: raw values (faint) and their moving average (bold).

    window: moving-average width in points (default ~2% of the run, odd).
    logy: True, False, or "auto" = log scale when all losses are > 0 and span > 20x.
    Non-finite losses (a diverged step) are skipped and counted in the legend.
    """
    steps, losses = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != losses.shape:
        raise ValueError(f"steps and losses must be 1-D of equal length, got shapes {steps.shape} "
                         f"and {losses.shape}")
    fmt = _suffix(path, ("png", "pdf", "svg"))
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
    fig = _figure((6.4, 3.8), dpi)
    ax = fig.subplots()
    raw_label = "raw" + (f" ({int(np.sum(~ok))} non-finite skipped)" if not ok.all() else "")
    ax.plot(s, y, color=_DATA_COLOR, alpha=0.3, linewidth=0.8, label=raw_label)
    ax.plot(s, smooth, color=_DATA_COLOR, linewidth=2.0, label=f"moving average ({window} points)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss" + (" (log scale)" if logy else ""))
    ax.set_title(f"{title}   (last smoothed value: {smooth[-1]:.4g})", fontsize=10)
    ax.grid(True, which="both", alpha=0.25, linewidth=0.5)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path, fmt)


def blurred_histogram(x, lims, bins, sigma_bins=1.0):
    """2-D histogram of x: [N, 2] on ``bins`` x ``bins`` cells over ``lims``, smoothed with a
    Gaussian of ``sigma_bins`` cells and normalised to a density (integrates to the fraction
    of points inside ``lims``).  Returns [bins(y), bins(x)] with y along rows, for imshow.

    The blur is the separable convolution B H B^T, B[i, j] proportional to
    exp(-(i - j)^2 / (2 sigma^2)): a 'KDE-ish' shading without a loop over points.
    """
    h, xe, ye = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=lims)  # h: [bins(x), bins(y)]
    idx = np.arange(bins)
    blur = np.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2.0 * sigma_bins ** 2))  # [bins, bins]
    blur /= blur.sum(axis=0, keepdims=True)        # each cell's mass is spread, not created
    h = blur @ h @ blur.T
    area = (xe[1] - xe[0]) * (ye[1] - ye[0])
    return (h / (max(len(x), 1) * area)).T


def save_cloud_gif(frames, labels, path, density=True, lims=None, reference=None, bins=64,
                   blur=1.5, max_points=2000, fps=8, hold_last=1.5, panel_inches=2.8, dpi=80,
                   title=None):
    """Animate point clouds (e.g. x_t of a diffusion chain over t) as a GIF at ``path``.

    frames: list of [N_i, 2] arrays or an array [F, N, 2]; labels: F strings such as
    't = 37' (None -> 'frame i'). Left panel: the points (``reference`` points, e.g. the
    data, drawn faintly behind them). Right panel (``density=True``): a blurred 2-D
    histogram of the same points (``bins`` cells a side, Gaussian blur of ``blur`` cells),
    shaded on a square-root scale normalised per frame, so
    both the shape and faint tails stay visible as the cloud spreads. All frames share
    the axis limits (``lims`` or robust limits of every frame). The last frame is held for
    ``hold_last`` seconds. matplotlib renders each frame to an array; Pillow writes the GIF.
    """
    frames = [_points(f"frames[{i}]", f) for i, f in enumerate(frames)]
    if not frames:
        raise ValueError("frames is empty; expected at least one [N, 2] point cloud")
    labels = [f"frame {i}" for i in range(len(frames))] if labels is None else list(labels)
    if len(labels) != len(frames):
        raise ValueError(f"labels has {len(labels)} entries, expected one per frame ({len(frames)})")
    _suffix(path, ("gif",))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    lims = square_limits(*frames) if lims is None else lims
    Image = _image_module()
    n_panels = 2 if density else 1
    fig = _figure((panel_inches * n_panels, panel_inches + 0.35), dpi)
    axes = np.atleast_1d(fig.subplots(1, n_panels))
    if reference is not None:
        ref = _thin(_points("reference", reference), max_points)
        axes[0].scatter(ref[:, 0], ref[:, 1], s=2, color="0.8", linewidths=0)
    first = _thin(frames[0], max_points)
    cloud = axes[0].scatter(first[:, 0], first[:, 1], s=3, color=_SAMPLE_COLOR, alpha=0.6,
                            linewidths=0)
    _style_axes(axes[0], lims, "points")
    if density:
        extent = (*lims[0], *lims[1])
        shade = axes[1].imshow(np.zeros((bins, bins)), origin="lower", extent=extent, cmap="magma",
                               vmin=0.0, vmax=1.0, interpolation="bilinear", aspect="equal")
        _style_axes(axes[1], lims, "density (sqrt scale)")
        axes[1].grid(False)
    heading = fig.suptitle("", fontsize=11)
    fig.tight_layout()
    images = []
    for x, label in zip(frames, labels):          # one render per frame; F is small (~40)
        cloud.set_offsets(_thin(x, max_points))
        if density:
            d = blurred_histogram(x, lims, bins, sigma_bins=blur)
            shade.set_data(np.sqrt(d / d.max()) if d.max() > 0 else d)
        heading.set_text(f"{title}   {label}" if title else str(label))
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())  # [H, W, 3] uint8
    # One 64-colour palette, learned from the first, middle and last frames stacked, serves
    # every frame: no colour flicker between frames, and a smaller file than per-frame palettes.
    montage = np.concatenate([images[0], images[len(images) // 2], images[-1]], axis=0)
    palette = Image.fromarray(montage).quantize(colors=64)
    images = [Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE)
              for rgb in images]
    durations = [int(1000 / fps)] * len(images)
    durations[-1] = max(durations[-1], int(1000 * hold_last))
    with atomic_write(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                       duration=durations, loop=0)
