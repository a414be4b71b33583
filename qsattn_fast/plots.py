"""Plot helpers shared by the trainer's pictures (train/viz.py) and the benchmarks' figures: matplotlib
figures without pyplot, PNGs written atomically, a results JSON's PNG redrawn. matplotlib is imported
on first use, never by ``import qsattn_fast``."""
from __future__ import annotations

import json
import os


def _write_atomically(path: str, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed to it: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}.png"
    write(tmp)
    os.replace(tmp, path)


def save_image(img, path: str) -> None:
    """Writes a PIL image to ``path`` as PNG, atomically."""
    _write_atomically(path, lambda tmp: img.save(tmp, format="png"))


def save_figure(fig, path: str) -> None:
    """Writes a matplotlib figure to ``path`` as PNG at 100 dpi, atomically."""
    _write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def figure(rows: int, cols: int, panel=(4.0, 3.0)):
    """A matplotlib Figure of rows x cols panels of ``panel`` inches, without pyplot (no global state, no
    display), and its (rows, cols) array of axes."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def redraw(json_path: str, draw) -> str:
    """The PNG beside a results JSON (same name, .png), drawn anew by ``draw(data, png_path)``; its path."""
    with open(json_path) as f:
        data = json.load(f)
    png = os.path.splitext(json_path)[0] + ".png"
    draw(data, png)
    return png
