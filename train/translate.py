"""``qsattn-translate``: translate images with a generator checkpoint (ours or CUT's latest_net_G.pth).

``--checkpoint`` is a generator file or an experiment folder; in a folder, ``--direction`` picks
CycleGAN's ``<epoch>_net_G_A.pth`` (AtoB, the default) or ``_G_B.pth`` (BtoA), else CUT's
``<epoch>_net_G.pth`` (AtoB only). The architecture is the run's ``opt.json`` beside the file when there
is one (ours), else it is read off the checkpoint's keys and shapes (ngf, number of residual blocks,
norm, anti-aliasing; CUT's files); no ``testB`` folder is needed.
Each input image is translated at its own size (rounded to a multiple of 4 with a bicubic resize, or at
``--load_size`` x ``--load_size``), resized back, and written to ``--output`` under the input's file name.
"""
from __future__ import annotations

import json
import os
import re
import sys

import torch
from PIL import Image

from .checkpoint import NonFiniteError, first_nonfinite, load_state_dict_file, net_path
from .cli import Parser, add_debug_flag, add_no_ema_flag, one_line_errors
from .data import IMG_EXTENSIONS, list_images, load_image, resize_for, to_image, to_tensor
from .device import pick_device
from .networks import GENERATOR_BLOCKS, ResnetGenerator, define_G


def infer_generator_options(sd: dict) -> list[dict]:
    """The :func:`.networks.define_G` arguments whose generators could have the keys of ``sd``: input/output
    channels, ngf and block count read off the shapes; the norm off the keys (``batch``: running stats;
    ``instance``: biased convs; ``none``: neither); every anti-aliasing combination."""
    if "model.1.weight" not in sd:
        raise ValueError("no key model.1.weight; not a ResNet generator state_dict of CUT's layout")
    ngf, input_nc = sd["model.1.weight"].shape[:2]
    last = max(int(m.group(1)) for k in sd for m in [re.match(r"model\.(\d+)\.weight$", k)] if m)
    n_blocks = len({k.split(".")[1] for k in sd if ".conv_block." in k})
    netG = next((name for name, n in GENERATOR_BLOCKS.items() if n == n_blocks), None)
    if netG is None:
        raise ValueError(f"{n_blocks} residual blocks; CUT's generators have {sorted(GENERATOR_BLOCKS.values())}")
    norm = ("batch" if any(k.endswith("running_mean") for k in sd) else
            "instance" if "model.1.bias" in sd else "none")
    return [dict(input_nc=input_nc, output_nc=sd[f"model.{last}.weight"].shape[0], ngf=ngf, netG=netG,
                 norm=norm, no_antialias=aa, no_antialias_up=aa_up) for aa in (False, True) for aa_up in (False, True)]


def options_of_run(opt: dict, generator: str) -> dict:
    """The :func:`.networks.define_G` arguments of generator ``G``, ``G_A`` or ``G_B`` of a run's
    ``opt.json`` (``G_B`` maps output_nc channels to input_nc)."""
    nc = (opt["input_nc"], opt["output_nc"])
    input_nc, output_nc = nc[::-1] if generator == "G_B" else nc
    return dict(input_nc=input_nc, output_nc=output_nc, ngf=opt["ngf"], netG=opt["netG"], norm=opt["normG"],
                no_antialias=opt["no_antialias"], no_antialias_up=opt["no_antialias_up"])


def generator_from_state_dict(sd: dict, opt: dict | None = None, generator: str = "G") -> ResnetGenerator:
    """Build the :class:`ResnetGenerator` of ``sd`` and load it (strict), in eval mode: with the run's
    options ``opt`` (its ``opt.json``) when given, else the one architecture of
    :func:`infer_generator_options` whose keys and shapes equal ``sd``'s. Raises ValueError."""
    candidates = [options_of_run(opt, generator)] if opt else infer_generator_options(sd)
    want = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    for kw in candidates:
        net = define_G(use_dropout=False, **kw)
        have = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        if have == want:
            net.load_state_dict(sd, strict=False)
            return net.eval()
    what = "the options in opt.json" if opt else "any anti-aliasing"
    raise ValueError(f"keys/shapes match no ResNet generator of {what} (ngf {candidates[0]['ngf']}, "
                     f"{candidates[0]['netG']}, norm {candidates[0]['norm']})")


def load_generator(path: str, direction: str | None = None, epoch="latest", ema: bool = True) -> ResnetGenerator:
    """The generator of ``--checkpoint`` ``path`` (a file or an experiment folder, see
    :func:`resolve_checkpoint`; ``ema``: its EMA weights where the folder has them), built from the
    ``opt.json`` beside it when there is one. Errors are ValueError / FileNotFoundError naming the file;
    weights that are not finite (a diverged run's) are refused (NonFiniteError)."""
    file = resolve_checkpoint(path, direction, epoch, ema)
    m = re.search(r"_net_(G_A|G_B|G)(?:_ema)?\.pth$", file)
    generator = m.group(1) if m else "G"
    opt_file = os.path.join(os.path.dirname(file), "opt.json")
    opt = None
    if m and os.path.isfile(opt_file):
        try:
            with open(opt_file) as f:
                opt = json.load(f)
            options_of_run(opt, generator)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint: cannot read the generator's options from {opt_file}: {e!r}") from e
    sd = load_state_dict_file(file)
    bad = first_nonfinite(sd)
    if bad:
        raise NonFiniteError(f"checkpoint: {file} holds non-finite weights ({bad}), from a run that diverged")
    try:
        return generator_from_state_dict(sd, opt, generator)
    except ValueError as e:
        raise ValueError(f"checkpoint: {file}: {e}") from e


