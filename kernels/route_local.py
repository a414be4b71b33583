"""Local routing: each selected position's softmax over its WINDOW x WINDOW zero-padded neighbourhood of
F weights the same neighbourhood of the values (concatenated along channels): for selected p,
a_p = softmax_o(F_p . F_{p+o}), out_p = sum_o a_p[o] V_{p+o}.

Only the k selected neighbourhoods are read (never the unfolded map). Forward: one program per (block
of BP selected positions, image) forms the (BP, next_pow2(WINDOW^2)) logits channel by channel, saves
the weights a (B, k, W2P) for the backward and writes out. Backward: dA = dO . V_nb,
dS = a * (dA - rowsum(a * dA)); dF_p += sum_o dS[o] F_{p+o} and dF_{p+o} += dS[o] F_p, dV_{p+o} += a[o] dO_p
by atomic adds (neighbourhoods of selected positions overlap), accumulated in float32 (float64).
fp32 FMAs throughout: the ``precision`` modes do not apply to these memory-bound kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, acc_dtype, block, selected_neighbourhoods


@triton.jit
def _route_local_fwd_kernel(x_ptr, idx_ptr, v_ptr, out_ptr, a_ptr, C, CV, H, W, K,
                            sxb, sxc, sxn, svb, svc, svn,
                            WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = x_ptr + b * sxb
    vb = v_ptr + b * svb
    acc_t = a_ptr.dtype.element_ty
    rm, live, pos, nb, inside, real = selected_neighbourhoods(idx_ptr, b, pid, K, H, W, WINDOW, W2P, BP)
    s = tl.zeros((BP, W2P), acc_t)
    for c in range(0, C):
        q = tl.load(base + c * sxc + pos * sxn, mask=live, other=0.0).to(acc_t)
        s += q[:, None] * tl.load(base + c * sxc + nb * sxn, mask=inside, other=0.0).to(acc_t)
    s = tl.where(real[None, :], s, float("-inf"))
    e = tl.exp(s - tl.max(s, 1)[:, None])
    a = e / tl.sum(e, 1)[:, None]
    tl.store(a_ptr + (b * K + rm[:, None]) * W2P + tl.arange(0, W2P)[None, :], a, mask=live[:, None])
    for c in range(0, CV):
        val = tl.sum(a * tl.load(vb + c * svc + nb * svn, mask=inside, other=0.0).to(acc_t), 1)
        tl.store(out_ptr + (b * K + rm) * CV + c, val.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _route_local_bwd_kernel(x_ptr, idx_ptr, v_ptr, a_ptr, go_ptr, dx_ptr, dv_ptr, C, CV, H, W, K,
                            sxb, sxc, sxn, svb, svc, svn,
                            WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    N = H * W
    base = x_ptr + b * sxb
    vb = v_ptr + b * svb
    dxb = dx_ptr + b * C * N
    dvb = dv_ptr + b * CV * N
    acc_t = a_ptr.dtype.element_ty
    rm, live, pos, nb, inside, real = selected_neighbourhoods(idx_ptr, b, pid, K, H, W, WINDOW, W2P, BP)
    a = tl.load(a_ptr + (b * K + rm[:, None]) * W2P + tl.arange(0, W2P)[None, :], mask=live[:, None], other=0.0)
    da = tl.zeros((BP, W2P), acc_t)
    for c in range(0, CV):
        g = tl.load(go_ptr + (b * K + rm) * CV + c, mask=live, other=0.0).to(acc_t)
        da += g[:, None] * tl.load(vb + c * svc + nb * svn, mask=inside, other=0.0).to(acc_t)
        tl.atomic_add(dvb + c * N + nb, a * g[:, None], mask=inside)
    ds = a * (da - tl.sum(a * da, 1)[:, None])
    for c in range(0, C):
        q = tl.load(base + c * sxc + pos * sxn, mask=live, other=0.0).to(acc_t)
        kv = tl.load(base + c * sxc + nb * sxn, mask=inside, other=0.0).to(acc_t)
        tl.atomic_add(dxb + c * N + pos, tl.sum(ds * kv, 1), mask=live)
        tl.atomic_add(dxb + c * N + nb, ds * q[:, None], mask=inside)


def _launch(feat, idx, v, window):
    B, C, H, W = feat.shape
    K = idx.shape[1]
    w2p = triton.next_power_of_2(window * window)
    bp = block(K, 16, max(16, (8192 if INTERPRET else 1024) // w2p))   # GPU 7x7: 16 rows, no spills
    x, vv = feat.reshape(B, C, H * W), v.reshape(B, v.shape[1], H * W)
    args = (C, v.shape[1], H, W, K, *x.stride(), *vv.stride())
    return (triton.cdiv(K, bp), B), x, vv, args, dict(WINDOW=window, W2P=w2p, BP=bp)


@torch.library.custom_op("qsattn::triton_route_local", mutates_args=())
def route_local(feat: torch.Tensor, idx: torch.Tensor, v: torch.Tensor,
                window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """feat (B, C, H, W), idx (B, k), v (B, C_v, H, W) -> out (B, k, C_v) in v's dtype and the local
    attention weights (B, k, next_pow2(window^2)) (float32; float64 for float64; padding columns 0)."""
    grid, x, vv, args, consts = _launch(feat, idx.contiguous(), v, window)
    B, K = idx.shape
    out = torch.empty(B, K, v.shape[1], dtype=v.dtype, device=feat.device)
    a = torch.empty(B, K, consts["W2P"], dtype=acc_dtype(feat.dtype), device=feat.device)
    _route_local_fwd_kernel[grid](x, idx.contiguous(), vv, out, a, *args, **consts)
    return out, a


@route_local.register_fake
def _(feat, idx, v, window):
    B, K = idx.shape
    w2p = triton.next_power_of_2(window * window)
    return v.new_empty(B, K, v.shape[1]), feat.new_empty(B, K, w2p, dtype=acc_dtype(feat.dtype))


@torch.library.custom_op("qsattn::triton_route_local_backward", mutates_args=())
def route_local_backward(feat: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, attn: torch.Tensor,
                         grad_out: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``route_local`` w.r.t. feat and v from the saved weights ``attn``."""
    grid, x, vv, args, consts = _launch(feat, idx, v, window)
    at = acc_dtype(feat.dtype)
    dx = torch.zeros(feat.shape, dtype=at, device=feat.device)
    dv = torch.zeros(v.shape, dtype=at, device=feat.device)
    _route_local_bwd_kernel[grid](x, idx.contiguous(), vv, attn, grad_out.contiguous(), dx, dv, *args, **consts)
    return dx.to(feat.dtype), dv.to(v.dtype)


@route_local_backward.register_fake
def _(feat, idx, v, attn, grad_out, window):
    return feat.new_empty(feat.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    feat, idx, v, window = inputs
    ctx.window = window
    ctx.save_for_backward(feat, idx, v, output[1])


def _backward(ctx, grad_out, grad_attn):
    dfeat, dv = route_local_backward(*ctx.saved_tensors, grad_out, ctx.window)
    return dfeat, None, dv, None


route_local.register_autograd(_backward, setup_context=_setup)
