"""Local routing kernels (kernels/route_local.py): outputs and gradients over the selected positions'
zero-padded neighbourhoods against the float64 reference; windows, borders, k = N."""
import pytest
import torch

from support.numerics import ROUTE_TOL as TOL, features, random_idx, rel_err, run
from support.triton_env import DEVICE

# (B, C, H, W, k, value channels, window); (3, 4) maps are smaller than the 7 x 7 window.
CASES = [(1, 3, 7, 9, 20, (3, 5), 7), (2, 19, 9, 11, 99, (4,), 3), (3, 6, 3, 4, 12, (6, 2), 7),
         (2, 5, 6, 5, 17, (5,), 5)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("B,C,H,W,k,cvs,window", CASES)
def test_matches_reference(dtype, B, C, H, W, k, cvs, window):
    out_tol, grad_tol = TOL[dtype]
    x = features(B, C, H, W, dtype, scale=1.5 * C ** -0.5)
    values = [torch.randn(B, cv, H, W, dtype=torch.float64).to(dtype) for cv in cvs]
    idx = random_idx(B, H * W, k)
    got_o, got_g = run("triton", x.to(DEVICE), idx.to(DEVICE), [v.to(DEVICE) for v in values], "local", window)
    ref_o, ref_g = run("reference", x.double(), idx, [v.double() for v in values], "local", window)
    for g, r in zip(got_o, ref_o):
        assert g.dtype == dtype and rel_err(g.cpu(), r) < out_tol
    for g, r in zip(got_g, ref_g):
        assert g.dtype == dtype and rel_err(g.cpu(), r) < grad_tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_source_features_as_value(dtype):
    x = features(2, 8, 6, 7, dtype)
    idx = random_idx(2, 42, 15)
    t = torch.randn(2, 3, 6, 7, dtype=dtype)
    got_o, got_g = run("triton", x.to(DEVICE), idx.to(DEVICE), [None, t.to(DEVICE)], "local", 7)
    ref_o, ref_g = run("reference", x.double(), idx, [None, t.double()], "local", 7)
    out_tol, grad_tol = TOL[dtype]
    assert all(rel_err(g.cpu(), r) < out_tol for g, r in zip(got_o, ref_o))
    assert all(rel_err(g.cpu(), r) < grad_tol for g, r in zip(got_g, ref_g))
