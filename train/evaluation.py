"""Evaluation, the library behind ``qsattn-eval`` (its command line, :mod:`.eval_cli`) and ``qsattn-train --eval_freq``
(:class:`TestSetEvaluator`): FID, KID and SWD between real and translated images, and the synthetic
task's own measures. Errors are exceptions (ValueError, FileNotFoundError,
:class:`.inception.InceptionUnavailable`); only the command lines turn them into exit codes.
The protocol (also in docs/evaluation.md):

* Images: every file with an image extension under the folder (recursively, sorted by path; the first
  ``--max_images``), decoded by Pillow to 8-bit RGB. Use lossless files (PNG): JPEG changes FID, and a
  warning is printed when a fake folder holds JPEGs.
* FID and KID: the uint8 images, at their own size, go through the FID Inception-v3 of
  :mod:`.inception` (torch-fidelity's port of the TF graph: TF-1 bilinear resize to 299, pool_3
  features). FID is the Fréchet distance of the two Gaussian fits (float64); KID the mean (and std) of
  the unbiased cubic-kernel MMD^2 over 100 random subset pairs of min(1000, n_real, n_fake) images,
  seeded (:mod:`.metrics`).
* SWD: images resized to ``--swd_size`` (Pillow bicubic) when not of that size, then the ProGAN
  protocol of :mod:`.swd` (x 10^3, the mean over the pyramid levels), seeded.
* ``--dataset_mode synthetic``: the fake images are translations of the synthetic test split (written
  by ``--write_synthetic DIR``: ``testA/`` and ``testB/``, files ``<item index>.png``); the object masks
  are regenerated from the indices (with the run's ``--synthetic_task``), and
  :func:`.metrics.synthetic_measures` gives the task's measures (``recolour``: conformity, shape_iou,
  detail_error, background_error; ``stripes``: stripe_energy, background_error). SWD compares with the
  split's ``testB`` images unless ``--real`` is given.

Papers (CUT, QS-Attn) report the best epoch's numbers, not the last; ``qsattn-train --eval_freq``
records both (see :mod:`.trainer`).
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from . import metrics as M
from .data import (
    dequantize,
    list_images,
    load_image,
    pil_to_uint8,
    quantize,
    synthetic_pair,
    synthetic_test_indices,
    to_image,
    uint8_to_pil,
)
from .device import pick_device
from .inception import InceptionUnavailable, find_weights, load_inception
from .swd import swd

METRICS = ("fid", "kid", "swd", "synthetic")
JPEG = (".jpg", ".jpeg")


def to_uint8(item) -> torch.Tensor:
    """An image path, or a uint8 (3, H, W) tensor -> uint8 (3, H, W)."""
    if isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.dim() != 3 or item.shape[0] != 3:
            raise ValueError(f"images: expected uint8 (3, H, W) tensors, got {item.dtype} {tuple(item.shape)}")
        return item
    return pil_to_uint8(load_image(item))


def resized(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> (3, size, size), Pillow bicubic (unchanged when already that size)."""
    if img.shape[1:] == (size, size):
        return img
    return pil_to_uint8(uint8_to_pil(img).resize((size, size), Image.BICUBIC))


