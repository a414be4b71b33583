"""qsattn::route_local.native and route_local_backward.native (csrc/route_local_cpu.cpp) against the
reference: outputs fp32 to 2e-4 and fp64 to 1e-12, borders and windows larger than the map, float64
gradcheck (repeated and overlapping neighbourhoods), fp32 gradients; a list of value maps routes each
map as if alone; gradients in the layout of the value maps and independent of the thread count; bad
inputs, opcheck of both ops."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast._common import rows
from qsattn_fast.backends import native

from support.numerics import features, op, random_idx, rel_err

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))


@pytest.mark.parametrize("B,C,H,W,k", [(1, 8, 7, 9, 13), (2, 5, 6, 11, 66), (3, 3, 5, 5, 1)])
@pytest.mark.parametrize("window", [3, 7])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_forward_against_reference(B, C, H, W, k, window, dtype, tol, cpu_level):
    x, t = features(B, C, H, W, dtype, scale=1.0), features(B, C + 3, H, W, dtype)
    idx = random_idx(B, H * W, k)
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


def test_fp32_gradients_against_reference(cpu_level):
    """C = 70 > the 64-channel scatter chunk, so the backward's channel chunks are exercised."""
    x, t = features(2, 70, 6, 5, requires_grad=True), features(2, 5, 6, 5, requires_grad=True)
    idx = random_idx(2, 30, 11)
    grads = []
    for be in ("native", "reference"):
        a, b = q.route(x, idx, [x, t], "local", 7, backend=be)
        (a.square().sum() + b.sum()).backward()
        grads.append((x.grad.clone(), t.grad.clone()))
        x.grad = t.grad = None
    for g, r in zip(*grads):
        assert rel_err(g, r) < 2e-4


def route_local(f, idx, v, H, W, window):
    """The native op with its autograd (qsattn_fast/ops.py): ([out_i], lse)."""
    return op("route_local", "native")(f, idx, v, H, W, window)


@pytest.mark.parametrize("B,C,H,W,k,window,channels", [(2, 3, 5, 7, 9, 3, (1, 5)),
                                                       (1, 67, 7, 9, 13, 5, (70, 3))])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-13)])
def test_value_maps_route_as_if_alone(B, C, H, W, k, window, channels, dtype, tol):
    """Two value maps of different channel counts (rows(.) views of NCHW maps; 67 and 70 channels span
    two 64-channel scatter segments) in one call equal each map routed alone: out_i, lse and dv_i
    exactly (the same weights, the same sums), df = the sum of the maps' df to rounding (dS is linear
    in the dO_i; logits ~ 1, so that fp32 rows are not so peaked that dS is rounding noise). Repeated and
    overlapping neighbourhoods."""
    f = rows(features(B, C, H, W, dtype, scale=C ** -0.5)).requires_grad_()
    vs = [rows(features(B, c, H, W, dtype)).requires_grad_() for c in channels]
    idx = random_idx(B, H * W, k)
    idx[:, 1] = idx[:, 0]
    ws = [torch.randn(B, k, c, dtype=dtype) for c in channels]
    outs, lse = route_local(f, idx, vs, H, W, window)
    df, *dvs = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws)), [f, *vs])
    df_alone = torch.zeros_like(f)
    for v, w, out, dv in zip(vs, ws, outs, dvs):
        (out_a,), lse_a = route_local(f, idx, [v], H, W, window)
        df_a, dv_a = torch.autograd.grad((out_a * w).sum(), [f, v])
        assert torch.equal(out, out_a) and torch.equal(lse, lse_a) and torch.equal(dv, dv_a)
        assert dv.stride() == v.stride()                    # in the layout of v_i (NCHW)
        df_alone += df_a
    assert df.stride() == f.stride() and rel_err(df, df_alone) < tol


def test_backward_does_not_depend_on_thread_count():
    """Every element of df and dv_i has one owner task, which adds its terms in a fixed order: the
    backward is bit-identical with 1 and 2 threads (overlapping and repeated neighbourhoods, 70-channel
    maps over two scatter segments, strided and contiguous value maps)."""
    f = torch.randn(2, 63, 70)
    vs = [rows(features(2, 70, 7, 9)), torch.randn(2, 63, 3)]
    idx = random_idx(2, 63, 40)
    idx[:, :5] = idx[:, 5:10]
    outs, lse = route_local(f, idx, vs, 7, 9, 5)
    gs = [torch.randn_like(o) for o in outs]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op("route_local_backward", "native")(f, idx, vs, outs, lse, gs, 7, 9, 5)
        torch.set_num_threads(2)
        two = op("route_local_backward", "native")(f, idx, vs, outs, lse, gs, 7, 9, 5)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and all(torch.equal(a, b) for a, b in zip(one[1], two[1]))


def bad(**kw):
    """Valid arguments of route_local (f (1, 12, 3), a 4 x 3 grid, window 3) with some replaced."""
    args = dict(f=torch.randn(1, 12, 3), idx=torch.tensor([[0, 1]]), v=[torch.randn(1, 12, 2), torch.randn(1, 12, 4)],
                H=4, W=3, window=3)
    return tuple({**args, **kw}.values())


@pytest.mark.parametrize("args,match", [
    (bad(idx=torch.tensor([[0, 12]])), "idx: indices must lie"),
    (bad(W=4), "H, W: H\\*W must equal"),
    (bad(window=2), "window: must be"),
    (bad(v=[]), "v: expected at least one"),
    (bad(v=[torch.randn(1, 12, 2), torch.randn(1, 11, 2)]), "v: expected shape"),
    (bad(v=[torch.randn(1, 12, 2), torch.randn(1, 12, 2, dtype=torch.float64)]), "v: dtype"),
])
def test_bad_inputs(args, match):
    with pytest.raises(RuntimeError, match=match):
        op("route_local", "native")(*args)


def test_backward_rejects_mismatched_saved_tensors():
    f, idx, v, H, W, window = bad()
    outs, lse = op("route_local", "native")(f, idx, v, H, W, window)
    gs = [torch.randn_like(o) for o in outs]
    cases = [((v, outs[:1], lse, gs), "one tensor per value map"),
             ((v, outs, lse, [gs[0], gs[0]]), "grad_out: expected the shape of out"),
             ((v, [outs[1], outs[1]], lse, gs), "out: expected shape"),
             ((v, outs, lse[:, :1], gs), "lse: expected shape")]
    for (vv, oo, ll, gg), match in cases:
        with pytest.raises(RuntimeError, match=match):
            op("route_local_backward", "native")(f, idx, vv, oo, ll, gg, H, W, window)
