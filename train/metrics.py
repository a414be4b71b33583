"""Distribution distances between feature sets, and the synthetic task's own quality measures.

* :func:`frechet_distance` (FID when the features are Inception-v3 pool features):
  ``|mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr (S_r^1/2 S_f S_r^1/2)^1/2``, in float64 from symmetric
  eigendecompositions (no complex ``sqrtm``).
* :func:`kid_from_features` (KID, Binkowski et al. 2018): the unbiased MMD^2 estimator with
  the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.
* :func:`synthetic_measures`: for ``--dataset_mode synthetic``, where B is known per item: target
  conformity and content preservation (of the shape, its detail, the background), the aspects of the
  paper's user study that need no network (:func:`paired_measures` for ``recolour``,
  :func:`stripe_measures` for ``stripes``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) features, n >= 2 -> (mean (d,), covariance (d, d) with the n - 1 normalisation), float64."""
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"feats: expected (n, d) with n >= 2 samples, got shape {tuple(feats.shape)}")
    x = feats.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative rounding eigenvalues -> 0)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2); mu (d,), sigma (d, d).

    tr (S1 S2)^1/2 = sum of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, PSD).
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"expected mu (d,) and sigma (d, d) for both sets, got {tuple(mu1.shape)}, "
                         f"{tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    r1 = _sqrt_psd(sigma1)
    m = r1 @ sigma2 @ r1
    return _frechet(mu1, sigma1, mu2, sigma2, torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum())


def _frechet(mu1, sigma1, mu2, sigma2, tr_covmean) -> float:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^1/2, given the last trace."""
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of (n1, d) and (n2, d) feature sets.

    With fewer samples than dimensions (the usual test set of a few hundred images against 2048
    features) the covariances are singular and the eigenvalue route adds up square roots of rounding
    noise; then, with S1 = A^T A and S2 = B^T B (A, B the centred samples / sqrt(n - 1)),
    tr (S1 S2)^1/2 is computed exactly as the nuclear norm of the small n1 x n2 matrix A B^T.
    """
    (mu1, s1), (mu2, s2) = gaussian_stats(real), gaussian_stats(fake)
    if min(real.shape[0], fake.shape[0]) > real.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    a = (real.double() - mu1) / (real.shape[0] - 1) ** 0.5
    b = (fake.double() - mu2) / (fake.shape[0] - 1) ** 0.5
    return _frechet(mu1, s1, mu2, s2, torch.linalg.svdvals(a @ b.T).sum())


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of two (m, d) samples under k(a, b) = (a.b / d + 1)^3:
    sum_{i != j} k(x_i, x_j) / (m (m-1)) + the same for y - 2 sum_{i, j} k(x_i, y_j) / m^2."""
    m, d = x.shape
    if y.shape != x.shape or m < 2:
        raise ValueError(f"x, y: expected two (m, d) samples with m >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = m * (m - 1)
    return float((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
                 - 2 * kxy.sum() / m ** 2)


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float, int]:
    """KID of two (n, d) feature sets: mean and standard deviation of :func:`mmd2_unbiased` over
    ``subsets`` pairs of random subsets (drawn without replacement, seeded), each of
    ``min(subset_size, n_real, n_fake)`` samples; returns (mean, std, the subset size used)."""
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets >= 1 and subset_size >= 2 required, got {subsets}, {subset_size}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    gen = torch.Generator().manual_seed(seed)
    vals = torch.tensor([mmd2_unbiased(real[torch.randperm(real.shape[0], generator=gen)[:m]],
                                       fake[torch.randperm(fake.shape[0], generator=gen)[:m]])
                         for _ in range(subsets)], dtype=torch.float64)
    return float(vals.mean()), float(vals.std(unbiased=False)), m


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W), the channel mean."""
    return x.mean(1)


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    """(B, H, W) bool -> the pixels whose (2r+1)^2 neighbourhood lies inside the mask."""
    m = (~mask).float().unsqueeze(1)
    return ~(F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)[:, 0] > 0)


