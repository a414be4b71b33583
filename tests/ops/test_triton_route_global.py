"""Global routing kernels (kernels/route_global.py): outputs and gradients (w.r.t. the source features,
through Q = F[idx] and K = F, and every value) against the float64 reference."""
import pytest
import torch

from support import numerics
from support.numerics import features, random_idx
from support.triton_env import DEVICE, INTERPRET

# (B, C, H, W, k, value channels): N and C not block multiples, C = 3, k = N, three batch sizes.
SHAPES = [(1, 3, 7, 9, 20, (3, 5)), (2, 19, 9, 11, 37, (19, 21)), (3, 8, 5, 5, 25, (8,)), (1, 130, 9, 9, 81, (2,))]


def compare(x, idx, values, dtype, precision=None, tol=None) -> float:
    """Triton's global routing against the float64 reference (support.numerics.compare)."""
    return numerics.compare("triton", DEVICE, x, idx, values, dtype, precision=precision, tol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("B,C,H,W,k,cvs", SHAPES)
def test_matches_reference(dtype, B, C, H, W, k, cvs):
    x = features(B, C, H, W, dtype, scale=1.5 * C ** -0.5)   # logits O(1): well-conditioned gradients
    values = [torch.randn(B, cv, H, W, dtype=torch.float64).to(dtype) for cv in cvs]
    compare(x, random_idx(B, H * W, k), values, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_source_features_as_value(dtype):
    """QS-Attn routes the source features themselves: F gets gradients through Q, K and V."""
    x = features(2, 12, 6, 7, dtype)
    compare(x, random_idx(2, 42, 10), [None, torch.randn(2, 12, 6, 7, dtype=dtype)], dtype)


def test_one_hot_rows_gradient_noise_is_bounded():
    """256-channel features make every selected row one-hot, so the exact gradient through the attention
    is 0; the kernel keeps dS = P * (dP - rowsum(dO * O)), whose rounding noise at each row's max stays
    within the float32 tolerance of the gradient's norm (measured ~1e-5; docs/backends.md, Precision)."""
    x = features(1, 256, 8, 8, torch.float32, scale=1.0)
    compare(x, random_idx(1, 64, 16), [None, torch.randn(1, 7, 8, 8)], torch.float32)


def test_bfloat16():
    x = features(2, 10, 5, 6, torch.bfloat16)
    compare(x, random_idx(2, 30, 9), [torch.randn(2, 4, 5, 6).bfloat16()], torch.bfloat16)


@pytest.mark.parametrize("precision,tol", [("ieee", (2e-4, 1e-4)), ("tf32x3", (2e-4, 1e-4)), ("tf32", (2e-2, 5e-2)),
                                           ("bf16", (5e-2, 1e-1))])
def test_precisions(precision, tol):
    """Accuracy per precision, and the path taken (as in test_entropy_global.test_precisions)."""
    if INTERPRET and precision in ("tf32", "tf32x3"):
        pytest.skip("the Triton interpreter ignores input_precision: this case would run ieee")
    x, idx, v = features(2, 16, 6, 7, scale=0.3), random_idx(2, 42, 11), [torch.randn(2, 5, 6, 7)]
    err = compare(x, idx, v, torch.float32, precision=precision, tol=tol)
    if precision in ("tf32", "bf16"):
        assert err > 1e-6
    if precision == "tf32x3":
        assert err < 0.1 * compare(x, idx, v, torch.float32, precision="tf32", tol=(2e-2, 5e-2))
