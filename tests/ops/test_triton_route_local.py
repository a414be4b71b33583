"""Local routing kernels (kernels/route_local.py): outputs and gradients over the selected positions'
zero-padded neighbourhoods against the float64 reference; windows, borders, k = N."""
import pytest
import torch

from support.numerics import compare, features, random_idx
from support.triton_env import DEVICE

# (B, C, H, W, k, value channels, window); (3, 4) maps are smaller than the 7 x 7 window.
CASES = [(1, 3, 7, 9, 20, (3, 5), 7), (2, 19, 9, 11, 99, (4,), 3), (3, 6, 3, 4, 12, (6, 2), 7),
         (2, 5, 6, 5, 17, (5,), 5)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("B,C,H,W,k,cvs,window", CASES)
def test_matches_reference(dtype, B, C, H, W, k, cvs, window):
    x = features(B, C, H, W, dtype, scale=1.5 * C ** -0.5)
    values = [torch.randn(B, cv, H, W, dtype=torch.float64).to(dtype) for cv in cvs]
    compare("triton", DEVICE, x, random_idx(B, H * W, k), values, dtype, "local", window)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_source_features_as_value(dtype):
    x = features(2, 8, 6, 7, dtype)
    compare("triton", DEVICE, x, random_idx(2, 42, 15), [None, torch.randn(2, 3, 6, 7, dtype=dtype)], dtype, "local", 7)
