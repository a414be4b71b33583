"""qsattn::route_local and route_local_backward (csrc/route_local_cpu.cpp) against the reference:
outputs fp32 to 2e-4 and fp64 to 1e-12, borders and windows larger than the map, float64 gradcheck
(repeated and overlapping neighbourhoods), fp32 gradients, bad inputs, opcheck of both ops."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast import native

from conftest import features, rel_err

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))


def rand_idx(B, N, k):
    return torch.stack([torch.randperm(N)[:k] for _ in range(B)])


@pytest.mark.parametrize("B,C,H,W,k", [(1, 8, 7, 9, 13), (2, 5, 6, 11, 66), (3, 3, 5, 5, 1)])
@pytest.mark.parametrize("window", [3, 7])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_forward_against_reference(B, C, H, W, k, window, dtype, tol):
    x, t = features(B, C, H, W, dtype, scale=1.0), features(B, C + 3, H, W, dtype)
    idx = rand_idx(B, H * W, k)
    got = q.route(x, idx, [x, t], "local", window, backend="native")
    ref = q.route(x.double(), idx, [x.double(), t.double()], "local", window, backend="reference")
    assert [g.dtype for g in got] == [dtype, dtype] and got[1].shape == (B, k, C + 3)
    assert all(rel_err(g, r) < tol for g, r in zip(got, ref))


def test_borders_and_windows_larger_than_the_map():
    x, v = features(2, 3, 4, 5, torch.float64), features(2, 2, 4, 5, torch.float64)
    idx = torch.tensor([[0, 4, 15, 19, 7], [19, 0, 10, 9, 2]])
    for window in (1, 3, 7, 9, 11):
        out = q.route(x, idx, [x, v], "local", window, backend="native")
        ref = q.route(x, idx, [x, v], "local", window, backend="reference")
        assert all(rel_err(o, r) < 1e-12 for o, r in zip(out, ref))


@pytest.mark.parametrize("window", [3, 5])
def test_gradcheck_float64(window):
    x = features(2, 3, 4, 5, torch.float64, requires_grad=True)
    t = features(2, 2, 4, 5, torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 6, 6, 7, 19, 12], [3, 1, 2, 2, 18, 10]])        # overlapping and repeated
    assert torch.autograd.gradcheck(lambda a, b: q.route(a, idx, [a, b], "local", window, backend="native"),
                                    (x, t))


def test_fp32_gradients_against_reference():
    """C = 70 > the 64-channel scatter chunk, so the backward's channel chunks are exercised."""
    x, t = features(2, 70, 6, 5, requires_grad=True), features(2, 5, 6, 5, requires_grad=True)
    idx = rand_idx(2, 30, 11)
    grads = []
    for be in ("native", "reference"):
        a, b = q.route(x, idx, [x, t], "local", 7, backend=be)
        (a.square().sum() + b.sum()).backward()
        grads.append((x.grad.clone(), t.grad.clone()))
        x.grad = t.grad = None
    for g, r in zip(*grads):
        assert rel_err(g, r) < 2e-4


@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 12, 3), torch.tensor([[0, 12]]), torch.randn(1, 12, 2), 3, 4, 3), "idx: indices must lie"),
    ((torch.randn(1, 12, 3), torch.tensor([[0, 1]]), torch.randn(1, 12, 2), 3, 5, 3), "H, W: H\\*W must equal"),
    ((torch.randn(1, 12, 3), torch.tensor([[0, 1]]), torch.randn(1, 12, 2), 3, 4, 2), "window: must be"),
    ((torch.randn(1, 12, 3), torch.tensor([[0, 1]]), torch.randn(1, 11, 2), 3, 4, 3), "v: expected shape"),
])
def test_bad_inputs(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.qsattn.route_local(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    f = torch.randn(2, 20, 5, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 20, 3, dtype=dtype, requires_grad=True)
    idx = rand_idx(2, 20, 6)
    out, lse = torch.ops.qsattn.route_local(f, idx, v, 4, 5, 3)
    torch.library.opcheck(torch.ops.qsattn.route_local.default, (f, idx, v, 4, 5, 3))
    torch.library.opcheck(torch.ops.qsattn.route_local_backward.default,
                          (f.detach(), idx, v.detach(), out.detach(), lse.detach(), torch.randn_like(out), 4, 5, 3))
