"""qsattn::entropy_local.native (csrc/entropy_local_cpu.cpp) against the reference: windows 1..9 including
windows larger than the map (borders: out-of-map keys have logit 0), fp32/fp64, bad inputs, opcheck."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast.backends import native

from support.numerics import features, op, rel_err

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))


@pytest.mark.parametrize("B,C,H,W", [(1, 8, 7, 9), (2, 5, 6, 11), (3, 3, 2, 3)])
@pytest.mark.parametrize("window", [1, 3, 7, 9])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_against_reference(B, C, H, W, window, dtype, tol, cpu_level):
    x = features(B, C, H, W, dtype, scale=1.0)
    got = q.entropy(x, "local", window, backend="native")
    ref = q.entropy(x.double(), "local", window, backend="reference")
    assert got.dtype == dtype and got.shape == (B, H * W)
    if window == 1:
        assert torch.equal(got, torch.zeros_like(got))      # a single key: entropy exactly 0
    else:
        assert rel_err(got, ref) < tol


def test_peaked_rows_keep_fp32_accuracy(cpu_level):
    x = features(2, 256, 6, 5, torch.float32, scale=0.3)
    got = q.entropy(x, "local", 7, backend="native")
    ref = q.entropy(x.double(), "local", 7, backend="reference")
    assert rel_err(got, ref) < 2e-4


def test_zero_map_counts_padding_keys():
    """All logits 0: every position's softmax is uniform over all window^2 keys, padding included."""
    got = op("entropy_local", "native")(torch.zeros(1, 12, 3), 3, 4, 5)
    assert torch.allclose(got, torch.full_like(got, float(torch.log(torch.tensor(25.)))))


@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 12, 3), 3, 5, 3), "H, W: H\\*W must equal N"),
    ((torch.randn(1, 12, 3), 3, 4, 4), "window: must be a positive odd number"),
    ((torch.randn(12, 3), 3, 4, 3), "f: expected a 3-D tensor"),
])
def test_bad_inputs(args, match):
    with pytest.raises(RuntimeError, match=match):
        op("entropy_local", "native")(*args)
