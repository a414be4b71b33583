"""FID / KID statistics and the synthetic measures (train/metrics.py) against closed forms and
direct computations."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from qsattn_fast.train import metrics as M
from qsattn_fast.train.data import synthetic_pair


def _orthogonal(d):
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return q


@pytest.mark.parametrize("d", [1, 3, 17])
def test_frechet_distance_closed_form_for_commuting_covariances(d):
    # S1 = U diag(a) U^T, S2 = U diag(b) U^T: FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
    u = _orthogonal(d)
    a, b = torch.rand(d, dtype=torch.float64) * 3, torch.rand(d, dtype=torch.float64) * 3
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    s1, s2 = u @ torch.diag(a) @ u.T, u @ torch.diag(b) @ u.T
    want = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_frechet_distance_general_properties():
    d = 12
    x, y = torch.randn(d, 3 * d, dtype=torch.float64), torch.randn(d, 3 * d, dtype=torch.float64)
    s1, s2 = x @ x.T / d, y @ y.T / d                      # full, non-commuting covariances
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    fd = M.frechet_distance(mu1, s1, mu2, s2)
    assert fd == pytest.approx(M.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)      # symmetric
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)       # zero on itself
    # tr (S1 S2)^1/2 from the eigenvalues of S1 S2 (real, >= 0 as S1 S2 is similar to a PSD matrix).
    tr = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    want = float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr)
    assert fd == pytest.approx(want, rel=1e-7)


def test_fid_of_samples_approaches_the_gaussians_distance():
    d, n = 4, 200_000
    l1, l2 = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    x = torch.randn(n, d, dtype=torch.float64) @ l1.T + mu1
    y = torch.randn(n, d, dtype=torch.float64) @ l2.T + mu2
    want = M.frechet_distance(mu1, l1 @ l1.T, mu2, l2 @ l2.T)
    assert M.fid_from_features(x.float(), y.float()) == pytest.approx(want, rel=0.05, abs=0.05)


@pytest.mark.parametrize("n1,n2,d", [(5, 9, 40), (60, 45, 8), (7, 300, 64)])
def test_fid_from_few_samples_equals_the_covariance_route(n1, n2, d):
    # n < d (singular covariances: the nuclear-norm route) and n > d (the eigenvalue route) agree with
    # the Fréchet distance of the fitted statistics, and identical sets give 0 to rounding.
    x, y = torch.randn(n1, d) * 0.1 + 0.3, torch.randn(n2, d) * 0.2
    want = M.frechet_distance(*M.gaussian_stats(x), *M.gaussian_stats(y))
    assert M.fid_from_features(x, y) == pytest.approx(want, rel=1e-6)
    assert abs(M.fid_from_features(x, x.clone())) < 1e-12 * float(M.gaussian_stats(x)[1].trace()) + 1e-15


def test_gaussian_stats_match_torch_cov():
    x = torch.randn(37, 5)
    mu, s = M.gaussian_stats(x)
    assert torch.allclose(mu, x.double().mean(0)) and torch.allclose(s, torch.cov(x.double().T))
    with pytest.raises(ValueError, match="n >= 2"):
        M.gaussian_stats(torch.randn(1, 5))


def _mmd2_loops(x, y):
    m, d = x.shape
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    return xx + yy - 2 * xy


@pytest.mark.parametrize("m,d", [(2, 1), (5, 3), (9, 8)])
def test_mmd2_unbiased_equals_the_definition(m, d):
    x, y = torch.randn(m, d, dtype=torch.float64), torch.randn(m, d, dtype=torch.float64) + 0.3
    assert M.mmd2_unbiased(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-10, abs=1e-12)


def test_kid_is_unbiased_and_detects_a_shift():
    # Same distribution: the subset estimates average to ~0 (unbiased; a biased estimator is > 0);
    # a shifted distribution gives a clearly positive value.
    d, n = 8, 4000
    x, y = torch.randn(n, d), torch.randn(n, d)
    same, same_std, m = M.kid_from_features(x, y, subsets=200, subset_size=100, seed=1)
    assert m == 100 and abs(same) < 4 * same_std / 200 ** 0.5 + 1e-3
    shifted, _, _ = M.kid_from_features(x, y + 0.5, subsets=50, subset_size=100, seed=1)
    assert shifted > 0.1 and shifted > 20 * abs(same)


def test_kid_subsets_are_seeded_and_clamped():
    x, y = torch.randn(30, 4), torch.randn(20, 4)
    a = M.kid_from_features(x, y, subsets=5, subset_size=1000, seed=3)
    assert a == M.kid_from_features(x, y, subsets=5, subset_size=1000, seed=3)
    assert a[2] == 20 and a != M.kid_from_features(x, y, subsets=5, subset_size=1000, seed=4)
    with pytest.raises(ValueError):
        M.kid_from_features(x, y, subsets=0)


def _synthetic_batch(n, size=48, seed=0, task="stripes"):
    items = [synthetic_pair(seed, i, size, task) for i in range(n)]
    return tuple(torch.stack([it[j] for it in items]) for j in range(3))


def test_stripe_measures_separate_striped_from_identity_translations():
    a, b, mask = _synthetic_batch(6)
    ident = M.synthetic_measures(a, a, b, mask, "stripes")
    striped = M.synthetic_measures(b, a, b, mask, "stripes")
    assert ident == {"stripe_energy": pytest.approx(0, abs=1e-9), "background_error": 0.0}
    assert striped == {"stripe_energy": pytest.approx(1.0), "background_error": 0.0}
    # Stripes of another angle and period count as stripes; a damaged background shows up in C only.
    cols = torch.arange(a.shape[-1], dtype=torch.float32)
    vertical = torch.where(torch.sin(cols * 2 * torch.pi / 7) > 0, 0.8, -0.8).expand_as(a)
    other = M.synthetic_measures(torch.where(mask[:, None], vertical, a), a, b, mask, "stripes")
    assert other["stripe_energy"] > 0.5 and other["background_error"] == 0
    noisy = M.synthetic_measures(b + 0.2 * torch.randn_like(b), a, b, mask, "stripes")
    assert noisy["background_error"] > 0.05 and striped["background_error"] < noisy["background_error"]


def _has_inner_detail(a, b, mask):
    """Whether some pixel has its whole 3x3 neighbourhood on the object's unchanged part (a == b)."""
    kept = (mask & (a == b).all(1)).double()[:, None]
    return bool((F.avg_pool2d(kept, 3, stride=1, padding=1, count_include_pad=True) == 1).any())


