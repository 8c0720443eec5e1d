"""Animations of point clouds over a diffusion chain, shown inline or saved as GIFs.

    anim = animate_clouds(frames, labels)      # frames: x_t at a few t, each [N, 2]
    anim                                       # a notebook shows it inline
    anim.save("forward.gif")                   # or write it; show(anim) opens a window

Each frame is drawn once by matplotlib into an RGB array; an ``Animation`` holds those
arrays, so showing and saving never redraw. The optional right panel shades a density:
either a smoothed histogram of the points themselves (what the model's samples look
like), or a density you know in closed form (e.g. the true q(x_t) of a Gaussian mixture,
from ``tinydiff.oracles``), evaluated on ``grid_points``.
"""
import base64
import io

import numpy as np

from ..checkpoint import atomic_write
from .figures import INSTALL_HINT, SAMPLE_COLOR, check_suffix, figure, points, square_limits, style_axes, thin


def _image_module():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"tinydiff.viz needs Pillow to write GIFs: {INSTALL_HINT}") from e
    return Image


class Animation:
    """Rendered frames: ``frames`` [F] of [H, W, 3] uint8 images, ``durations`` [F] in ms.

    A notebook shows it inline (``_repr_html_``: an embedded GIF); ``save(path)`` writes a
    GIF atomically; ``tinydiff.viz.show(anim)`` plays it in a window.

    >>> frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128, 255)]
    >>> anim = Animation(frames, [100, 100, 500])
    >>> anim
    Animation(3 frames of 8 x 8 pixels, 0.7 s)
    >>> anim._repr_html_()[:32]
    '<img src="data:image/gif;base64,'
    """

    def __init__(self, frames, durations):
        frames = [np.asarray(f) for f in frames]
        if not frames or any(f.shape != frames[0].shape or f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8
                             for f in frames):
            raise ValueError("frames: expected a non-empty list of equal-shape [H, W, 3] uint8 images")
        if len(durations) != len(frames) or min(durations) <= 0:
            raise ValueError(f"durations: expected {len(frames)} positive milliseconds, got {list(durations)!r}")
        self.frames, self.durations = frames, [int(d) for d in durations]

    def __len__(self):
        return len(self.frames)

    def __repr__(self):
        h, w, _ = self.frames[0].shape
        return f"Animation({len(self)} frames of {w} x {h} pixels, {sum(self.durations) / 1000:.1f} s)"

    def gif_bytes(self) -> bytes:
        """The animation as GIF file contents, looping for ever.

        One 128-colour palette, learned from the first, middle and last frames stacked, serves
        every frame: no colour flicker between frames, and a smaller file than per-frame palettes.
        """
        Image = _image_module()
        montage = np.concatenate([self.frames[0], self.frames[len(self) // 2], self.frames[-1]], axis=0)
        palette = Image.fromarray(montage).quantize(colors=128)
        images = [Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE) for rgb in self.frames]
        buffer = io.BytesIO()
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                       duration=self.durations, loop=0)
        return buffer.getvalue()

    def save(self, path) -> "Animation":
        """Write the GIF to ``path`` (must end in .gif), atomically. Returns the animation."""
        check_suffix(path, ("gif",))
        data = self.gif_bytes()
        with atomic_write(path) as f:
            f.write(data)
        return self

    def _repr_html_(self):
        encoded = base64.b64encode(self.gif_bytes()).decode("ascii")
        return f'<img src="data:image/gif;base64,{encoded}"/>'

    def to_pyplot(self, plt):
        """A pyplot figure playing the frames, and the FuncAnimation to keep alive while shown."""
        from matplotlib.animation import FuncAnimation
        h, w, _ = self.frames[0].shape
        dpi = 100
        fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.axis("off")
        image = ax.imshow(self.frames[0])
        interval = float(np.median(self.durations))

        def draw(i):
            image.set_data(self.frames[i])
            return (image,)
        return fig, FuncAnimation(fig, draw, frames=len(self), interval=interval, blit=True)


def grid_points(lims, bins):
    """The centres of a bins x bins grid over lims = ((x0, x1), (y0, y1)), as [bins * bins, 2],
    ordered so that ``f(grid_points(lims, bins)).reshape(bins, bins)`` has y along rows, as
    ``imshow(origin="lower")`` and ``blurred_histogram`` expect.

    >>> grid_points(((0, 2), (0, 2)), 2).tolist()
    [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]]
    """
    (x0, x1), (y0, y1) = lims
    xs = x0 + (np.arange(bins) + 0.5) * (x1 - x0) / bins
    ys = y0 + (np.arange(bins) + 0.5) * (y1 - y0) / bins
    gx, gy = np.meshgrid(xs, ys)                                        # [bins(y), bins(x)] each
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def blurred_histogram(x, lims, bins, sigma_bins=1.0):
    """2-D histogram of x: [N, 2] on ``bins`` x ``bins`` cells over ``lims``, smoothed with a
    Gaussian of ``sigma_bins`` cells and normalised to a density (integrates to the fraction
    of points inside ``lims``).  Returns [bins(y), bins(x)] with y along rows, for imshow.

    The blur is the separable convolution B H B^T, B[i, j] proportional to
    exp(-(i - j)^2 / (2 sigma^2)): a 'KDE-ish' shading without a loop over points.

    >>> d = blurred_histogram(np.zeros((10, 2)), ((-1, 1), (-1, 1)), bins=4)
    >>> round(float(d.sum() * 0.5 * 0.5), 6)                       # cells are 0.5 wide: integrates to 1
    1.0
    """
    h, xe, ye = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=lims)  # h: [bins(x), bins(y)]
    idx = np.arange(bins)
    blur = np.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2.0 * sigma_bins ** 2))  # [bins, bins]
    blur /= blur.sum(axis=0, keepdims=True)        # each cell's mass is spread, not created
    h = blur @ h @ blur.T
    area = (xe[1] - xe[0]) * (ye[1] - ye[0])
    return (h / (max(len(x), 1) * area)).T


