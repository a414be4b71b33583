"""qsattn::route_global.native and route_global_backward.native (csrc/route_global_cpu.cpp) against the
reference: outputs fp32 to 2e-4 and fp64 to 1e-12, float64 gradcheck, gradients of several query blocks
against reference autograd, one-hot rows (exactly no gradient through the attention) and peaked rows
(the pivot form), repeated indices, strided rows, bad inputs, precision None or "ieee" only, opcheck of
both ops."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast.backends import native

from support.numerics import features, op, random_idx, rel_err

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))


@pytest.mark.parametrize("B,C,H,W,k", [(1, 8, 7, 9, 13), (2, 5, 6, 11, 66), (3, 3, 5, 5, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_forward_against_reference(B, C, H, W, k, dtype, tol, cpu_level):
    x, t = features(B, C, H, W, dtype, scale=1.0), features(B, C + 3, H, W, dtype)
    idx = random_idx(B, H * W, k)
    got = q.route(x, idx, [x, t], "global", backend="native")
    ref = q.route(x.double(), idx, [x.double(), t.double()], "global", backend="reference")
    assert [g.dtype for g in got] == [dtype, dtype] and got[1].shape == (B, k, C + 3)
    assert all(rel_err(g, r) < tol for g, r in zip(got, ref))


def test_lse_is_the_row_log_sum_exp():
    f, v = torch.randn(2, 17, 4, dtype=torch.float64), torch.randn(2, 17, 3, dtype=torch.float64)
    idx = random_idx(2, 17, 5)
    _, lse = op("route_global", "native")(f, idx, [v], None)
    q_rows = f.gather(1, idx[..., None].expand(-1, -1, 4))
    assert torch.allclose(lse, torch.logsumexp(q_rows @ f.transpose(1, 2), -1), rtol=1e-12)


def test_gradcheck_float64():
    x = features(2, 3, 3, 5, torch.float64, requires_grad=True)
    t = features(2, 2, 3, 5, torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 4, 4, 9, 14, 7], [3, 1, 2, 2, 2, 0]])          # repeated rows included
    assert torch.autograd.gradcheck(lambda a, b: q.route(a, idx, [a, b], "global", backend="native"), (x, t))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-10)])
def test_gradients_over_several_query_blocks(dtype, tol, cpu_level):
    """N = 1221 and k = N: 2^20 / N = 858 rows per block, so forward and backward run two blocks."""
    x = features(1, 3, 33, 37, dtype, scale=0.8, requires_grad=True)
    t = features(1, 4, 33, 37, dtype, requires_grad=True)
    idx = torch.randperm(1221)[None]
    w1, w2 = torch.randn(1, 1221, 3, dtype=torch.float64), torch.randn(1, 1221, 4, dtype=torch.float64)
    grads = []
    for be, (a_in, b_in) in (("native", (x, t)), ("reference", (x, t))):
        a, b = q.route(a_in, idx, [a_in, b_in], "global", backend=be)
        ((a * w1.to(dtype)).sum() + (b * w2.to(dtype)).sum()).backward()
        grads.append((a.detach(), b.detach(), x.grad.clone(), t.grad.clone()))
        x.grad = t.grad = None
    for g, r in zip(*grads):
        assert rel_err(g, r) < tol


@pytest.mark.parametrize("dtype,scale,tol", [(torch.float32, 1.5, 1e-6), (torch.float64, 3.0, 1e-12)])
def test_one_hot_rows_give_the_source_map_no_gradient(dtype, scale, tol):
    """256-channel features at this scale make every selected row one-hot (P = 1 at the query's own key,
    exactly 0 elsewhere, in float32 and, at scale 3, in float64), so the exact gradient through the
    attention is 0, and the reference gives 0. So must the native backward: dS at the pivot (the key
    with P > 3/4) is minus the row's other entries, where dP - rowsum(dO * O) would be rounding noise.
    The value still gets P^T dO. Two rows share a pivot (a repeated index)."""
    x = features(2, 256, 6, 7, dtype, scale=scale, requires_grad=True)
    t = features(2, 5, 6, 7, dtype, requires_grad=True)
    idx = random_idx(2, 42, 17)
    idx[:, 1] = idx[:, 0]
    w = torch.randn(2, 17, 5, dtype=dtype)
    grads = {}
    for be in ("reference", "native"):
        (out,) = q.route(x, idx, [t], "global", backend=be)
        grads[be] = torch.autograd.grad((out * w).sum(), [x, t])
    assert not grads["reference"][0].any() and not grads["native"][0].any()
    assert rel_err(grads["native"][1], grads["reference"][1]) < tol


@pytest.mark.parametrize("contiguous", [False, True])
def test_peaked_rows_against_autograd(contiguous, cpu_level):
    """Rows with a pivot key (P > 3/4) that are not one-hot, some pivots in the second key block
    (N = 323 > 256 keys per task): the pivot's dS, minus the row's other entries, is added after the
    key blocks. float64 gradients against autograd of softmax(Q K^T) V, for rows(feat) views of NCHW
    maps and for contiguous rows."""
    x = features(2, 12, 17, 19, torch.float64, scale=1.0)
    f = x.flatten(2).transpose(1, 2)
    f = f.contiguous() if contiguous else f
    v = torch.randn(2, 323, 3, dtype=torch.float64)
    idx = random_idx(2, 323, 40)
    (out,), lse = op("route_global", "native")(f, idx, [v], None)
    g = torch.randn_like(out)
    df, (dv,) = op("route_global_backward", "native")(f, idx, [v], [out], lse, [g], None)
    fr, vr = f.detach().requires_grad_(), v.requires_grad_()
    p = torch.softmax(fr.gather(1, idx[..., None].expand(-1, -1, 12)) @ fr.transpose(1, 2), -1)
    top = p.detach().amax(-1)
    assert int(((top > 0.75) & (top < 1 - 1e-12)).sum()) >= 10
    ref = torch.autograd.grad(((p @ vr) * g).sum(), [fr, vr])
    assert rel_err(df, ref[0]) < 1e-12 and rel_err(dv, ref[1]) < 1e-12


def test_strided_and_contiguous_rows_agree():
    x, v = features(2, 6, 5, 7), features(2, 3, 5, 7)
    f, vr = x.flatten(2).transpose(1, 2), v.flatten(2).transpose(1, 2)
    idx = random_idx(2, 35, 9)
    g = torch.randn(2, 9, 3)
    (out_s,), lse_s = op("route_global", "native")(f, idx, [vr], None)
    (out_c,), lse_c = op("route_global", "native")(f.contiguous(), idx, [vr.contiguous()], None)
    assert torch.allclose(out_s, out_c, rtol=1e-6, atol=1e-7) and torch.allclose(lse_s, lse_c, rtol=1e-6)
    df_s, (dv_s,) = op("route_global_backward", "native")(f, idx, [vr], [out_s], lse_s, [g], None)
    df_c, (dv_c,) = op("route_global_backward", "native")(f.contiguous(), idx, [vr.contiguous()], [out_c],
                                                                  lse_c, [g], None)
    assert torch.allclose(df_s, df_c, rtol=1e-5, atol=1e-6) and torch.allclose(dv_s, dv_c, rtol=1e-5, atol=1e-6)


def test_several_values_equal_their_concatenation():
    """Routing a list of value maps equals routing their channel concatenation, forward and backward."""
    f = torch.randn(2, 23, 5, dtype=torch.float64)
    v1, v2 = torch.randn(2, 23, 3, dtype=torch.float64), torch.randn(2, 23, 4, dtype=torch.float64)
    idx = random_idx(2, 23, 7)
    (o1, o2), lse = op("route_global", "native")(f, idx, [v1, v2], None)
    (oc,), lse_c = op("route_global", "native")(f, idx, [torch.cat([v1, v2], 2)], None)
    assert torch.allclose(torch.cat([o1, o2], 2), oc, rtol=1e-12) and torch.allclose(lse, lse_c, rtol=1e-12)
    g1, g2 = torch.randn_like(o1), torch.randn_like(o2)
    df, (d1, d2) = op("route_global_backward", "native")(f, idx, [v1, v2], [o1, o2], lse, [g1, g2], None)
    dfc, (dc,) = op("route_global_backward", "native")(f, idx, [torch.cat([v1, v2], 2)], [oc], lse_c,
                                                                [torch.cat([g1, g2], 2)], None)
    assert torch.allclose(df, dfc, rtol=1e-12) and torch.allclose(torch.cat([d1, d2], 2), dc, rtol=1e-12)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(2, 9, 4), torch.tensor([[0, 9]] * 2), torch.randn(2, 9, 3)), "idx: indices must lie in"),
    ((torch.randn(2, 9, 4), torch.tensor([[0, -1]] * 2), torch.randn(2, 9, 3)), "idx: indices must lie in"),
    ((torch.randn(2, 9, 4), torch.tensor([[0, 1]] * 2).int(), torch.randn(2, 9, 3)), "idx: expected int64"),
    ((torch.randn(2, 9, 4), torch.tensor([[0, 1]]), torch.randn(2, 9, 3)), "idx: expected shape"),
    ((torch.randn(2, 9, 4), torch.tensor([[0, 1]] * 2), torch.randn(2, 8, 3)), "v: expected shape"),
    ((torch.randn(2, 9, 4), torch.tensor([[0, 1]] * 2), torch.randn(2, 9, 3).double()), "v: dtype"),
    ((torch.randn(9, 4), torch.tensor([[0, 1]] * 2), torch.randn(2, 9, 3)), "f: expected a 3-D tensor"),
])
def test_bad_inputs(args, match):
    f, idx, v = args
    with pytest.raises(RuntimeError, match=match):
        op("route_global", "native")(f, idx, [v], None)


def test_backward_rejects_mismatched_saved_tensors():
    f, v, idx = torch.randn(1, 9, 4), torch.randn(1, 9, 3), torch.tensor([[0, 5]])
    (out,), lse = op("route_global", "native")(f, idx, [v], None)
    with pytest.raises(RuntimeError, match="grad_out: expected the shape of out"):
        op("route_global_backward", "native")(f, idx, [v], [out], lse, [torch.randn(1, 2, 4)], None)
    with pytest.raises(RuntimeError, match="lse: expected shape"):
        op("route_global_backward", "native")(f, idx, [v], [out], lse[:, :1], [torch.randn_like(out)], None)
    with pytest.raises(RuntimeError, match="one tensor per value"):
        op("route_global_backward", "native")(f, idx, [v], [out, out], lse, [torch.randn_like(out)], None)
    with pytest.raises(RuntimeError, match="v: expected at least one"):
        op("route_global_backward", "native")(f, idx, [], [], lse, [], None)


def test_precision_ieee_only():
    """precision None or "ieee" (the same plain arithmetic), forward and backward; others raise."""
    f, v, idx = torch.randn(1, 9, 4), torch.randn(1, 9, 3), torch.tensor([[0, 5]])
    (out,), lse = op("route_global", "native")(f, idx, [v], None)
    (out_i,), lse_i = op("route_global", "native")(f, idx, [v], "ieee")
    assert torch.equal(out, out_i) and torch.equal(lse, lse_i)
    g = torch.randn_like(out)
    df, (dv,) = op("route_global_backward", "native")(f, idx, [v], [out], lse, [g], None)
    df_i, (dv_i,) = op("route_global_backward", "native")(f, idx, [v], [out], lse, [g], "ieee")
    assert torch.equal(df, df_i) and torch.equal(dv, dv_i)
    for precision in ("tf32", "tf32x3", "bf16"):
        with pytest.raises(RuntimeError, match="precision: .*ieee"):
            op("route_global", "native")(f, idx, [v], precision)
        with pytest.raises(RuntimeError, match="precision: .*ieee"):
            op("route_global_backward", "native")(f, idx, [v], [out], lse, [g], precision)
