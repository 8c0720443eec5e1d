"""Tests for tinydiff.viz: every function returns what it drew; files are written atomically and are
valid PNG/GIF/SVG; pictures show inline in notebooks and fall back to a file without a display."""
import os
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from tinydiff import viz  # noqa: E402
from tinydiff.data import GaussianMixture  # noqa: E402


@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(0)
    data = GaussianMixture().sample(400, rng)
    return data, data + np.float32(0.2) * rng.standard_normal(data.shape).astype(np.float32)


def test_plot_samples_writes_a_png_and_returns_the_figure(tmp_path, clouds):
    data, samples = clouds
    path = tmp_path / "samples.png"
    fig = viz.plot_samples(samples, data, path, title="test")
    assert len(fig.axes) == 2 and fig._suptitle.get_text() == "test"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 200   # two panels side by side
    assert os.listdir(tmp_path) == ["samples.png"]
    assert viz.plot_samples(samples, data) is not None and os.listdir(tmp_path) == ["samples.png"]


def test_nothing_is_cut_off(clouds):
    """Every tick label, axis name and title lies inside the saved picture (the old samples.png lost
    its bottom tick labels); half a pixel of a subscript's descent is allowed."""
    data, samples = clouds
    fig = viz.plot_samples(samples, data, title="a title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    for ax in fig.axes:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        shown = ([lab for loc, lab in zip(ax.get_xticks(), ax.get_xticklabels()) if x0 <= loc <= x1]
                 + [lab for loc, lab in zip(ax.get_yticks(), ax.get_yticklabels()) if y0 <= loc <= y1])
        for text in shown + [ax.title, ax.xaxis.label, ax.yaxis.label, fig._suptitle]:
            if text.get_text():
                box = text.get_window_extent(renderer)
                assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, text.get_text()


def test_figures_show_themselves_in_notebooks_and_animations_embed_a_gif(clouds):
    data, samples = clouds
    png = viz.plot_loss(np.arange(10), np.linspace(1, 0.1, 10))._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    anim = viz.animate_clouds([data, samples], ["t = 1", "t = 2"], panel_inches=1.5, dpi=40)
    assert anim._repr_html_().startswith('<img src="data:image/gif;base64,R0lGOD')   # "GIF8" in base64