def animate_clouds(frames, labels=None, path=None, *, title=None, reference=None, reference_label="data",
                   points_label="points", density="histogram", density_title=None, lims=None, bins=64,
                   blur=1.5, max_points=2000, fps=8, hold_last=1.5, panel_inches=3.6, dpi=100):
    """Animate point clouds (e.g. x_t of a diffusion chain over t); returns an ``Animation``,
    saved as a GIF to ``path`` if given.

    frames: list of [N_i, 2] arrays or an array [F, N, 2]; labels: F strings such as
    't = 37' (None: 'frame i'), shown after ``title`` above each frame.
    Left panel: the points, labelled ``points_label``, over the ``reference`` points (e.g. the
    data) drawn in grey and labelled ``reference_label``.
    Right panel, ``density``:
        "histogram"  a smoothed 2-D histogram of the same points (``bins`` cells a side,
                     Gaussian blur of ``blur`` cells): what the points look like, not a
                     density anyone knows;
        an array [F, bins, bins]  densities evaluated on ``grid_points(lims, bins)`` (e.g. the
                     true q(x_t)), titled ``density_title``;
        None         no right panel.
    Densities are shaded on a square-root scale with each frame's maximum at full brightness,
    so the shape stays visible as the cloud spreads (the panel title says so). All frames
    share the axis limits (``lims`` or robust limits of every frame). The last frame is held
    for ``hold_last`` seconds.

    >>> rng = np.random.default_rng(0)
    >>> clouds = [rng.normal(size=(50, 2)) * s for s in (0.1, 1.0)]
    >>> animate_clouds(clouds, ["t = 1", "t = 2"], panel_inches=1.5, dpi=40)
    Animation(2 frames of 120 x 84 pixels, 1.6 s)
    """
    frames = [points(f"frames[{i}]", f) for i, f in enumerate(frames)]
    if not frames:
        raise ValueError("frames is empty; expected at least one [N, 2] point cloud")
    labels = [f"frame {i}" for i in range(len(frames))] if labels is None else list(labels)
    if len(labels) != len(frames):
        raise ValueError(f"labels has {len(labels)} entries, expected one per frame ({len(frames)})")
    if path is not None:
        check_suffix(path, ("gif",))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    known = density is not None and not isinstance(density, str)
    if isinstance(density, str) and density != "histogram":
        raise ValueError(f"density: expected 'histogram', an array [F, bins, bins] or None, got {density!r}")
    if known:
        density = np.asarray(density, dtype=np.float64)
        if density.shape != (len(frames), bins, bins):
            raise ValueError(f"density: expected shape {(len(frames), bins, bins)} (one grid per frame, "
                             f"bins = {bins}), got {density.shape}")
    lims = square_limits(*frames) if lims is None else lims
    n_panels = 1 if density is None else 2
    fig = figure((panel_inches * n_panels, panel_inches + 0.6), dpi)
    axes = np.atleast_1d(fig.subplots(1, n_panels))
    if reference is not None:
        ref = thin(points("reference", reference), max_points)
        axes[0].scatter(ref[:, 0], ref[:, 1], s=2, color="0.75", linewidths=0, label=reference_label)
    first = thin(frames[0], max_points)
    cloud = axes[0].scatter(first[:, 0], first[:, 1], s=3, color=SAMPLE_COLOR, alpha=0.6, linewidths=0,
                            label=points_label)
    style_axes(axes[0], lims, points_label if reference is None else f"{points_label} over {reference_label}")
    axes[0].legend(loc="upper right", fontsize=7, markerscale=3, framealpha=0.85, handletextpad=0.2)
    if density is not None:
        extent = (*lims[0], *lims[1])
        shade = axes[1].imshow(np.zeros((bins, bins)), origin="lower", extent=extent, cmap="magma",
                               vmin=0.0, vmax=1.0, interpolation="bilinear", aspect="equal")
        name = density_title or ("true density" if known else "smoothed histogram of the points")
        style_axes(axes[1], lims, f"{name}\n(sqrt scale, each frame's peak = brightest)")
        axes[1].grid(False)
    heading = fig.suptitle("Xg", fontsize=11)                # a stand-in of full height while laying out
    fig.canvas.draw()
    fig.set_layout_engine("none")                            # freeze that layout: frames differ only in data
    images = []
    for i, (x, label) in enumerate(zip(frames, labels)):     # one render per frame; F is small (~40)
        cloud.set_offsets(thin(x, max_points))
        if density is not None:
            d = density[i] if known else blurred_histogram(x, lims, bins, sigma_bins=blur)
            shade.set_data(np.sqrt(d / d.max()) if d.max() > 0 else d)
        heading.set_text(f"{title}   {label}" if title else str(label))
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())  # [H, W, 3] uint8
    durations = [int(1000 / fps)] * len(images)
    durations[-1] = max(durations[-1], int(1000 * hold_last))
    animation = Animation(images, durations)
    return animation if path is None else animation.save(path)
