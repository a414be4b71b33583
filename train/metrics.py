"""Distribution distances between feature sets, and the synthetic task's own quality measures.

* :func:`frechet_distance` (FID when the features are Inception-v3 pool features):
  ``|mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr (S_r^1/2 S_f S_r^1/2)^1/2``, in float64 from symmetric
  eigendecompositions (no complex ``sqrtm``).
* :func:`kid_from_features` (KID, Binkowski et al. 2018): the unbiased MMD^2 estimator with
  the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.
* :func:`synthetic_measures`: for ``--dataset_mode synthetic``, where the object masks are known:
  target conformity T (stripe energy inside the object) and content preservation C (error outside it),
  the two aspects of the paper's user study that need no network.
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


def synthetic_measures(fake: torch.Tensor, real_a: torch.Tensor, real_b: torch.Tensor,
                       mask: torch.Tensor, margin: int = 1) -> dict:
    """Quality of translations ``fake`` = G(real_a) on the synthetic set (all (B, 3, H, W) in [-1, 1],
    ``mask`` (B, H, W) bool, True on the object; ``real_b`` is the striped target of the same item).

    * ``stripe_energy`` (target conformity T, higher is better, ~1 like the target domain): the
      luminance variance inside the object (eroded by ``margin`` px), summed over images, over that of
      ``real_b``. A plain object (the identity mapping) gives ~0.
    * ``background_error`` (content preservation C, lower is better): mean |fake - real_a| / 2 (so in
      [0, 1] units) outside the object dilated by ``margin`` px, where source and target images agree.
    """
    if fake.shape != real_a.shape or real_b.shape != real_a.shape or real_a.dim() != 4 or real_a.shape[1] != 3:
        raise ValueError(f"fake, real_a, real_b: expected equal (B, 3, H, W) shapes, got {tuple(fake.shape)}, "
                         f"{tuple(real_a.shape)}, {tuple(real_b.shape)}")
    if mask.shape != (real_a.shape[0], *real_a.shape[2:]):
        raise ValueError(f"mask: expected {(real_a.shape[0], *real_a.shape[2:])}, got {tuple(mask.shape)}")
    mask = mask.bool()
    inner = _erode(mask, margin)
    outer = _erode(~mask, margin)
    energy_fake = _masked_var(_luma(fake), inner).nansum()
    energy_real = _masked_var(_luma(real_b), inner).nansum()
    err = ((fake.double() - real_a.double()).abs().mean(1) / 2 * outer).sum() / outer.sum().clamp_min(1)
    return {"stripe_energy": float(energy_fake / energy_real), "background_error": float(err)}