def batches(images: Sequence, batch_size: int, size: int | None = None, desc: str | None = None,
            progress: bool = True) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) batches of consecutive same-sized images (resized to ``size`` if given), with
    a progress bar named ``desc``."""
    from tqdm import tqdm
    pending = []
    for item in tqdm(images, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True):
        img = to_uint8(item)
        img = resized(img, size) if size else img
        if pending and (img.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.stack(pending)
            pending = []
        pending.append(img)
    if pending:
        yield torch.stack(pending)


@torch.no_grad()
def inception_features(images: Sequence, net, batch_size: int = 50, device="cpu", desc=None,
                       progress=True) -> torch.Tensor:
    """(n, 2048) float64 pool features of ``images`` (paths or uint8 tensors)."""
    out = [net(b.to(device))[0].double().cpu() for b in batches(images, batch_size, None, desc, progress)]
    return torch.cat(out)


def compute_metrics(real: Sequence, fake: Sequence, metrics=("fid", "kid", "swd"), *, net=None,
                    batch_size: int = 50, device="cpu", seed: int = 0, swd_size: int = 256,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True) -> dict:
    """FID / KID / SWD of two image sets (sequences of paths or uint8 (3, H, W) tensors); ``net``: the
    Inception of :func:`.inception.load_inception`, needed for fid and kid. Returns the numbers."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"need at least 2 real and 2 fake images, got {len(real)} and {len(fake)}")
    out = {}
    if "fid" in metrics or "kid" in metrics:
        if net is None:
            raise ValueError("fid/kid: pass net=load_inception(...)")
        fr = inception_features(real, net, batch_size, device, "inception (real)", progress)
        ff = inception_features(fake, net, batch_size, device, "inception (fake)", progress)
        if "fid" in metrics:
            out["fid"] = M.fid_from_features(fr, ff)
        if "kid" in metrics:
            out["kid"], out["kid_std"], out["kid_subset_size"] = M.kid_from_features(
                fr, ff, kid_subsets, kid_subset_size, seed)
    if "swd" in metrics:
        res = swd(batches(real, batch_size, swd_size, "swd (real)", progress),
                  batches(fake, batch_size, swd_size, "swd (fake)", progress), seed)
        out["swd"], out["swd_levels"] = res["mean"], res["levels"]
    return out


def synthetic_scores(fake: Sequence[torch.Tensor], source: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                     mask: torch.Tensor, task: str = "recolour") -> dict:
    """:func:`.metrics.synthetic_measures` of the ``task`` of uint8 (3, H, W) translations of uint8
    sources, given the uint8 targets and the (n, H, W) object masks."""
    return M.synthetic_measures(*(dequantize(torch.stack(list(u))) for u in (fake, source, target)), mask, task)


def synthetic_from_files(fake: Sequence[str], seed: int, task: str = "recolour", period_scale: float = 1.0
                         ) -> tuple[dict, list[torch.Tensor], list[torch.Tensor]]:
    """Translations of synthetic items read once from files named ``<item index>.<ext>``: their
    :func:`synthetic_scores` against the items (regenerated with ``task`` and ``period_scale`` at each
    file's size and quantised as the split's PNGs), the fake images and the items' targets (the real set
    for SWD), both uint8."""
    fakes, items = [], []
    for p in fake:
        m = re.search(r"(\d+)$", os.path.splitext(os.path.basename(p))[0])
        if m is None:
            raise ValueError(f"fake: {p} is not named <synthetic item index>.png (see qsattn-eval --write_synthetic)")
        img = to_uint8(p)
        if img.shape[1] != img.shape[2]:
            raise ValueError(f"fake: {p} is {img.shape[2]}x{img.shape[1]}; synthetic items are square")
        fakes.append(img)
        items.append(synthetic_pair(seed, int(m.group(1)), img.shape[1], task, period_scale))
    a, b = ([quantize(it[j]) for it in items] for j in (0, 1))
    return synthetic_scores(fakes, a, b, torch.stack([it[2] for it in items]), task), fakes, b


def write_synthetic(out_dir: str, seed: int, count: int, size: int, task: str = "recolour",
                    period_scale: float = 1.0) -> int:
    """Write the synthetic test split of ``task``: ``out_dir/testA`` and ``testB``, ``<index>.png``;
    returns count."""
    for d in ("testA", "testB"):
        os.makedirs(os.path.join(out_dir, d), exist_ok=True)
    for i in synthetic_test_indices(count):
        a, b, _ = synthetic_pair(seed, i, size, task, period_scale)
        to_image(a).save(os.path.join(out_dir, "testA", f"{i}.png"))
        to_image(b).save(os.path.join(out_dir, "testB", f"{i}.png"))
    return count


