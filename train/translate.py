"""``qsattn-translate``: translate images with a generator checkpoint (ours or CUT's latest_net_G.pth).

``--checkpoint`` is a generator file or an experiment folder; in a folder, ``--direction`` picks
CycleGAN's ``<epoch>_net_G_A.pth`` (AtoB, the default) or ``_G_B.pth`` (BtoA), else CUT's
``<epoch>_net_G.pth`` (AtoB only). The architecture (ngf, number of residual blocks, anti-aliasing,
norm) is read off the checkpoint's keys and shapes; no options file or ``testB`` folder is needed.
Each input image is translated at its own size (rounded to a multiple of 4 with a bicubic resize, or at
``--load_size`` x ``--load_size``), resized back, and written to ``--output`` under the input's file name.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import torch
from PIL import Image

from .checkpoint import load_state_dict_file, net_path
from .data import IMG_EXTENSIONS, list_images, load_image, resize_for, to_image, to_tensor
from .device import pick_device
from .networks import ResnetGenerator, get_norm_layer


def generator_from_state_dict(sd: dict) -> ResnetGenerator:
    """Build the :class:`ResnetGenerator` whose keys and shapes equal ``sd``'s, and load it."""
    if "model.1.weight" not in sd:
        raise ValueError("checkpoint: no key model.1.weight; not a ResNet generator state_dict of CUT's layout")
    ngf, input_nc = sd["model.1.weight"].shape[:2]
    last = max(int(m.group(1)) for k in sd for m in [re.match(r"model\.(\d+)\.weight$", k)] if m)
    output_nc = sd[f"model.{last}.weight"].shape[0]
    n_blocks = len({k.split(".")[1] for k in sd if ".conv_block." in k})
    norm = "batch" if any(k.endswith("running_mean") for k in sd) else "instance"
    want = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    for no_aa in (False, True):
        for no_aa_up in (False, True):
            net = ResnetGenerator(input_nc, output_nc, ngf, get_norm_layer(norm), False, n_blocks,
                                  no_antialias=no_aa, no_antialias_up=no_aa_up)
            have = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
            if have == want:
                net.load_state_dict(sd, strict=False)
                return net.eval()
    raise ValueError("checkpoint: keys/shapes match no ResNet generator (ngf "
                     f"{ngf}, {n_blocks} blocks, any anti-aliasing)")


GENERATORS = {"AtoB": "G_A", "BtoA": "G_B"}  # CycleGAN's generator of each direction


def resolve_checkpoint(path: str, direction: str | None = None, epoch="latest") -> str:
    """The generator file to use. A folder: ``<epoch>_net_<G_A|G_B>.pth`` by ``direction`` (None:
    AtoB) when present, else ``<epoch>_net_G.pth`` for AtoB. A file: itself; a ``direction`` that its
    CycleGAN name (``*_net_G_A.pth`` / ``*_net_G_B.pth``) contradicts, or BtoA for any other file,
    is an error."""
    if os.path.isdir(path):
        cycle, cut = (net_path(path, epoch, name) for name in (GENERATORS[direction or "AtoB"], "G"))
        if os.path.isfile(cycle):
            return cycle
        if not os.path.isfile(cut):
            raise FileNotFoundError(f"checkpoint: {path} has neither {os.path.basename(cycle)} nor "
                                    f"{os.path.basename(cut)}")
        if direction == "BtoA":
            raise ValueError(f"checkpoint: {path} holds CUT's {os.path.basename(cut)}, which translates A to B "
                             "only; --direction BtoA needs CycleGAN's _net_G_B.pth")
        return cut
    if direction is not None:
        m = re.search(r"_net_(G_A|G_B)\.pth$", path)
        if (m.group(1) if m else "G_A") != GENERATORS[direction]:  # any other generator file maps A to B
            what = f"CycleGAN's {m.group(1)}" if m else "a generator for A to B"
            raise ValueError(f"checkpoint: {path} is {what}, not the --direction {direction} generator "
                             f"({GENERATORS[direction]}); pass that file or the experiment folder")
    return path


def collect_inputs(inputs) -> list[str]:
    """Files and folders (their images, recursively) -> the list of image paths."""
    paths = []
    for p in inputs:
        if os.path.isdir(p):
            paths += list_images(p, what="input")
        elif os.path.isfile(p):
            paths.append(p)
        else:
            raise FileNotFoundError(f"input: {p} does not exist")
    return paths


def translate(net, paths, output_dir, device, batch_size=1, load_size=None) -> list[str]:
    """Translate ``paths`` in batches of same-sized images; returns the written files."""
    os.makedirs(output_dir, exist_ok=True)
    items = []
    for p in paths:
        img = load_image(p)
        size = img.size
        img = img.resize((load_size, load_size), Image.BICUBIC) if load_size else resize_for(img, "none", 0, 0)
        items.append((p, size, to_tensor(img)))
    written, names = [], set()
    by_shape = {}
    for it in items:
        by_shape.setdefault(tuple(it[2].shape), []).append(it)
    with torch.no_grad():
        for group in by_shape.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i:i + batch_size]
                out = net(torch.stack([t for _, _, t in chunk]).to(device)).float().cpu()
                for (p, size, _), y in zip(chunk, out):
                    img = to_image(y)
                    img = img if img.size == size else img.resize(size, Image.BICUBIC)
                    name = os.path.basename(p)
                    if name in names:
                        raise ValueError(f"input: two inputs are named {name}; outputs would collide")
                    names.add(name)
                    dst = os.path.join(output_dir, name)
                    if not name.lower().endswith(IMG_EXTENSIONS):
                        dst += ".png"
                    img.save(dst)
                    written.append(dst)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qsattn-translate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Translate images with a CUT / QS-Attn generator checkpoint.")
    p.add_argument("--checkpoint", required=True,
                   help="generator weights (*_net_G.pth, *_net_G_A.pth, ...; ours or CUT's) or an experiment folder")
    p.add_argument("--direction", default=None, choices=sorted(GENERATORS),
                   help="CycleGAN: AtoB uses G_A, BtoA G_B (picked in a folder, checked for a file; default AtoB)")
    p.add_argument("--epoch", default="latest", help="in a folder: which checkpoint, latest or an epoch number")
    p.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    p.add_argument("--output", required=True, help="output folder (one file per input, same name)")
    p.add_argument("--gpu_ids", default="-1", help="GPU id, or -1 for CPU")
    p.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-sized ones)")
    p.add_argument("--load_size", type=int, default=None,
                   help="resize inputs to this square size first (default: own size, multiple of 4)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    try:
        device = pick_device(args.gpu_ids)
    except ValueError as e:
        p.error(str(e))
    net = generator_from_state_dict(load_state_dict_file(resolve_checkpoint(args.checkpoint, args.direction,
                                                                            args.epoch))).to(device)
    written = translate(net, collect_inputs(args.input), args.output, device, args.batch_size, args.load_size)
    print(f"qsattn-translate: wrote {len(written)} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