def _assert_identity_zero_and_b_perfect(a, b, mask):
    """detail_error is 0 for A and B where an object keeps an inner mark, NaN where none does."""
    has_detail = _has_inner_detail(a, b, mask)
    for fake, want in [(a, {"conformity": 0.0, "shape_iou": 0.0, "changed_iou": 0.0, "image_error": 1.0}),
                       (b, {"conformity": 1.0, "shape_iou": 1.0, "changed_iou": 1.0, "image_error": 0.0})]:
        got = M.synthetic_measures(fake, a, b, mask)
        detail = got.pop("detail_error")
        assert got == {**want, "background_error": 0.0}
        assert detail == 0.0 if has_detail else math.isnan(detail)
    return has_detail


@pytest.mark.parametrize("n,size", [(1, 33), (5, 48)])
def test_paired_measures_are_zero_for_the_identity_and_perfect_for_b(n, size):
    """(A small object may keep no inner mark.)"""
    a, b, mask = _synthetic_batch(n, size, int(torch.randint(0, 1000, ())), "recolour")
    _assert_identity_zero_and_b_perfect(a, b, mask)


def test_detail_error_is_nan_when_no_object_keeps_an_inner_mark():
    a, b, mask = _synthetic_batch(3, 40, int(torch.randint(0, 1000, ())), "recolour")
    b = torch.where((mask & (a == b).all(1))[:, None], a - 0.5 * a.sign().where(a != 0, -1.0), b)  # all changed
    assert not _assert_identity_zero_and_b_perfect(a, b, mask)


def test_paired_measures_against_direct_computations():
    """Halfway to B: conformity 1/2 and the object not yet nearer B (IoU 0); a repainted background and
    mark show in their errors, the IoU and the score, not in conformity."""
    a, b, mask = _synthetic_batch(4, 40, int(torch.randint(0, 1000, ())), "recolour")
    target = (a != b).any(1)
    half = M.paired_measures((a + b) / 2, a, b, mask)
    assert half["conformity"] == pytest.approx(0.5) and half["shape_iou"] == 0.0
    assert half["background_error"] == half["detail_error"] == 0
    just_past = M.paired_measures(0.49 * a + 0.51 * b, a, b, mask)
    assert just_past["shape_iou"] == 1.0 and just_past["conformity"] == pytest.approx(0.51)
    # Repaint every pixel off the changed region by +2 (clamped): more than half of any object's move.
    fake = torch.where(target[:, None], b, (b + 2).clamp(-1, 1))
    painted = M.paired_measures(fake, a, b, mask)
    moved = (fake - a).abs().mean(1) / 2
    outside, mark = M._erode(~mask, 1), M._erode(mask & ~target, 1)
    assert painted["background_error"] == pytest.approx(float((moved * outside).sum() / outside.sum()))
    assert painted["detail_error"] == pytest.approx(float((moved * mark).sum() / mark.sum()))
    assert painted["conformity"] == 1.0
    move = torch.stack([(bi - ai).pow(2).sum(0).sqrt()[t].median() for ai, bi, t in zip(a, b, target)])
    changed = target | ((fake - a).pow(2).sum(1).sqrt() >= move[:, None, None] / 2)
    assert painted["shape_iou"] == pytest.approx(float((target.sum((1, 2)) / changed.sum((1, 2))).mean()))
    assert painted["shape_iou"] < 0.5
    # What a person sees change: the repainted background counts; the whole picture is farther from B.
    seen, truth = moved > M.CHANGED, (b - a).abs().mean(1) / 2 > M.CHANGED
    iou = ((seen & truth).sum((1, 2)) / (seen | truth).sum((1, 2))).mean()
    assert painted["changed_iou"] == pytest.approx(float(iou))
    assert painted["image_error"] == pytest.approx(float((fake - b).abs().sum() / (a - b).abs().sum()))
    assert half["image_error"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ"):
        M.paired_measures(a, a, a, mask)
    with pytest.raises(ValueError, match="synthetic task"):
        M.synthetic_measures(a, a, b, mask, "zebras")


def test_synthetic_measures_reject_bad_shapes():
    a, b, mask = _synthetic_batch(2, 32)
    with pytest.raises(ValueError, match="fake"):
        M.synthetic_measures(a[:, :2], a, b, mask)
    with pytest.raises(ValueError, match="mask"):
        M.synthetic_measures(a, a, b, mask[:1])


def test_every_synthetic_task_has_its_measures():
    from qsattn_fast.train.data import SYNTHETIC_TASKS
    from qsattn_fast.train.metrics import TASK_MEASURES
    assert list(TASK_MEASURES) == list(SYNTHETIC_TASKS)
