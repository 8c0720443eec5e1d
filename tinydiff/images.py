"""Pictures of image samples: a grid of digits, and labelled rows of images.

    image_grid(images, nrow)                     -> uint8 [H', W', 3], pure NumPy
    save_image_grid(images, path, nrow, scale)   the grid as a PNG, pixels enlarged (Pillow)
    plot_image_rows(rows, path, row_labels, col_labels, title, marked)
                                                 labelled rows (matplotlib), e.g. one row per
                                                 guidance scale or per denoising step; marked
                                                 cells get a frame (held-out pairs)

Images are [N, H, W] (grey) or [N, C, H, W] with C = 1 or 3, values in [0, 1]; values
outside are clipped. Files are written atomically (``tinydiff.checkpoint.atomic_write``).
matplotlib and Pillow are imported only when a picture is drawn.
"""
from __future__ import annotations

import io

import numpy as np

from .checkpoint import atomic_write


def _as_hwc(images) -> np.ndarray:
    """[N, H, W] or [N, C, H, W] (C = 1 or 3) in [0, 1] -> float [N, H, W, 3]."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: expected [N, H, W] or [N, C, H, W] with C = 1 or 3, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("images: expected finite values in [0, 1], got NaN or inf")
    x = np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


def image_grid(images, nrow: int, pad: int = 2, background: float = 0.5) -> np.ndarray:
    """Tile images into rows of ``nrow`` (the last row padded with background), uint8 [H', W', 3].

    >>> grid = td.images.image_grid(np.zeros((5, 28, 28)), nrow=3)    # 2 rows of 3, 2-pixel gaps
    >>> grid.shape, grid.dtype
    ((62, 92, 3), dtype('uint8'))
    """
    x = _as_hwc(images)
    N, H, W, _ = x.shape
    if not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow: expected a positive int, got {nrow!r}")
    rows = -(-N // nrow)
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, 3), background)
    for i in range(N):                        # at most a few hundred tiles: a loop reads best
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = x[i]
    return np.round(grid * 255).astype(np.uint8)


def save_image_grid(images, path, nrow: int = 10, scale: int = 3) -> np.ndarray:
    """Write ``image_grid(images, nrow)`` to ``path`` (PNG), each pixel a scale x scale block.
    Returns the grid (uint8 [H', W', 3], before enlarging).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> td.images.save_image_grid(np.ones((4, 1, 8, 8)), path, nrow=2, scale=2).shape   # the grid before enlarging
    (22, 22, 3)
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("tinydiff.images needs Pillow: pip install tinydiff[examples]") from e
    grid = image_grid(images, nrow)
    big = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return grid


def plot_image_rows(rows, path=None, row_labels=None, col_labels=None, title=None, cell: float = 0.9,
                    dpi: int = 110, marked=(), mark_colour="0.45", row_captions=None):
    """One row of images per entry of ``rows`` (each [n, H, W] or [n, C, H, W] in [0, 1]),
    labelled on the left by row_labels, on top by col_labels and under each row by
    row_captions (e.g. the prompt that made it). Returns the matplotlib
    Figure, saved to ``path`` (.png, .pdf or .svg) if given. ``marked``: (row, column) cells
    drawn with a frame in ``mark_colour`` (say what it means in the title).

    >>> rows = [np.zeros((3, 8, 8)), np.ones((2, 8, 8))]
    >>> fig = td.images.plot_image_rows(rows, row_labels=["dark", "light"], col_labels=["a", "b", "c"],
    ...                                 marked=[(0, 1)])
    >>> len(fig.axes)                                                  # 2 rows x 3 columns
    6
    """
    from .viz import figure as _figure                        # matplotlib only when drawing
    rows = [_as_hwc(r) for r in rows]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = _figure((cell * n_cols + (1.3 if row_labels else 0.2), cell * n_rows + (0.9 if title else 0.3)
                   + (0.3 if col_labels else 0) + (0.3 * n_rows if row_captions else 0)), dpi)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    marked = {(int(i), int(j)) for i, j in marked}
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible((i, j) in marked)
                side.set_color(mark_colour)
                side.set_linewidth(4)
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest", vmin=0, vmax=1)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=9)
            if i == 0 and col_labels:
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0 and row_captions:                 # under the row, left-aligned, wider than one cell:
                ax.set_xlabel(" ", fontsize=9)           # the label only reserves the line's height, and the
                ax.text(0, -0.06, row_captions[i], transform=ax.transAxes, ha="left", va="top",
                        fontsize=9).set_in_layout(False)   # text, left out of the layout, may run on to the right
    if title:
        fig.suptitle(title, fontsize=11)
    if path is not None:
        from .viz import save
        save(fig, path)
    return fig


def plot_attention_maps(images, maps, tokens, path=None, cell: float = 0.9, dpi: int = 110):
    """Which token each position of a small grid attended to: one row per image, the image and
    then one map per token (weights in [0, 1], brighter = more), the token under its map.

    images: [n, 3 or 1, H, W] or [n, H, W] in [0, 1]; maps: [n, h, w, L] attention weights
    (each position's weights over the L tokens sum to 1); tokens: n lists of token strings
    (the first len(tokens[i]) of the L maps are drawn; padding is left out). Returns the Figure.

    >>> fig = td.images.plot_attention_maps(np.zeros((2, 3, 8, 8)), np.full((2, 2, 2, 3), 1 / 3),
    ...                                     [["<start>", "red"], ["<start>", "a", "seven"]])
    >>> len(fig.axes)                                                  # 2 rows x (image + 3 tokens)
    8
    """
    from .viz import figure as _figure
    images, maps = _as_hwc(images), np.asarray(maps)
    n_cols = 1 + max(len(t) for t in tokens)
    fig = _figure((cell * n_cols + 0.2, (cell + 0.3) * len(images) + 0.5), dpi)
    axes = fig.subplots(len(images), n_cols, squeeze=False)
    for i, (image, words) in enumerate(zip(images, tokens)):
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.imshow(image, interpolation="nearest", vmin=0, vmax=1, cmap="gray")
                ax.set_xlabel("sample", fontsize=9)
            elif j <= len(words):
                ax.imshow(maps[i, :, :, j - 1], interpolation="nearest", vmin=0, vmax=1, cmap="magma")
                ax.set_xlabel(words[j - 1], fontsize=9)
            else:
                ax.set_axis_off()
    fig.suptitle("cross-attention: how much of each word\nevery latent pixel took (0 black, 1 bright)", fontsize=10)
    if path is not None:
        from .viz import save
        save(fig, path)
    return fig
