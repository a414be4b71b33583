"""Radix top-k selection kernel (kernels/select.py): exactly argsort(stable=True)[:, :k] (ties, signs,
-0.0, k = 1 and k = N), and valid selections on the entropies of real feature maps."""
import pytest
import torch

from qsattn_fast import OP_MODES, entropy, select

from support.numerics import assert_valid_selection, features, op, stable
from support.triton_env import DEVICE

SELECT = op("select", "triton")


@pytest.mark.parametrize("B,N,k", [(1, 1, 1), (2, 37, 5), (3, 200, 200), (2, 1000, 17), (1, 5000, 256), (3, 4099, 1)])
def test_equals_stable_argsort_with_ties(B, N, k):
    e = torch.randn(B, N)
    e[:, ::2] = (e[:, ::2] * 3).round()          # many exact ties, negative values, zeros
    if N > 3:
        e[0, 0], e[0, 3] = -0.0, 0.0
    got = SELECT(e.to(DEVICE), k)
    assert got.dtype == torch.int64
    assert torch.equal(got.cpu(), stable(e, k))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_entropies(dtype):
    e = torch.rand(2, 300).to(dtype)             # half precision: plenty of ties
    assert torch.equal(select(e.to(DEVICE), 50, backend="triton").cpu(), stable(e, 50))


def test_all_equal_and_extremes():
    e = torch.zeros(2, 70)
    e[1, 5], e[1, 9] = float("inf"), -float("inf")
    assert torch.equal(SELECT(e.to(DEVICE), 70).cpu(), stable(e, 70))
    assert torch.equal(SELECT(e.to(DEVICE), 3).cpu(), stable(e, 3))


@pytest.mark.parametrize("mode", OP_MODES["entropy"])
def test_valid_on_entropies(mode):
    x = features(3, 16, 9, 11, scale=0.5).to(DEVICE)
    ent = entropy(x, mode, 5, backend="triton")
    ref = entropy(x.double().cpu(), mode, 5, backend="reference")
    for k in (1, 40, 99):
        assert_valid_selection(select(ent, k, backend="triton").cpu(), ref, k, tol=2e-4 * float(ref.max()))


def test_float64_entropies():
    e = torch.randn(2, 123, dtype=torch.float64)
    assert torch.equal(select(e.to(DEVICE), 31, backend="triton").cpu(), stable(e, 31))
