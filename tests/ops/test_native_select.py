"""qsattn::select.native (csrc/select_cpu.cpp): exactly argsort(stable=True)[:, :k] for random
values, heavy ties, k = 1 and k = N, NaN (sorted last like argsort), fp32/fp64; bad k; opcheck."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast.backends import native

from support.numerics import op, stable

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))


@pytest.mark.parametrize("B,N", [(1, 1), (1, 37), (2, 300), (3, 4097)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_stable_argsort(B, N, dtype):
    e = torch.randn(B, N, dtype=dtype)
    for k in sorted({1, max(1, N // 7), N}):
        assert torch.equal(q.select(e, k, backend="native"), stable(e, k))


@pytest.mark.parametrize("levels", [1, 2, 5])
def test_ties_broken_by_lower_index(levels):
    e = torch.randint(0, levels, (3, 257)).float()
    e[1, ::2] = -0.0                                        # -0.0 == 0.0: a tie, not an order
    for k in (1, 16, 128, 257):
        assert torch.equal(op("select", "native")(e, k), stable(e, k))


def test_nan_sorts_last():
    e = torch.randn(2, 50)
    e[0, [3, 17, 40]] = float("nan")
    e[1, :45] = float("nan")
    for k in (10, 47, 50):
        assert torch.equal(op("select", "native")(e, k), stable(e, k))


def test_half_entropies_are_upcast():
    e = torch.randn(2, 99).half()
    assert torch.equal(q.select(e, 20, backend="native"), stable(e.float(), 20))


@pytest.mark.parametrize("k", [0, 38, -1])
def test_bad_k(k):
    with pytest.raises(RuntimeError, match="k: must lie in"):
        op("select", "native")(torch.randn(2, 37), k)


def test_bad_entropy():
    with pytest.raises(RuntimeError, match="entropy: expected a 2-D tensor"):
        op("select", "native")(torch.randn(37), 3)
