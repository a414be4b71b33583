"""Pictures of the trainer and of QS-Attn: sample grids (Pillow), the loss curves and the selection figure
(matplotlib), and ``qsattn-viz``, which draws the selection figure of a generator checkpoint for images.

The selection figure is the paper's Figure 2 for any image: per QS layer, the image with the k queries
QS-Attn selects marked, and the row-entropy heat map of the layer's source attention (for
``local_global`` both the local entropy, which selects, and the global one), computed by the package's
own backends, so that every layer runs at full resolution.
"""
from __future__ import annotations

import json
import math
import os

import torch
from PIL import Image, ImageDraw, ImageFont

from qsattn_fast.plots import figure, save_figure, save_image

from .data import to_image


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
            grid.paste(to_image(col[i]).resize((tw, th), Image.NEAREST),
                       (pad + j * (tw + pad), head + pad + i * (th + pad)))
    save_image(grid, path)


# ---------------------------------------------------------------- loss curves
def loss_families(names) -> dict[str, list[str]]:
    """Loss names grouped by family, the part before the first underscore (G_GAN and G: G; D_real and
    D_fake: D; NCE and NCE_Y: NCE; CycleGAN's cycle_A and cycle_B: cycle), families and names sorted."""
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        out.setdefault(name.split("_")[0], []).append(name)
    return dict(sorted(out.items()))


def smooth(values, weight: float) -> list[float]:
    """Exponential moving average with debiasing (as TensorBoard's smoothing): s_t = sum_{i<=t}
    weight^(t-i) (1 - weight) v_i / (1 - weight^(t+1))."""
    out, acc = [], 0.0
    for t, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** (t + 1)))
    return out


def plot_losses(records, path: str) -> None:
    """Loss curves of ``records`` (dicts with a ``step`` and float losses under ``losses``), one panel per
    loss family (:func:`loss_families`): each loss raw (thin) and smoothed (:func:`smooth`, over about a
    twentieth of the points), against the step, as a PNG. Non-finite values (steps skipped under
    ``--nonfinite skip``) are left out."""
    families = loss_families({n for r in records for n in r["losses"]})
    cols = min(3, max(1, len(families)))
    fig, axes = figure(max(1, math.ceil(len(families) / cols)), cols)
    for ax in axes.flat[len(families):]:
        ax.set_axis_off()
    if not families:
        axes[0, 0].text(0.5, 0.5, "no losses yet", ha="center", va="center", transform=axes[0, 0].transAxes)
    for ax, (family, names) in zip(axes.flat, families.items()):
        for k, name in enumerate(names):
            pts = [(r["step"], r["losses"][name]) for r in records if math.isfinite(r["losses"].get(name, math.nan))]
            steps, values = [p[0] for p in pts], [p[1] for p in pts]
            colour = f"C{k}"
            ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(steps, smooth(values, 1 - 1 / max(1.0, len(values) / 20)), color=colour, linewidth=1.8, label=name)
        ax.set_title(f"{family} losses")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)


# ---------------------------------------------------------------- QS-Attn's selection
@torch.no_grad()
def selection_maps(net, image: torch.Tensor, layers, mode: str = "global", k: int = 256, window: int = 7,
                   backend: str = "auto") -> dict:
    """QS-Attn's selection on ``image`` (1, 3, H, W) in [-1, 1] through generator ``net``'s encoder, per
    NCE layer id of ``layers``: {"shape": (h, w), "entropy": {"global"/"local": (h*w,) row entropies},
    "selected_by": the entropy that selects ("local" for local_global), "picked": the min(k, h*w)
    lowest-entropy rows (flat indices n = y*w + x, ascending entropy)}."""
    import qsattn_fast as qs
    from qsattn_fast.ops import split_mode
    sel = split_mode(mode)[0]
    feats = net(image, list(layers), encode_only=True)
    out = {}
    for layer, f in zip(layers, feats):
        f = f.float()
        ent = {sel: qs.entropy(f, sel, window, backend=backend, check_finite=False)[0]}
        if mode == "local_global":
            ent["global"] = qs.entropy(f, "global", window, backend=backend, check_finite=False)[0]
        picked = qs.select(ent[sel][None], min(k, f.shape[2] * f.shape[3]), backend=backend)[0]
        out[layer] = {"shape": tuple(f.shape[2:]), "entropy": {n: e.cpu() for n, e in ent.items()},
                      "selected_by": sel, "picked": picked.cpu()}
    return out


