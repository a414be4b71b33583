"""SWD (train/swd.py): the Laplacian pyramid, the patch descriptors and the distance's properties."""
import pytest
import torch
import torch.nn.functional as F

from qsattn_fast.train import swd as S


def _images(n, size=32, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    # smooth random images (so the pyramid levels carry structure), uint8
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


def _batches(x, b=5):
    return [x[i:i + b] for i in range(0, x.shape[0], b)]


def test_resolutions():
    assert S.resolutions(256) == [256, 128, 64, 32, 16]
    assert S.resolutions(72) == [72, 36, 18]
    with pytest.raises(ValueError):
        S.resolutions(8)


@pytest.mark.parametrize("size,levels", [(32, 2), (64, 3), (48, 3)])
def test_laplacian_pyramid_reconstructs_the_image(size, levels):
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    pyr = S.laplacian_pyramid(x, levels)
    assert [p.shape[-1] for p in pyr] == [size >> i for i in range(levels)]
    rec = pyr[-1]
    for band in reversed(pyr[:-1]):
        up = torch.zeros_like(band)
        up[:, :, ::2, ::2] = rec
        rec = band + S._blur(up, 4.0)
    assert torch.allclose(rec, x, atol=1e-12)
    # the low-pass level of a constant image is that constant; its band-pass levels are 0
    c = S.laplacian_pyramid(torch.full((1, 3, size, size), 7.0, dtype=torch.float64), levels)
    assert torch.allclose(c[-1], torch.full_like(c[-1], 7.0)) and all(p.abs().max() < 1e-12 for p in c[:-1])


def test_patch_descriptors_are_the_image_windows():
    x = torch.randn(3, 3, 20, 24)
    gen, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d = S.patch_descriptors(x, gen)
    assert d.shape == (3 * S.NHOODS_PER_IMAGE, 3, 7, 7)
    u = torch.rand(3, 2, S.NHOODS_PER_IMAGE, generator=replay, dtype=torch.float64)
    ys, xs = 3 + (u[:, 0] * 14).long(), 3 + (u[:, 1] * 18).long()
    assert ys.min() >= 3 and ys.max() <= 16 and xs.max() <= 20
    for n in [0, 1, 200, 3 * S.NHOODS_PER_IMAGE - 1]:
        b, i = divmod(n, S.NHOODS_PER_IMAGE)
        y, c = int(ys[b, i]), int(xs[b, i])
        assert torch.equal(d[n], x[b, :, y - 3:y + 4, c - 3:c + 4])


def test_swd_is_zero_for_identical_sets_and_seed_stable():
    x = _images(12)
    res = S.swd(_batches(x), _batches(x.clone()), seed=4)
    assert res["mean"] == 0 and set(res["levels"]) == {32, 16}
    y = _images(12)
    a, b = S.swd(_batches(x), _batches(y), seed=4), S.swd(_batches(x), _batches(y, 7), seed=4)
    assert a == b  # batching does not matter, the seed fixes everything
    assert a["mean"] > 0 and S.swd(_batches(x), _batches(y), seed=5)["mean"] != a["mean"]


def test_swd_grows_with_the_perturbation():
    x = _images(16)
    noise = torch.randn(x.shape)
    vals = [S.swd(_batches(x), _batches((x.float() + s * noise).clamp(0, 255)), seed=0)["mean"]
            for s in (2.0, 12.0, 48.0)]
    assert 0 < vals[0] < vals[1] < vals[2]


def test_swd_unequal_sets_and_errors():
    x, y = _images(10), _images(6)
    assert S.swd(_batches(x), _batches(y), seed=0)["mean"] > 0
    with pytest.raises(ValueError, match="size"):
        S.swd(_batches(x), _batches(_images(6, size=64)), seed=0)
    with pytest.raises(ValueError, match="square"):
        S.swd([torch.zeros(2, 3, 32, 40, dtype=torch.uint8)], _batches(y), seed=0)
    with pytest.raises(ValueError, match="one size"):
        S.swd([x[:2], _images(2, size=64)], _batches(y), seed=0)
    with pytest.raises(ValueError, match="empty"):
        S.swd([], _batches(y), seed=0)
