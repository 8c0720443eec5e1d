"""tinydiff.images: grids laid out exactly, pictures written atomically."""
import numpy as np
import pytest
from PIL import Image

from tinydiff.images import image_grid, plot_image_rows, save_image_grid


def test_grid_places_each_image_in_its_cell():
    """Tile i sits at row i // nrow, column i % nrow, 2-pixel borders of grey between tiles."""
    images = np.stack([np.full((3, 4), k / 5) for k in range(5)])          # [5, 3, 4], tile k has value k/5
    grid = image_grid(images, nrow=2, pad=2)
    assert grid.shape == (3 * 5 + 2, 2 * 6 + 2, 3) and grid.dtype == np.uint8
    for k in range(5):
        r, c = divmod(k, 2)
        tile = grid[2 + 5 * r:2 + 5 * r + 3, 2 + 6 * c:2 + 6 * c + 4]
        assert np.all(tile == round(k / 5 * 255))
    assert np.all(grid[0] == 128) and np.all(grid[2 + 10:, 2 + 6:] == 128)  # border; the empty sixth cell


def test_colour_and_channel_layouts_and_clipping():
    grey = np.random.default_rng(0).random((4, 8, 8))
    np.testing.assert_array_equal(image_grid(grey, 2), image_grid(grey[:, None], 2))
    colour = np.zeros((1, 3, 2, 2))
    colour[0, 0] = 1.0                                                      # pure red
    assert tuple(image_grid(colour, 1, pad=0)[0, 0]) == (255, 0, 0)
    assert image_grid(np.full((1, 2, 2), 7.0), 1, pad=0).max() == 255       # clipped to [0, 1]
    with pytest.raises(ValueError, match="images: expected"):
        image_grid(np.zeros((2, 2, 5, 5)), 1)
    with pytest.raises(ValueError, match="finite"):
        image_grid(np.full((1, 2, 2), np.nan), 1)


def test_files_are_written_and_readable(tmp_path):
    images = np.random.default_rng(1).random((12, 28, 28))
    grid = save_image_grid(images, tmp_path / "grid.png", nrow=4, scale=2)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (grid.shape[1] * 2, grid.shape[0] * 2)
    plot_image_rows([images[:4], images[4:8]], tmp_path / "rows.png", row_labels=["a", "b"],
                    col_labels=list("wxyz"), title="two rows")
    Image.open(tmp_path / "rows.png").verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "rows.png"]    # no temporary files
