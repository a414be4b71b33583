"""Local row entropy kernel (kernels/entropy_local.py) against the float64 reference: odd windows,
maps smaller than the window (every neighbourhood crosses the zero-padded border), dtypes."""
import pytest
import torch

from qsattn_fast._common import rows

from support.numerics import features, op, ref_entropy, rel_err
from support.triton_env import DEVICE


def entropy_local(x, window):
    """The Triton op on the rows of x (B, C, H, W), as the backend calls it."""
    return op("entropy_local", "triton")(rows(x), x.shape[2], x.shape[3], window)


@pytest.mark.parametrize("window", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("B,C,H,W", [(1, 3, 7, 9), (2, 19, 9, 11), (3, 6, 3, 4)])
def test_fp32_matches_reference(window, B, C, H, W):
    x = features(B, C, H, W, scale=1.0).to(DEVICE)
    h = entropy_local(x, window)
    assert h.shape == (B, H * W) and h.dtype == torch.float32
    ref = ref_entropy(x, "local", window)
    if window == 1:                          # one key per row: exactly zero
        assert bool((h == 0).all())
    else:
        assert rel_err(h.cpu(), ref) < 2e-4


def test_peaked_rows():
    """Entropies below fp32's epsilon (not so far below that the float64 reference loses them)."""
    x = features(2, 256, 5, 6, scale=0.3).to(DEVICE)
    ref = ref_entropy(x, "local", 7)
    assert float(ref.min()) < 1e-7
    assert rel_err(entropy_local(x, 7).cpu(), ref) < 2e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-4), (torch.bfloat16, 2e-4), (torch.float64, 1e-12)])
def test_other_dtypes(dtype, tol):
    x = features(2, 7, 6, 5, dtype=dtype, scale=1.0).to(DEVICE)
    h = entropy_local(x, 7)
    assert h.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(h.cpu(), ref_entropy(x, "local", 7)) < tol