class TestSetEvaluator:
    """``qsattn-train --eval_freq``: translate the test split with G and compute its metrics.

    Test split: with ``--dataset_mode synthetic``, ``--eval_num_test`` (0: 100) items of the synthetic
    test split (:func:`.data.synthetic_test_indices`) drawn at crop_size; else the images of
    ``<dataroot>/<eval_phase>A`` (sources; ``B`` with ``--direction BtoA``), resized to crop_size x
    crop_size (bicubic), against those of ``<eval_phase>B`` (each folder: all, or the first
    ``--eval_num_test``).
    Translations are rounded to uint8 like saved PNGs. ``--eval_metrics auto``: SWD (at crop_size),
    the synthetic measures for synthetic A->B, and FID/KID when Inception weights are found (else a note
    is printed). The primary (lower is better) number that picks the best epoch: FID, else SWD, else KID,
    else the synthetic background error. Raises ValueError for metrics that cannot run on the split and
    :class:`.inception.InceptionUnavailable` for FID/KID asked for by name without weights.
    """

    def __init__(self, opt, device, log=print):
        self.device, self.size, self.batch_size, self.seed = device, opt.crop_size, opt.batch_size, opt.seed
        self.synthetic = opt.dataset_mode == "synthetic"
        n = opt.eval_num_test or (100 if self.synthetic else float("inf"))
        if self.synthetic:
            self.task = opt.synthetic_task
            items = [synthetic_pair(opt.seed, i, self.size, opt.synthetic_task, opt.synthetic_period_scale)
                     for i in synthetic_test_indices(n)]
            src, tgt = (0, 1) if opt.direction == "AtoB" else (1, 0)
            self.sources = torch.stack([quantize(it[src]) for it in items])
            self.real = [quantize(it[tgt]) for it in items]
            self.mask = torch.stack([it[2] for it in items])
        else:
            a, b = ("A", "B") if opt.direction == "AtoB" else ("B", "A")
            src = list_images(os.path.join(opt.dataroot, opt.eval_phase + a), n, f"eval ({opt.eval_phase}{a})")
            self.real = list_images(os.path.join(opt.dataroot, opt.eval_phase + b), n, f"eval ({opt.eval_phase}{b})")
            self.sources = torch.stack([resized(to_uint8(p), self.size) for p in src])
        auto = opt.eval_metrics == "auto"
        wanted = (["fid", "kid", "swd"] + (["synthetic"] if self.synthetic and opt.direction == "AtoB" else [])
                  if auto else [m.strip() for m in opt.eval_metrics.split(",") if m.strip()])
        bad = [m for m in wanted if m not in METRICS or (m == "synthetic" and not self.synthetic)]
        if bad:
            raise ValueError(f"--eval_metrics {bad} not available (choose from fid, kid, swd; "
                             "synthetic with --dataset_mode synthetic)")
        self.net = None
        if {"fid", "kid"} & set(wanted):
            try:
                self.net = load_inception(opt.inception_weights, device)
            except InceptionUnavailable as e:
                if not auto:
                    raise
                log(f"qsattn-train: evaluating without FID/KID: {e}")
                wanted = [m for m in wanted if m not in ("fid", "kid")]
        self.metrics = wanted
        self.primary = next((m for m in ("fid", "swd", "kid") if m in wanted), "background_error")
        self.kid_subsets = opt.kid_subsets

    @torch.no_grad()
    def run(self, net_g, autocast=None) -> dict:
        """Metrics of ``net_g``'s translations of the test split (G in eval mode meanwhile)."""
        import contextlib
        was = net_g.training
        net_g.eval()
        fakes = []
        try:
            for i in range(0, len(self.sources), self.batch_size):
                x = dequantize(self.sources[i:i + self.batch_size]).to(self.device)
                with autocast or contextlib.nullcontext():
                    fakes += list(quantize(net_g(x)))
        finally:
            net_g.train(was)
        self.last_fakes = fakes
        out = {}
        if "synthetic" in self.metrics:
            out.update(synthetic_scores(fakes, self.sources, self.real, self.mask, self.task))
        out.update(compute_metrics(self.real, fakes, self.metrics, net=self.net, batch_size=self.batch_size,
                                   device=self.device, seed=self.seed, swd_size=self.size,
                                   kid_subsets=self.kid_subsets, progress=False))
        return out

    def save_grid(self, path: str, count: int = 8) -> None:
        """PNG of the first ``count`` test items of the last :meth:`run`: one row each, real A | fake B,
        and real B (the item's true target) on the synthetic set."""
        from .viz import save_grid
        n = min(count, len(self.last_fakes))
        cols = [self.sources[:n], torch.stack(self.last_fakes[:n])]
        labels = ["real A", "fake B"]
        if self.synthetic:
            cols.append(torch.stack(self.real[:n]))
            labels.append("real B (truth)")
        save_grid([dequantize(c) for c in cols], path, labels)


