"""Sliced Wasserstein distance (SWD) between two image sets, the protocol of Karras et al. (ProGAN,
2018) that the QS-Attn paper reports (Rabin et al.'s sliced Wasserstein on Laplacian-pyramid patches).

For square images of side S (all the same; :mod:`.evaluation` resizes them), levels at resolutions
S, S/2, ... down to 16: a Laplacian pyramid (5x5 binomial filter [1 4 6 4 1]^2 / 256, mirror borders,
as ``cv2.pyrDown/pyrUp``; the last level is the low-pass image). From every image and level, 128
random 7x7 neighbourhoods (centres drawn uniformly at least 3 px inside) are 3x7x7 = 147-dimensional
descriptors; each set's descriptors of a level are normalised per colour channel (mean 0, std 1
over the set). The distance of a level: 4 repeats of 128 random unit directions; the descriptors of
both sets are projected, sorted, and the mean absolute difference of the sorted projections is the
1-D Wasserstein-1 distance; averaged over directions and repeats, times 10^3. Reported: each level
and their mean (the paper's number).

Determinism: every random draw comes from ``torch.Generator`` s seeded by ``seed``: each set's patch
positions from its own generators, one per level, seeded by ``seed`` and the level (so the real
descriptors depend neither on the fake set nor on the batching, and identical sets give exactly 0),
the directions from ``seed + 1``. When the sets differ in
size, the larger one's descriptors are subsampled (seeded) to the smaller count.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

NHOOD = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RESOLUTION = 16

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_GAUSS = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0


def resolutions(size: int) -> list[int]:
    """The pyramid's resolutions for side ``size``: size, size // 2, ... while >= 16."""
    if size < MIN_RESOLUTION:
        raise ValueError(f"SWD needs images of at least {MIN_RESOLUTION} px, got {size}")
    out = []
    while size >= MIN_RESOLUTION:
        out.append(size)
        size //= 2
    return out


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) filtered by the 5x5 binomial kernel (times ``gain``) with mirror (reflect) borders."""
    c = x.shape[1]
    w = (_GAUSS * gain).to(x).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=c)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(B, C, H, W) float -> ``levels`` band-pass images, finest first; the last is the low-pass."""
    pyr = [x]
    for _ in range(1, levels):
        low = _blur(pyr[-1])[:, :, ::2, ::2]
        up = torch.zeros_like(pyr[-1])
        up[:, :, ::2, ::2] = low
        pyr[-1] = pyr[-1] - _blur(up, 4.0)
        pyr.append(low)
    return pyr


def patch_descriptors(level: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) -> (B * 128, 3, 7, 7): random 7x7 neighbourhoods, centres uniform in [3, H - 4] x
    [3, W - 4]; image b's centres are the b-th (2, 128) block of uniform draws, so splitting a set into
    batches differently does not change them."""
    b, _, h, w = level.shape
    r = NHOOD // 2
    u = torch.rand(b, 2, NHOODS_PER_IMAGE, generator=gen, dtype=torch.float64)
    ys = (u[:, 0] * (h - 2 * r)).long()
    xs = (u[:, 1] * (w - 2 * r)).long()
    windows = level.unfold(2, NHOOD, 1).unfold(3, NHOOD, 1)          # (B, 3, H-6, W-6, 7, 7), a view
    bi = torch.arange(b).unsqueeze(1).expand_as(ys)
    return windows[bi.reshape(-1), :, ys.reshape(-1), xs.reshape(-1)]


def collect_descriptors(batches: Iterable[torch.Tensor], seed: int) -> dict[int, torch.Tensor]:
    """uint8 or float batches (B, 3, S, S) of one set -> {resolution: the normalised (n, 147) descriptors}."""
    gens = None
    per_level = None
    size = None
    for batch in batches:
        if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
            raise ValueError(f"SWD: expected square RGB batches (B, 3, S, S), got {tuple(batch.shape)}")
        if size is None:
            size = batch.shape[2]
            per_level = [[] for _ in resolutions(size)]
            gens = [torch.Generator().manual_seed(seed * 64 + i) for i in range(len(per_level))]
        elif batch.shape[2] != size:
            raise ValueError(f"SWD: all images must have one size, got {size} and {batch.shape[2]}")
        for lst, gen, level in zip(per_level, gens, laplacian_pyramid(batch.float(), len(per_level))):
            lst.append(patch_descriptors(level, gen))
    if per_level is None:
        raise ValueError("SWD: an image set is empty")
    out = {}
    for res, lst in zip(resolutions(size), per_level):
        d = torch.cat(lst).double()
        d = (d - d.mean((0, 2, 3), keepdim=True)) / d.std((0, 2, 3), unbiased=False, keepdim=True).clamp_min(1e-12)
        out[res] = d.reshape(d.shape[0], -1).float()
    return out


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator) -> float:
    """Mean over 4 x 128 random unit directions of W1 between the projections of (n, d) sets a and b."""
    dists = []
    for _ in range(DIR_REPEATS):
        dirs = torch.randn(a.shape[1], DIRS_PER_REPEAT, generator=gen)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa, _ = (a @ dirs).sort(0)
        pb, _ = (b @ dirs).sort(0)
        dists.append((pa - pb).abs().mean())
    return float(torch.stack(dists).mean())


def swd(real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], seed: int = 0) -> dict:
    """SWD x 10^3 of two sets of square images given as batches; returns {"levels": {resolution: swd},
    "mean": the average over levels}."""
    dr = collect_descriptors(real, seed)
    df = collect_descriptors(fake, seed)
    if dr.keys() != df.keys():
        raise ValueError(f"SWD: the real and fake images differ in size ({max(dr)} vs {max(df)} px)")
    gen = torch.Generator().manual_seed(seed + 1)
    levels = {}
    for res, a in dr.items():
        b = df[res]
        n = min(a.shape[0], b.shape[0])
        a, b = (x[torch.randperm(x.shape[0], generator=gen)[:n]] if x.shape[0] > n else x for x in (a, b))
        levels[res] = 1e3 * sliced_wasserstein(a, b, gen)
    return {"levels": levels, "mean": sum(levels.values()) / len(levels)}
