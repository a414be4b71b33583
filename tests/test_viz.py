"""train/viz.py: the sample grid's layout and the Pillow loss plot."""
import numpy as np
import torch
from PIL import Image

from qsattn_fast.train.data import to_image
from qsattn_fast.train.viz import COLOURS, plot_losses, save_grid


def test_grid_places_each_image(tmp_path):
    cols = [torch.rand(3, 3, 10, 7) * 2 - 1 for _ in range(4)]
    path = tmp_path / "g.png"
    save_grid(cols, str(path), pad=2, min_tile=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 12 + 2, 4 * 9 + 2, 3)
    for j in range(4):
        for i in range(3):
            tile = grid[2 + i * 12: 2 + i * 12 + 10, 2 + j * 9: 2 + j * 9 + 7]
            assert np.array_equal(tile, np.asarray(to_image(cols[j][i])))
    assert (grid[0] == 255).all()  # white gap


def test_grid_upscales_tiles_and_labels_columns(tmp_path):
    """Tiles of 48 px become 144 px (x3, nearest: each pixel a 3x3 block); the header row holds text."""
    cols = [torch.rand(2, 3, 48, 48) * 2 - 1 for _ in range(3)]
    path = tmp_path / "g.png"
    save_grid(cols, str(path), labels=["real A", "fake B", "real B"], pad=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (20 + 2 * 146 + 2, 3 * 146 + 2, 3)
    tile = grid[22 + 146: 22 + 146 + 144, 2 + 146: 2 + 146 + 144]              # row 1, column 1
    assert np.array_equal(tile[::3, ::3], np.asarray(to_image(cols[1][1])))
    assert np.array_equal(tile[1::3, 2::3], tile[::3, ::3])
    header = grid[:20, 2:146]
    assert (header < 128).any() and (header == 255).mean() > 0.5              # dark text on white


def test_loss_plot_draws_every_loss(tmp_path):
    records = [{"step": s, "losses": {"G": 3.0 - 0.1 * s, "D_real": 0.5 + 0.01 * s}} for s in range(1, 30)]
    path = tmp_path / "p.png"
    plot_losses(records, str(path))
    img = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    present = {tuple(c) for c in np.unique(img, axis=0)}
    assert COLOURS[0] in present and COLOURS[1] in present  # one colour per loss (sorted names)
    plot_losses([], str(tmp_path / "empty.png"))
    assert Image.open(tmp_path / "empty.png").size == (800, 450)