def jsonable(numbers: dict) -> dict:
    """The metrics with their per-level dicts keyed by strings, as JSON writes them."""
    return {k: ({str(r): x for r, x in v.items()} if isinstance(v, dict) else v) for k, v in numbers.items()}


def evaluate(real: str | None, fake: str, metrics=None, *, dataset_mode: str = "unaligned",
             synthetic_seed: int = 0, synthetic_task: str = "recolour", synthetic_period_scale: float = 1.0,
             inception_weights: str | None = None, max_images: int | None = None,
             batch_size: int = 50, device="auto", seed: int = 0, swd_size: int | None = None,
             kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True) -> dict:
    """``qsattn-eval`` as a function: folders ``real`` and ``fake`` -> {"metrics": {...}, "settings": {...}}
    (the protocol of the module docstring; ``metrics`` a list, default fid, kid, swd, or synthetic, swd
    with ``dataset_mode="synthetic"``, where ``real`` may be None). Raises ValueError for bad arguments
    and :class:`.inception.InceptionUnavailable` when FID/KID cannot run."""
    synthetic = dataset_mode == "synthetic"
    metrics = list(metrics or (["synthetic", "swd"] if synthetic else ["fid", "kid", "swd"]))
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"metrics: unknown {bad}; choose from {', '.join(METRICS)}")
    if "synthetic" in metrics and not synthetic:
        raise ValueError("metrics: synthetic needs dataset_mode synthetic")
    if not fake or not (real or synthetic):
        raise ValueError("fake and real folders are required (real is optional with dataset_mode synthetic)")
    for name, v in (("batch_size", batch_size), ("kid_subsets", kid_subsets), ("swd_size", swd_size)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    fakes = list_images(fake, max_images or float("inf"), "fake")
    if any(f.lower().endswith(JPEG) for f in fakes):
        print("qsattn-eval: warning: the fake folder holds JPEG files; lossy compression changes FID/KID "
              "(write PNG)", file=sys.stderr)
    if swd_size is None:
        with Image.open(fakes[0]) as img:
            swd_size = img.size[0] if img.size[0] == img.size[1] else 256
    device = pick_device(device)
    net = weights = None
    if {"fid", "kid"} & set(metrics):
        weights = find_weights(inception_weights)
        net = load_inception(weights, device)
    numbers, reals = {}, None
    if synthetic:   # the fake files are read here once, and their tensors passed on
        measures, fakes, reals = synthetic_from_files(fakes, synthetic_seed, synthetic_task, synthetic_period_scale)
        if "synthetic" in metrics:
            numbers.update(measures)
    if real:
        reals = list_images(real, max_images or float("inf"), "real")
    t0 = time.time()
    numbers.update(compute_metrics(reals, fakes, metrics, net=net, batch_size=batch_size, device=device,
                                   seed=seed, swd_size=swd_size, kid_subsets=kid_subsets,
                                   kid_subset_size=kid_subset_size, progress=progress))
    import qsattn_fast
    settings = dict(real=real, fake=fake, metrics=metrics, dataset_mode=dataset_mode, n_real=len(reals),
                    n_fake=len(fakes), max_images=max_images, batch_size=batch_size, device=str(device),
                    seed=seed, swd_size=swd_size, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                    inception=f"torch-fidelity FeatureExtractorInceptionV3 pool_3, {weights}" if net else None,
                    swd="ProGAN: 7x7 Laplacian patches, 128 per image and level, 4x128 directions, x1e3",
                    seconds=round(time.time() - t0, 2), torch=torch.__version__, qsattn_fast=qsattn_fast.__version__)
    if synthetic:
        settings.update(synthetic_seed=synthetic_seed, synthetic_task=synthetic_task,
                        synthetic_period_scale=synthetic_period_scale)
    return {"metrics": numbers, "settings": settings}