def plot_selection(image: torch.Tensor, maps: dict, path: str, title: str | None = None):
    """The selection figure of :func:`selection_maps`' ``maps`` for ``image`` (3, H, W) in [-1, 1]: a row
    per layer, the image with the selected queries marked, then each entropy as a heat map over the image
    (colour bar in nats; the selecting one with the queries marked too), each panel titled with the layer,
    N and k; written to ``path`` as PNG. Returns the matplotlib Figure."""
    img = (image.detach().float().cpu().clamp(-1, 1) + 1) / 2
    H, W = img.shape[1:]
    cols = 1 + max(len(m["entropy"]) for m in maps.values())
    fig, axes = figure(len(maps), cols, panel=(4.2, 3.6))
    if title:
        fig.suptitle(title)
    for row, (layer, m) in zip(axes, maps.items()):
        h, w = m["shape"]
        n, k = h * w, len(m["picked"])
        ys, xs = (m["picked"] // w).numpy(), (m["picked"] % w).numpy()
        px, py = (xs + 0.5) * W / w, (ys + 0.5) * H / h      # centres of the selected positions, in pixels

        size = min(14.0, max(2.0, (200 / max(h, w)) ** 2))      # a circle about a cell wide in a ~280 px panel

        circles = dict(x=px, y=py, s=size, facecolors="none", edgecolors="cyan", linewidths=0.9 if size > 6 else 0.6)

        row[0].imshow(img.permute(1, 2, 0).numpy(), extent=(0, W, H, 0))
        row[0].scatter(**circles)
        row[0].set_title(f"layer {layer}: the k = {k} of N = {h}x{w} = {n}\n"
                         f"queries of lowest {m['selected_by']} entropy", fontsize="medium")
        for ax, (name, e) in zip(row[1:], m["entropy"].items()):
            im = ax.imshow(e.reshape(h, w).double().numpy(), cmap="magma", extent=(0, W, H, 0), interpolation="nearest")
            if name == m["selected_by"]:
                ax.scatter(**circles)
            fig.colorbar(im, ax=ax, shrink=0.85, label="row entropy (nats)")
            ax.set_title(f"layer {layer}: {name} entropy, N = {n}, k = {k}", fontsize="medium")
        for ax in row[1 + len(m["entropy"]):]:
            ax.set_axis_off()
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, path)
    return fig


def run_selection_options(checkpoint: str) -> dict:
    """What a run's ``opt.json`` (beside the checkpoint's generator) says of QS-Attn: NCE layers, QS
    layers (the last two NCE layers when it names none), mode, window and k; CUT's defaults without it."""
    from .translate import resolve_checkpoint
    folder = os.path.dirname(resolve_checkpoint(checkpoint))
    opt_file = os.path.join(folder, "opt.json")
    opt = {}
    if os.path.isfile(opt_file):
        with open(opt_file) as f:
            opt = json.load(f)
    nce = list(opt.get("nce_layers_list") or [0, 4, 8, 12, 16])
    return {"nce_layers": nce, "qs_layers": list(opt.get("qs_layers_list") or nce[-2:]),
            "mode": opt.get("qs_mode", "global"), "window": opt.get("qs_window", 7), "k": opt.get("num_patches", 256)}


def build_parser():
    from qsattn_fast import BACKENDS, OP_MODES

    from .cli import Parser, add_debug_flag, add_no_ema_flag
    p = Parser(prog="qsattn-viz", description="QS-Attn's selection (the paper's Figure 2) for images: per QS "
               "layer, the row-entropy heat map and the k lowest-entropy queries, through a generator's encoder.")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", default=os.path.join("checkpoints", "demo"),
                   help="generator file or experiment folder (ours or CUT's; default: the demo's)")
    p.add_argument("--layers", help="NCE layer ids, e.g. 12,16, or all (default: the run's QS layers)")
    p.add_argument("--mode", choices=OP_MODES["qsattn"], help="default: the run's qs_mode")
    p.add_argument("--k", type=int, help="queries to select (default: the run's num_patches)")
    p.add_argument("--window", type=int, help="local window (default: the run's qs_window)")
    p.add_argument("--size", type=int, default=256, help="images are resized to size x size (a multiple of 4)")
    p.add_argument("--output", default=os.path.join("results", "selection"), help="folder for <name>_selection.png")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    p.add_argument("--gpu_ids", default="auto", help="auto (a GPU if there is one), -1 (CPU) or a GPU id")
    add_no_ema_flag(p)
    add_debug_flag(p)
    return p


def main(argv=None) -> int:
    from .cli import one_line_errors
    from .data import load_image, to_tensor
    from .device import pick_device
    from .translate import collect_inputs, load_generator
    p = build_parser()
    a = p.parse_args(argv)
    if a.size % 4 or a.size < 8:
        p.error(f"--size {a.size}: expected a multiple of 4, at least 8")
    if a.k is not None and a.k < 1:
        p.error(f"--k {a.k}: expected at least 1")
    if a.layers is not None and a.layers.strip() != "all" and not all(x.strip().isdigit() for x in a.layers.split(",")):
        p.error(f"--layers {a.layers!r}: expected comma-separated layer ids or all")

    def work() -> int:
        run = run_selection_options(a.checkpoint)
        layers = sorted(set(run["qs_layers"] if a.layers is None else run["nce_layers"] if a.layers.strip() == "all"
                            else [int(x) for x in a.layers.split(",")]))
        mode, k, window = a.mode or run["mode"], a.k or run["k"], a.window or run["window"]
        device = pick_device(a.gpu_ids)
        net = load_generator(a.checkpoint, ema=not a.no_ema).to(device)
        bad = [i for i in layers if not 0 <= i < len(net.model)]
        if bad:
            raise ValueError(f"--layers {bad}: the generator has layers 0..{len(net.model) - 1}")
        paths = collect_inputs(a.inputs)
        os.makedirs(a.output, exist_ok=True)
        for i, path in enumerate(paths):
            x = to_tensor(load_image(path).resize((a.size, a.size), Image.BICUBIC))[None].to(device)
            maps = selection_maps(net, x, layers, mode, k, window, a.backend)
            out = os.path.join(a.output, os.path.splitext(os.path.basename(path))[0] + "_selection.png")
            plot_selection(x[0], maps, out, title=f"{os.path.basename(path)}: QS-Attn's selection ({mode})")
            print(f"[{i + 1}/{len(paths)}] {out}", flush=True)
        return 0

    return one_line_errors("qsattn-viz", work, a.debug)


if __name__ == "__main__":
    raise SystemExit(main())