GENERATORS = {"AtoB": "G_A", "BtoA": "G_B"}  # CycleGAN's generator of each direction


def resolve_checkpoint(path: str, direction: str | None = None, epoch="latest", ema: bool = True) -> str:
    """The generator file to use. A folder: ``<epoch>_net_<G_A|G_B>.pth`` by ``direction`` (None:
    AtoB) when present, else ``<epoch>_net_G.pth`` for AtoB; with ``ema``, the same name with ``_ema``
    (the EMA weights, --ema_decay) where the folder has it. A file: itself; a ``direction`` that its
    CycleGAN name (``*_net_G_A.pth`` / ``*_net_G_B.pth``) contradicts, or BtoA for any other file, is an
    error."""
    raw = _resolve_raw(path, direction, epoch)
    averaged = raw[:-len(".pth")] + "_ema.pth"
    return averaged if ema and os.path.isdir(path) and os.path.isfile(averaged) else raw


def _resolve_raw(path: str, direction: str | None, epoch) -> str:
    """:func:`resolve_checkpoint` without the EMA weights."""
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
        m = re.search(r"_net_(G_A|G_B)(?:_ema)?\.pth$", path)
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


def translate(net, paths, output_dir, device, batch_size=1, load_size=None) -> tuple[list[str], list[str]]:
    """Translate ``paths`` in batches of same-sized images into ``output_dir`` (file names kept; a name
    without an image extension gets ``.png``); returns (written files, skipped inputs). An input that
    cannot be decoded is skipped with a warning on stderr; the others are all written."""
    names = [os.path.basename(p) for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"input: several inputs are named {', '.join(twice)}; their outputs would collide")
    os.makedirs(output_dir, exist_ok=True)
    by_shape, skipped = {}, []
    for p in paths:
        try:
            img = load_image(p)
        except ValueError as e:
            print(f"qsattn-translate: warning: skipping {e}", file=sys.stderr)
            skipped.append(p)
            continue
        size = img.size
        img = img.resize((load_size, load_size), Image.BICUBIC) if load_size else resize_for(img, "none", 0, 0)
        x = to_tensor(img)
        by_shape.setdefault(tuple(x.shape), []).append((p, size, x))
    written = []
    with torch.no_grad():
        for group in by_shape.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i:i + batch_size]
                out = net(torch.stack([t for _, _, t in chunk]).to(device)).float().cpu()
                for (p, size, _), y in zip(chunk, out):
                    img = to_image(y)
                    img = img if img.size == size else img.resize(size, Image.BICUBIC)
                    name = os.path.basename(p)
                    dst = os.path.join(output_dir, name if name.lower().endswith(IMG_EXTENSIONS) else name + ".png")
                    img.save(dst)
                    written.append(dst)
    return written, skipped


def build_parser() -> Parser:
    p = Parser(prog="qsattn-translate", description="Translate images with a CUT / QS-Attn generator checkpoint.")
    p.add_argument("--checkpoint", required=True,
                   help="generator weights (*_net_G.pth, *_net_G_A.pth, ...; ours or CUT's) or an experiment folder")
    p.add_argument("--direction", default=None, choices=sorted(GENERATORS),
                   help="CycleGAN: AtoB uses G_A, BtoA G_B (picked in a folder, checked for a file; default AtoB)")
    p.add_argument("--epoch", default="latest", help="in a folder: which checkpoint, latest or an epoch number")
    add_no_ema_flag(p)
    p.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    p.add_argument("--output", required=True, help="output folder (one file per input, same name)")
    p.add_argument("--gpu_ids", default="auto", help="GPU id, -1 for CPU, auto: GPU 0 where CUDA is present")
    p.add_argument("--batch_size", type=int, default=1, help="images per forward pass (same-sized ones)")
    p.add_argument("--load_size", type=int, default=None,
                   help="resize inputs to this square size first (default: own size, multiple of 4)")
    add_debug_flag(p)
    return p


def main(argv=None) -> int:
    """Exit codes: 0 all written; 1 some inputs could not be read (the others are written); 2 a usage,
    path or checkpoint error (one line, nothing written)."""
    args = build_parser().parse_args(argv)

    def work():
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        device = pick_device(args.gpu_ids)
        paths = collect_inputs(args.input)
        net = load_generator(args.checkpoint, args.direction, args.epoch, not args.no_ema).to(device)
        written, skipped = translate(net, paths, args.output, device, args.batch_size, args.load_size)
        print(f"qsattn-translate: wrote {len(written)} images to {args.output}"
              + (f"; {len(skipped)} inputs could not be read and were skipped" if skipped else ""))
        return 1 if skipped else 0

    return one_line_errors("qsattn-translate", work, args.debug)


if __name__ == "__main__":
    sys.exit(main())