def test_show_without_a_display_saves_a_file_and_says_where(clouds, capsys, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt
    monkeypatch.setattr(matplotlib, "rcParams", matplotlib.rcParams.copy())
    plt.switch_backend("agg")
    data, samples = clouds
    fig = viz.plot_samples(samples, data)
    assert viz.show(fig) is fig
    said = capsys.readouterr().out
    path = said.strip().rsplit(" ", 1)[-1]
    assert "no window can open here" in said and path.endswith(".png") and os.path.getsize(path) > 0
    os.remove(path)
    viz.show(viz.animate_clouds([data], None, panel_inches=1.5, dpi=40))
    path = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert path.endswith(".gif") and Image.open(path).format == "GIF"
    os.remove(path)


def test_plot_samples_svg_and_bad_suffix(tmp_path, clouds):
    data, samples = clouds
    viz.plot_samples(samples[:50], data[:50], tmp_path / "s.svg")
    assert b"<svg" in (tmp_path / "s.svg").read_bytes()[:1000]
    with pytest.raises(ValueError, match=r"must end with one of \['.png', '.pdf', '.svg'\]"):
        viz.plot_samples(samples, data, tmp_path / "s.jpeg")
    with pytest.raises(ValueError, match=r"samples must be a numeric array of shape \[N, 2\]"):
        viz.plot_samples(np.zeros((5, 3)), data, tmp_path / "s.png")


def test_plot_loss_writes_a_png_even_with_nan_steps(tmp_path):
    steps = np.arange(500)
    losses = 1.0 / (1.0 + steps) + 0.01
    losses[100] = np.nan
    viz.plot_loss(steps, losses, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="no finite values"):
        viz.plot_loss([0, 1], [np.nan, np.inf], tmp_path / "bad.png")


def test_moving_average_matches_naive_twin():
    y = np.random.default_rng(1).normal(size=23)
    for w in (1, 3, 5):
        h = w // 2
        want = [np.mean(y[max(0, i - h): i + h + 1]) for i in range(len(y))]
        np.testing.assert_allclose(viz.moving_average(y, w), want, rtol=1e-12)


def test_blurred_histogram_is_a_density_peaked_at_the_points():
    lims = ((-2.0, 2.0), (-1.0, 3.0))
    x = np.array([[1.0, 2.0]] * 10)
    d = viz.blurred_histogram(x, lims, bins=40, sigma_bins=1.0)       # [y, x]
    assert d.sum() * (4 / 40) * (4 / 40) == pytest.approx(1.0, abs=1e-3)
    iy, ix = np.unravel_index(np.argmax(d), d.shape)
    assert (ix, iy) in {(29, 29), (30, 30), (29, 30), (30, 29)}       # cell edges at 1.0 and 2.0


@pytest.mark.parametrize("density", [True, False])
def test_animate_clouds_has_one_frame_per_cloud(tmp_path, clouds, density):
    data, _ = clouds
    rng = np.random.default_rng(2)
    frames = np.stack([data * s + (1 - s) * rng.standard_normal(data.shape) for s in (0, .5, 1)])
    path = tmp_path / "evo.gif"
    anim = viz.animate_clouds(frames, ["t = 2", "t = 1", "t = 0"], path, density="histogram" if density else None,
                              reference=data, fps=10, hold_last=2.0)
    assert len(anim) == 3
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3
        assert im.size[0] > 1.5 * im.size[1] if density else im.size[0] <= im.size[1]
        im.seek(2)
        assert im.info["duration"] == 2000                             # last frame is held
    assert os.listdir(tmp_path) == ["evo.gif"]


def test_a_known_density_on_grid_points_lines_up_with_the_histogram(clouds):
    """A density evaluated on grid_points(lims, bins) and reshaped to [bins, bins] must use the same
    layout (y along rows) as blurred_histogram, or a true density would be drawn transposed."""
    data, _ = clouds
    lims, bins = ((-3, 3), (-3, 3)), 16
    grid = viz.grid_points(lims, bins)
    bump = np.exp(-0.5 * np.sum((grid - [1.0, 2.0]) ** 2, axis=1) / 0.01).reshape(bins, bins)   # peak at (1, 2)
    hist = viz.blurred_histogram(np.array([[1.0, 2.0]] * 5), lims, bins, sigma_bins=0.5)
    assert np.unravel_index(np.argmax(bump), bump.shape) == np.unravel_index(np.argmax(hist), hist.shape)
    anim = viz.animate_clouds([data], ["t = 1"], density=bump[None], density_title="true density q(x_t)",
                              lims=lims, bins=bins, panel_inches=1.5, dpi=40)
    assert len(anim) == 1


def test_animate_clouds_argument_errors(tmp_path, clouds):
    data, _ = clouds
    with pytest.raises(ValueError, match="labels has 1 entries, expected one per frame"):
        viz.animate_clouds([data, data], ["t = 0"], tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"must end with one of \['.gif'\]"):
        viz.animate_clouds([data], None, tmp_path / "a.png")
    with pytest.raises(ValueError, match="frames is empty"):
        viz.animate_clouds([], [], tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"density: expected shape \(1, 64, 64\)"):
        viz.animate_clouds([data], None, density=np.ones((2, 64, 64)))


def test_failed_render_keeps_the_old_picture(tmp_path, clouds, monkeypatch):
    data, samples = clouds
    path = tmp_path / "samples.png"
    viz.plot_samples(samples, data, path)
    before = path.read_bytes()

    def boom(self, *args, **kwargs):
        args[0].write(b"\x89PNG half an image")
        raise RuntimeError("simulated crash while rendering")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        viz.plot_samples(samples * 2, data, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["samples.png"]


def test_missing_matplotlib_says_how_to_install(tmp_path, clouds, monkeypatch):
    data, samples = clouds
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)                    # import now fails
    with pytest.raises(ImportError, match=r"pip install tinydiff\[examples\]"):
        viz.plot_samples(samples, data, tmp_path / "s.png")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install tinydiff\[examples\]"):
        viz.animate_clouds([data], None, tmp_path / "a.gif")
    assert os.listdir(tmp_path) == []


def test_square_limits_are_square_robust_and_hold_the_bulk():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 2)) * [1.0, 3.0] + [5.0, 0.0]
    x[0] = [1e6, -1e6]                                                # one runaway sample
    (x0, x1), (y0, y1) = viz.square_limits(x)
    assert x1 - x0 == pytest.approx(y1 - y0)                          # square view
    assert x1 < 100 and y0 > -100                                     # the outlier is ignored
    inside = (x[:, 0] > x0) & (x[:, 0] < x1) & (x[:, 1] > y0) & (x[:, 1] < y1)
    assert inside.mean() >= 0.99
    assert (x0 + x1) / 2 == pytest.approx(5.0, abs=0.3)
