"""Datasets of the trainer: CUT's unaligned ``trainA/trainB`` folders and a built-in synthetic pair.

Images are (3, H, W) float32 tensors in [-1, 1]. Decoding and bicubic resizing use Pillow; cropping
and flipping are done on tensors (no torchvision, docs/design.md §9). Every random choice of an item (the B
partner, crop positions, flips) comes from a ``torch.Generator`` seeded by the item's key, so an
epoch's batches depend only on (seed, epoch, position): resuming and data-loader workers cannot change
them (see :class:`EpochSampler`).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
#: ``--preprocess`` and ``--dataset_mode`` choices.
PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
DATASET_MODES = ("unaligned", "synthetic")


def list_images(folder: str, max_size=math.inf, what="folder") -> list[str]:
    """Sorted image files under ``folder`` (recursively), at most ``max_size``; errors name the folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what}: {folder} is not a folder")
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder, followlinks=True)
                   for f in files if f.lower().endswith(IMG_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"{what}: {folder} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return paths[:int(min(max_size, len(paths)))]


DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)   # what Pillow raises for a bad file
_NOTICED_MODES: set = set()   # image modes whose conversion to RGB was announced (once per process)


def load_image(path: str) -> Image.Image:
    """Decode ``path`` to an RGB PIL image; unreadable or corrupt files raise ValueError naming it. An
    image with alpha or a palette is converted with a one-time notice on stderr (alpha is dropped)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if (mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info) and mode not in _NOTICED_MODES:
                _NOTICED_MODES.add(mode)
                what = "a palette" if mode == "P" and "transparency" not in img.info else "alpha"
                print(f"qsattn: note: {path} has {what} ({mode}); such images are converted to RGB"
                      f"{', dropping the alpha channel' if what == 'alpha' else ''}", file=sys.stderr)
            return img.convert("RGB")
    except DECODE_ERRORS as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def unreadable_images(paths) -> list[tuple[str, str]]:
    """(path, reason) of each file in ``paths`` that Pillow cannot open and verify (format header and, for
    PNG, every chunk's checksum; pixel data is not decoded)."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.verify()
        except DECODE_ERRORS as e:
            bad.append((p, str(e) or type(e).__name__))
    return bad


def checked_images(paths: list[str], skip_bad: bool, what: str) -> list[str]:
    """``paths`` less the unreadable ones (:func:`unreadable_images`): with ``skip_bad`` they are dropped
    with a warning on stderr, else a ValueError names them; an empty result is a ValueError too."""
    bad = unreadable_images(paths)
    if not bad:
        return paths
    names = ", ".join(f"{p} ({why})" for p, why in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if not skip_bad:
        raise ValueError(f"{what}: {len(bad)} of {len(paths)} images cannot be read: {names}; remove them or pass "
                         "--skip_bad_images")
    print(f"qsattn: warning: {what}: skipping {len(bad)} unreadable images: {names}", file=sys.stderr)
    bad_set = {p for p, _ in bad}
    kept = [p for p in paths if p not in bad_set]
    if not kept:
        raise ValueError(f"{what}: none of its {len(paths)} images can be read")
    return kept


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def uint8_to_pil(u: torch.Tensor) -> Image.Image:
    """(3, H, W) uint8 -> RGB PIL image."""
    return Image.fromarray(u.permute(1, 2, 0).numpy(), "RGB")


def quantize(t: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any shape) -> uint8 on the CPU, clamped and rounded as a saved PNG holds them."""
    return t.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def dequantize(u: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1]."""
    return u.float().div(127.5).sub(1.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    return dequantize(pil_to_uint8(img))


def to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> RGB PIL image (values clamped, rounded)."""
    return uint8_to_pil(quantize(t))


def resize_for(img: Image.Image, preprocess: str, load_size: int, crop_size: int) -> Image.Image:
    """CUT's size step of ``get_transform`` (bicubic): ``resize_*`` to load_size x load_size,
    ``scale_width*`` to width load_size (height at least crop_size), then sides rounded to multiples of 4."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess: expected one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    if preprocess.startswith("resize"):
        img = img.resize((load_size, load_size), Image.BICUBIC)
    elif preprocess.startswith("scale_width"):
        w, h = img.size
        if not (w == load_size and h >= crop_size):
            img = img.resize((load_size, int(max(load_size * h / w, crop_size))), Image.BICUBIC)
    w, h = img.size
    w4, h4 = int(round(w / 4) * 4), int(round(h / 4) * 4)
    return img if (w4, h4) == (w, h) else img.resize((w4, h4), Image.BICUBIC)


def crop_flip(x: torch.Tensor, crop_size, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random ``crop_size`` crop (None: no crop; smaller images are kept whole) and a horizontal flip
    with probability 1/2 when ``flip``; (C, H, W) -> (C, h, w)."""
    if crop_size is not None:
        _, h, w = x.shape
        top = int(torch.randint(0, max(h - crop_size, 0) + 1, (1,), generator=gen))
        left = int(torch.randint(0, max(w - crop_size, 0) + 1, (1,), generator=gen))
        x = x[:, top:top + crop_size, left:left + crop_size]
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        x = x.flip(2)
    return x.contiguous()


def item_generator(*key: int) -> torch.Generator:
    """A generator seeded by a tuple of non-negative integers."""
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k) + 1) % (2 ** 63)
    return torch.Generator().manual_seed(seed)


class UnalignedDataset(torch.utils.data.Dataset):
    """CUT's unaligned dataset: ``<dataroot>/<phase>A`` and ``<phase>B``; length max(|A|, |B|).

    Item key (index, seed): A = A_paths[index % |A|]; B = B_paths[index % |B|] with
    ``serial_batches``, else a random one; each image resized (``preprocess``), randomly cropped to
    ``crop_size`` and flipped (unless ``no_flip``). From epoch ``n_epochs + 1`` on, load_size is
    crop_size, as CUT's fine-tuning phase. Every image is verified at construction
    (:func:`checked_images`): an unreadable one is an error, or is left out with ``skip_bad_images``.
    """

    def __init__(self, dataroot, phase="train", max_dataset_size=math.inf, preprocess="resize_and_crop",
                 load_size=286, crop_size=256, no_flip=False, serial_batches=False, skip_bad_images=False):
        if not os.path.isdir(dataroot):
            raise FileNotFoundError(f"dataroot: {dataroot} is not a folder; expected {phase}A/ and {phase}B/ in it")
        self.A_paths, self.B_paths = (
            checked_images(list_images(os.path.join(dataroot, phase + d), max_dataset_size, f"dataroot ({phase}{d})"),
                           skip_bad_images, f"dataroot ({phase}{d})") for d in "AB")
        self.preprocess, self.load_size, self.crop_size = preprocess, load_size, crop_size
        self.no_flip, self.serial_batches = no_flip, serial_batches
        resize_for(Image.new("RGB", (4, 4)), preprocess, load_size, crop_size)  # validates preprocess
        self.finetuning = False

    def __len__(self):
        return max(len(self.A_paths), len(self.B_paths))

    def _transform(self, path, gen):
        load = self.crop_size if self.finetuning else self.load_size
        x = to_tensor(resize_for(load_image(path), self.preprocess, load, self.crop_size))
        return crop_flip(x, self.crop_size if "crop" in self.preprocess else None, not self.no_flip, gen)

    def __getitem__(self, key):
        index, seed = key
        gen = torch.Generator().manual_seed(seed)
        a_path = self.A_paths[index % len(self.A_paths)]
        if self.serial_batches:
            b_path = self.B_paths[index % len(self.B_paths)]
        else:
            b_path = self.B_paths[int(torch.randint(0, len(self.B_paths), (1,), generator=gen))]
        return {"A": self._transform(a_path, gen), "B": self._transform(b_path, gen),
                "A_paths": a_path, "B_paths": b_path}


def _smooth_noise(gen, channels, size, cells):
    """(channels, size, size) smooth noise in about [-1, 1]: a random cells x cells grid, bicubic up."""
    grid = torch.rand(1, channels, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(-1, 1)


def _shape_mask(gen, yy, xx, centre: float, radius: tuple[float, float]):
    """A random shape (disc, ellipse, square or triangle) at a random position: (mask (H, W) bool, centre
    (cy, cx), radius r, kind 0..3); centre coordinates uniform in [-centre, centre], r in radius."""
    cy, cx = (torch.rand(2, generator=gen) * 2 * centre - centre).tolist()
    r = float(torch.rand((), generator=gen)) * (radius[1] - radius[0]) + radius[0]
    kind = int(torch.randint(0, 4, (1,), generator=gen))
    dy, dx = yy - cy, xx - cx
    if kind == 0:
        mask = dy ** 2 + dx ** 2 <= r ** 2
    elif kind == 1:
        mask = (dy / (0.6 * r)) ** 2 + (dx / r) ** 2 <= 1
    elif kind == 2:
        mask = (dy.abs() <= 0.8 * r) & (dx.abs() <= 0.8 * r)
    else:
        mask = (dy <= 0.7 * r) & (dy >= -r + 2 * dx.abs())
    return mask, (cy, cx), r, kind


def _stripes_item(gen, yy, xx, period_scale):
    """The ``stripes`` task: a plain-coloured shape on a tinted textured background -> the shape
    painted with dark/light stripes (random angle, period uniform in [0.075, 0.15] x ``period_scale``
    of the image width)."""
    size = yy.shape[0]
    tint = torch.rand(3, 1, 1, generator=gen) * 0.6 - 0.3
    background = (0.55 * _smooth_noise(gen, 3, size, 4) + 0.25 * _smooth_noise(gen, 1, size, 16) + tint).clamp(-1, 1)
    mask = _shape_mask(gen, yy, xx, 0.4, (0.3, 0.55))[0]
    colour = torch.rand(3, 1, 1, generator=gen) * 1.2 - 0.6
    angle = float(torch.rand((), generator=gen)) * math.pi
    period = (float(torch.rand((), generator=gen)) * 0.15 + 0.15) * period_scale
    phase = math.cos(angle) * xx + math.sin(angle) * yy
    stripes = torch.where(torch.sin(phase * 2 * math.pi / period) > 0, 0.9, -0.9).expand(3, -1, -1)
    a = torch.where(mask, colour.expand(3, size, size), background)
    b = torch.where(mask, stripes, background)
    return a, b, mask


def _recolour_item(gen, yy, xx, period_scale):
    """The ``recolour`` task: a warm shape (hue from red to yellow) with a grey inner mark, on a grey
    textured background -> the same image with the shape's red and blue channels swapped (red -> blue,
    orange -> azure, yellow -> cyan); the mark and the background, grey, are the same in A and B."""
    size = yy.shape[0]
    level = float(torch.rand((), generator=gen)) * 0.6 - 0.3
    background = (0.45 * _smooth_noise(gen, 1, size, 4) + 0.2 * _smooth_noise(gen, 1, size, 16) + level).clamp(-1, 1)
    mask, (cy, cx), r, kind = _shape_mask(gen, yy, xx, 0.35, (0.35, 0.6))
    hue, sat, val = torch.rand(3, generator=gen).tolist()
    sat, val = 0.75 + 0.25 * sat, 0.6 + 0.4 * val
    warm = torch.tensor([1.0, hue, 0.0]).view(3, 1, 1)          # red .. yellow at full saturation
    colour = 2 * val * (1 - sat + sat * warm) - 1                 # in [-1, 1]
    rho = r * (0.3 + 0.12 * float(torch.rand((), generator=gen)))
    my = cy + (0.15 * r if kind == 3 else 0.0)                   # the triangle's inner centre
    dy, dx = yy - my, xx - cx
    mark = (dy ** 2 + dx ** 2 <= rho ** 2) if bool(torch.rand((), generator=gen) < 0.5) else \
        (dy.abs() <= 0.8 * rho) & (dx.abs() <= 0.8 * rho)
    grey = float(torch.rand((), generator=gen)) * 0.3 + 0.55
    grey = grey if bool(torch.rand((), generator=gen) < 0.5) else -grey
    a = torch.where(mask, colour.expand(3, size, size), background.expand(3, size, size))
    a = torch.where(mark & mask, torch.full_like(a, grey), a)
    b = torch.where(mask & ~mark, a.flip(0), a)                  # red <-> blue on the shape
    return a, b, mask


SYNTHETIC_TASKS = {"recolour": _recolour_item, "stripes": _stripes_item}


def synthetic_pair(seed: int, index: int, size: int = 64, task: str = "recolour", period_scale: float = 1.0):
    """One item of a synthetic two-domain set; B is a deterministic function of the item (a paired
    ground truth for held-out evaluation; training stays unpaired).

    ``task``: ``recolour`` (warm shapes with a grey mark -> the same shapes in the matching cool colour,
    mark and background kept) or ``stripes`` (plain shapes -> striped shapes, a horse->zebra in
    miniature; ``period_scale`` multiplies the stripes' period and changes nothing else).
    Returns (A, B, mask): A and B (3, size, size) in [-1, 1], identical outside the object; mask
    (size, size) bool, True on the object (the mark included). All depends only on the arguments.
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task: expected one of {', '.join(SYNTHETIC_TASKS)}, got {task!r}")
    if not period_scale > 0:
        raise ValueError(f"period_scale: expected > 0, got {period_scale}")
    gen = item_generator(seed, index)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    a, b, mask = SYNTHETIC_TASKS[task](gen, yy, xx, period_scale)
    return a.contiguous(), b.contiguous(), mask


SYNTHETIC_TEST_OFFSET = 1_000_000  # test items are synthetic_pair(seed, SYNTHETIC_TEST_OFFSET + i)


def synthetic_test_indices(count: int) -> list[int]:
    """Item indices of the synthetic test split: ``count`` items disjoint from any training set
    (training uses indices below ``synthetic_size`` < 10^6)."""
    return list(range(SYNTHETIC_TEST_OFFSET, SYNTHETIC_TEST_OFFSET + count))


class SyntheticDataset(torch.utils.data.Dataset):
    """``--dataset_mode synthetic``: ``length`` items of :func:`synthetic_pair` drawn at ``load_size``,
    unpaired in training (A of item ``index``, B of a random item; the same item with
    ``serial_batches``), randomly cropped to ``crop_size`` and flipped like the folder dataset;
    ``task`` and ``period_scale`` as in :func:`synthetic_pair`."""

    def __init__(self, seed=0, length=100, load_size=72, crop_size=64, no_flip=False, serial_batches=False,
                 task="recolour", period_scale=1.0):
        if length < 1:
            raise ValueError(f"synthetic_size: expected >= 1, got {length}")
        if crop_size > load_size:
            raise ValueError(f"crop_size: {crop_size} exceeds load_size {load_size}")
        self.seed, self.length, self.load_size, self.crop_size = seed, length, load_size, crop_size
        self.no_flip, self.serial_batches, self.task, self.period_scale = no_flip, serial_batches, task, period_scale
        synthetic_pair(seed, 0, 4, task, period_scale)   # validates task and period_scale
        self.finetuning = False

    def __len__(self):
        return self.length

    def __getitem__(self, key):
        index, seed = key
        gen = torch.Generator().manual_seed(seed)
        j = index if self.serial_batches else int(torch.randint(0, self.length, (1,), generator=gen))
        a = synthetic_pair(self.seed, index % self.length, self.load_size, self.task, self.period_scale)[0]
        b = synthetic_pair(self.seed, j, self.load_size, self.task, self.period_scale)[1]
        return {"A": crop_flip(a, self.crop_size, not self.no_flip, gen),
                "B": crop_flip(b, self.crop_size, not self.no_flip, gen),
                "A_paths": f"synthetic/A/{index % self.length:05d}", "B_paths": f"synthetic/B/{j:05d}"}


class EpochSampler(torch.utils.data.Sampler):
    """Keys (index, item seed) of one epoch for one rank: a permutation of the dataset seeded by
    (seed, epoch) (in order with ``serial``), split round-robin over ``world`` ranks (padded by
    wrapping so every rank gets the same count), starting after the first ``skip`` keys."""

    def __init__(self, length, seed, epoch, rank=0, world=1, serial=False, skip=0):
        self.length, self.seed, self.epoch, self.rank, self.world = length, seed, epoch, rank, world
        self.serial, self.skip = serial, skip

    def keys(self):
        order = torch.arange(self.length) if self.serial else \
            torch.randperm(self.length, generator=item_generator(self.seed, self.epoch))
        per_rank = -(-self.length // self.world)
        order = order.repeat(-(-per_rank * self.world // self.length))[:per_rank * self.world]
        mine = order[self.rank::self.world].tolist()
        return [(i, int(item_generator(self.seed, self.epoch, self.rank, p, i).initial_seed()))
                for p, i in enumerate(mine)][self.skip:]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return max(-(-self.length // self.world) - self.skip, 0)