def _masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image variance of x (B, H, W) over mask (B, H, W) (two-pass, float64); NaN where the mask is empty."""
    n = mask.sum((1, 2)).double()
    xd = x.double()
    mean = (xd * mask).sum((1, 2)) / n
    return ((xd - mean[:, None, None]) ** 2 * mask).sum((1, 2)) / n


def _check_paired(fake, real_a, real_b, mask):
    if fake.shape != real_a.shape or real_b.shape != real_a.shape or real_a.dim() != 4 or real_a.shape[1] != 3:
        raise ValueError(f"fake, real_a, real_b: expected equal (B, 3, H, W) shapes, got {tuple(fake.shape)}, "
                         f"{tuple(real_a.shape)}, {tuple(real_b.shape)}")
    if mask.shape != (real_a.shape[0], *real_a.shape[2:]):
        raise ValueError(f"mask: expected {(real_a.shape[0], *real_a.shape[2:])}, got {tuple(mask.shape)}")


def _background_error(fake, real_a, mask, margin):
    """Mean |fake - real_a| / 2 (so in [0, 1] units) outside the object dilated by ``margin`` px."""
    outer = _erode(~mask, margin)
    return float(((fake.double() - real_a.double()).abs().mean(1) / 2 * outer).sum() / outer.sum().clamp_min(1))


def stripe_measures(fake, real_a, real_b, mask, margin: int = 1) -> dict:
    """The ``stripes`` task's measures of translations ``fake`` = G(real_a) (all (B, 3, H, W) in [-1, 1];
    ``real_b`` the striped target of the same item; ``mask`` (B, H, W) bool, True on the object).

    * ``stripe_energy`` (target conformity, higher is better, ~1 like the target domain): the
      luminance variance inside the object (eroded by ``margin`` px), summed over images, over that of
      ``real_b``. A plain object (the identity mapping) gives ~0. Stripes of any angle and period count.
    * ``background_error`` (content preservation, lower is better): mean |fake - real_a| / 2 outside the
      object dilated by ``margin`` px, where source and target images agree.
    """
    _check_paired(fake, real_a, real_b, mask)
    mask = mask.bool()
    inner = _erode(mask, margin)
    energy = _masked_var(_luma(fake), inner).nansum() / _masked_var(_luma(real_b), inner).nansum()
    return {"stripe_energy": float(energy), "background_error": _background_error(fake, real_a, mask, margin)}


#: The change (channel mean of |x - a| / 2, in [0, 1] units) above which changed_iou counts a pixel changed.
CHANGED = 0.1


def paired_measures(fake, real_a, real_b, mask, margin: int = 1) -> dict:
    """Measures of translations ``fake`` = G(real_a) against a paired ground truth ``real_b`` that changes
    the object's pixels in place (all (B, 3, H, W) in [-1, 1]; ``mask`` (B, H, W) bool, True on the
    object). Per image, T = {p : b_p != a_p} is the region the task changes (the object less its
    unchanged inner detail) and m the median over T of |b_p - a_p| (the distance a pixel must move).

    * ``conformity`` (higher is better; 0 for the identity, 1 for B): how far the object moved from A
      towards B, the projection <f - a, b - a> / |b - a|^2 clamped to [0, 1], averaged over T eroded by
      ``margin`` px, then over images.
    * ``shape_iou`` (higher is better; 0 for the identity, 1 for B; **the one number that orders runs**):
      IoU of the translated region with T, averaged over images. Translated: in T, a pixel nearer to
      its B value than to its A value (progress > 1/2); elsewhere, a pixel moved by at least m / 2. It
      drops when the object is not translated, when its outline is lost, and when the background or
      the detail is repainted.
    * ``detail_error`` (lower is better, 0 for A and B): mean |f - a| / 2 over the object's unchanged
      pixels (the inner detail, eroded by ``margin`` px); NaN when no object has any.
    * ``background_error`` (lower is better, 0 for A and B): as in :func:`stripe_measures`.
    * ``changed_iou`` (higher is better; 0 for the identity, 1 for B): what a person sees change. A pixel
      changed when its channel mean of |f - a| / 2 exceeds ``CHANGED`` (0.1); the truth is where that of
      |b - a| does; the IoU of the two per image (1 where both are empty), averaged over images. Soft
      edges, glowing marks and background speckle lower it; shape_iou forgives them.
    * ``image_error`` (lower is better; 1 for the identity, 0 for B): the mean |f - b| over every pixel of
      every image divided by the identity's mean |a - b|. The object is about a tenth of the image, so a
      faint speckle over the background outweighs a complete recolouring in it: it says whether the whole
      picture is nearer B than A is.
    """
    _check_paired(fake, real_a, real_b, mask)
    mask = mask.bool()
    f, a, b = fake.double(), real_a.double(), real_b.double()
    step = b - a
    dist2 = (step ** 2).sum(1)
    target = dist2 > 0
    if not target.flatten(1).any(1).all():
        raise ValueError("real_b: every item must differ from real_a somewhere (the region the task changes)")
    progress = (((f - a) * step).sum(1) / dist2.clamp_min(1e-30)).clamp(0, 1)   # 0 on A, 1 on B
    inner = _erode(target, margin)
    inner = torch.where(inner.flatten(1).any(1)[:, None, None], inner, target)   # tiny objects: no erosion
    conformity = ((progress * inner).sum((1, 2)) / inner.sum((1, 2))).mean()
    move = torch.stack([d[t].sqrt().median() for d, t in zip(dist2, target)])
    changed = torch.where(target, ((f - b) ** 2).sum(1) < ((f - a) ** 2).sum(1),
                          ((f - a) ** 2).sum(1).sqrt() >= move[:, None, None] / 2)
    iou = ((changed & target).sum((1, 2)) / (changed | target).sum((1, 2))).mean()
    detail = _erode(mask & ~target, margin)
    detail_err = ((f - a).abs().mean(1) / 2 * detail).sum() / detail.sum()
    seen, truth = (f - a).abs().mean(1) / 2 > CHANGED, (b - a).abs().mean(1) / 2 > CHANGED
    union = (seen | truth).sum((1, 2))
    changed_iou = torch.where(union > 0, (seen & truth).sum((1, 2)) / union.clamp_min(1), 1.0).mean()
    return {"conformity": float(conformity), "shape_iou": float(iou),
            "detail_error": float(detail_err), "background_error": _background_error(fake, real_a, mask, margin),
            "changed_iou": float(changed_iou), "image_error": float((f - b).abs().mean() / (a - b).abs().mean())}


#: The measures of each task of data.SYNTHETIC_TASKS (the task names' one list; tests check the two agree).
TASK_MEASURES = {"recolour": paired_measures, "stripes": stripe_measures}

# What each synthetic measure means, as the trainer prints it: (better, meaning).
MEANINGS = {
    "conformity": ("higher", "how far the object moved from A towards B: 0 unchanged, 1 as B"),
    "shape_iou": ("higher", "IoU of the region translated (nearer B than A) with the object: 1 exact "
                            "(orders runs)"),
    "detail_error": ("lower", "mean |fake B - real A| / 2 on the object's unchanged inner mark"),
    "stripe_energy": ("higher", "luminance variance inside the object relative to the real striped B: "
                                "1 as striped as B, 0 plain like A"),
    "background_error": ("lower", "mean |fake B - real A| / 2 outside the object: 0 background unchanged"),
    "changed_iou": ("higher", "IoU of where the picture visibly changed (|fake B - real A| / 2 > 0.1) with "
                              "where B changes it: 1 exact; soft edges and speckle lower it"),
    "image_error": ("lower", "mean |fake B - real B| over whole images relative to the identity's "
                             "|real A - real B|: 1 no nearer B than A, 0 as B"),
}


def synthetic_measures(fake, real_a, real_b, mask, task: str = "recolour", margin: int = 1) -> dict:
    """The measures of the synthetic ``task`` (:data:`TASK_MEASURES`) of translations ``fake``."""
    from .data import SYNTHETIC_TASKS
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task: expected one of {', '.join(SYNTHETIC_TASKS)}, got {task!r}")
    return TASK_MEASURES[task](fake, real_a, real_b, mask, margin)
