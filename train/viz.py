"""PNG outputs of the trainer, drawn with Pillow: sample grids and the loss-curve plot."""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

from .data import to_image

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))


def _save_png(img: Image.Image, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}.png"
    img.save(tmp)
    os.replace(tmp, path)


def tile_scale(h: int, w: int, min_tile: int) -> int:
    """The whole-number upscaling that makes an h x w tile at least ``min_tile`` px on its shorter side."""
    return max(1, -(-min_tile // min(h, w)))


def save_grid(columns, path: str, labels=None, pad: int = 2, min_tile: int = 128) -> None:
    """One row per image of the batch, one column per tensor of ``columns`` (each (B, 3, H, W) in
    [-1, 1], e.g. real A, fake B, real B, identity B), tiles upscaled by nearest neighbour to at least
    ``min_tile`` px (:func:`tile_scale`), under a header row naming the columns (``labels``), written to
    ``path`` as PNG."""
    b, _, h, w = columns[0].shape
    s = tile_scale(h, w, min_tile)
    th, tw = h * s, w * s
    head = 20 if labels else 0
    grid = Image.new("RGB", (len(columns) * (tw + pad) + pad, head + b * (th + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, col in enumerate(columns):
        if labels:
            draw.text((pad + j * (tw + pad) + 4, 4), labels[j], fill=(0, 0, 0), font=ImageFont.load_default(13))
        for i in range(b):
            grid.paste(to_image(col[i]).resize((tw, th), Image.NEAREST), (pad + j * (tw + pad), head + pad + i * (th + pad)))
    _save_png(grid, path)


def plot_losses(records, path: str, size=(800, 450)) -> None:
    """Loss curves (x: step, y: loss, one coloured line per loss name) of ``records`` (dicts with a
    ``step`` and float losses under ``losses``) as a PNG with axes, ticks and a legend."""
    width, height = size
    left, right, top, bottom = 60, 130, 20, 40
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    names = sorted({n for r in records for n in r["losses"]})
    steps = [r["step"] for r in records]
    values = [v for r in records for v in r["losses"].values()]
    if not records or not values:
        draw.text((left, top), "no losses yet", fill=(0, 0, 0))
        _save_png(img, path)
        return
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(0.0, min(values)), max(values) * 1.05 + 1e-12
    pw, ph = width - left - right, height - top - bottom

    def xy(step, v):
        return left + (step - x0) / (x1 - x0) * pw, top + (1 - (v - y0) / (y1 - y0)) * ph

    draw.rectangle((left, top, left + pw, top + ph), outline=(0, 0, 0))
    for t in range(5):
        v = y0 + (y1 - y0) * t / 4
        y = xy(x0, v)[1]
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.text((4, y - 6), f"{v:.3g}", fill=(0, 0, 0))
        s = x0 + (x1 - x0) * t / 4
        x = xy(s, y0)[0]
        draw.line((x, top + ph, x, top + ph + 4), fill=(0, 0, 0))
        draw.text((x - 10, top + ph + 8), f"{s:.0f}", fill=(0, 0, 0))
    draw.text((left + pw // 2 - 10, height - 16), "step", fill=(0, 0, 0))
    for k, name in enumerate(names):
        colour = COLOURS[k % len(COLOURS)]
        pts = [xy(r["step"], r["losses"][name]) for r in records if name in r["losses"]]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        elif pts:
            draw.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=colour)
        ly = top + 16 * k
        draw.line((left + pw + 10, ly + 6, left + pw + 30, ly + 6), fill=colour, width=3)
        draw.text((left + pw + 36, ly), name, fill=(0, 0, 0))
    _save_png(img, path)
