"""Local routing: each selected position's softmax over its WINDOW x WINDOW zero-padded neighbourhood of
F weights the same neighbourhood of every value map: for selected p, a_p = softmax_o(F_p . F_{p+o}),
out_i,p = sum_o a_p[o] V_i,{p+o}.

Only the k selected neighbourhoods are read (never the unfolded map). Forward: one launch per value map,
one program per (block of BP selected positions, image) forms the (BP, next_pow2(WINDOW^2)) logits
channel by channel and writes out_i; the first launch saves the log-sum-exps lse (B, k), as the other
backends do. Backward, the weights a = exp(S - lse) recomputed in every kernel: per value map,
dA += dO_i . V_i,nb (into a (B, k, W2P) buffer) and dV_i,{p+o} += a[o] dO_i,p by atomic adds
(neighbourhoods of selected positions overlap); then dS = a * (dA - rowsum(a * dA)),
dF_p += sum_o dS[o] F_{p+o} and dF_{p+o} += dS[o] F_p, accumulated in float32 (float64).
fp32 FMAs throughout: the ``precision`` modes do not apply to these memory-bound kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, TRITON_DEVICES, acc_dtype, as_grad, block, implement, selected_neighbourhoods


@triton.jit
def _logits(base, pos, nb, live, inside, real, C, sxc, sxn, acc_t, BP: tl.constexpr, W2P: tl.constexpr):
    """S (BP, W2P) = F_p . F_{p+o}; -inf at the padding offsets (o >= WINDOW^2)."""
    s = tl.zeros((BP, W2P), acc_t)
    for c in range(0, C):
        q = tl.load(base + c * sxc + pos * sxn, mask=live, other=0.0).to(acc_t)
        s += q[:, None] * tl.load(base + c * sxc + nb * sxn, mask=inside, other=0.0).to(acc_t)
    return tl.where(real[None, :], s, float("-inf"))


@triton.jit
def _route_local_fwd_kernel(x_ptr, idx_ptr, v_ptr, out_ptr, lse_ptr, C, CV, H, W, K,
                            sxb, sxc, sxn, svb, svc, svn,
                            WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr, WRITE_LSE: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = x_ptr + b * sxb
    vb = v_ptr + b * svb
    acc_t = lse_ptr.dtype.element_ty
    rm, live, pos, nb, inside, real = selected_neighbourhoods(idx_ptr, b, pid, K, H, W, WINDOW, W2P, BP)
    s = _logits(base, pos, nb, live, inside, real, C, sxc, sxn, acc_t, BP, W2P)
    m = tl.max(s, 1)
    e = tl.exp(s - m[:, None])
    z = tl.sum(e, 1)
    a = e / z[:, None]
    if WRITE_LSE:
        tl.store(lse_ptr + b * K + rm, m + tl.log(z), mask=live)
    for c in range(0, CV):
        val = tl.sum(a * tl.load(vb + c * svc + nb * svn, mask=inside, other=0.0).to(acc_t), 1)
        tl.store(out_ptr + (b * K + rm) * CV + c, val.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _weights(x_ptr, idx_ptr, lse_ptr, C, H, W, K, sxb, sxc, sxn,
             WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr):
    """The saved forward's weights a = exp(S - lse) of one block, with its neighbourhood."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = x_ptr + b * sxb
    acc_t = lse_ptr.dtype.element_ty
    rm, live, pos, nb, inside, real = selected_neighbourhoods(idx_ptr, b, pid, K, H, W, WINDOW, W2P, BP)
    s = _logits(base, pos, nb, live, inside, real, C, sxc, sxn, acc_t, BP, W2P)
    lse = tl.load(lse_ptr + b * K + rm, mask=live, other=0.0)
    return b, base, rm, live, pos, nb, inside, tl.exp(s - lse[:, None])


@triton.jit
def _route_local_bwd_values_kernel(x_ptr, idx_ptr, v_ptr, lse_ptr, go_ptr, da_ptr, dv_ptr, C, CV, H, W, K,
                                   sxb, sxc, sxn, svb, svc, svn,
                                   WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr, FIRST: tl.constexpr):
    """One value map: dA (+)= dO . V_nb, stored per row (each program owns its rows); dV_nb += a dO."""
    b, base, rm, live, pos, nb, inside, a = _weights(x_ptr, idx_ptr, lse_ptr, C, H, W, K, sxb, sxc, sxn,
                                                     WINDOW, W2P, BP)
    N = H * W
    vb = v_ptr + b * svb
    dvb = dv_ptr + b * CV * N
    da_rows = da_ptr + (b * K + rm[:, None]) * W2P + tl.arange(0, W2P)[None, :]
    if FIRST:
        da = tl.zeros((BP, W2P), a.dtype)
    else:
        da = tl.load(da_rows, mask=live[:, None], other=0.0)
    for c in range(0, CV):
        g = tl.load(go_ptr + (b * K + rm) * CV + c, mask=live, other=0.0).to(a.dtype)
        da += g[:, None] * tl.load(vb + c * svc + nb * svn, mask=inside, other=0.0).to(a.dtype)
        tl.atomic_add(dvb + c * N + nb, a * g[:, None], mask=inside)
    tl.store(da_rows, da, mask=live[:, None])


@triton.jit
def _route_local_bwd_feat_kernel(x_ptr, idx_ptr, lse_ptr, da_ptr, dx_ptr, C, H, W, K, sxb, sxc, sxn,
                                 WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr):
    """dS = a * (dA - rowsum(a * dA)); dF_p += dS . F_nb, dF_nb += dS F_p."""
    b, base, rm, live, pos, nb, inside, a = _weights(x_ptr, idx_ptr, lse_ptr, C, H, W, K, sxb, sxc, sxn,
                                                     WINDOW, W2P, BP)
    N = H * W
    dxb = dx_ptr + b * C * N
    da = tl.load(da_ptr + (b * K + rm[:, None]) * W2P + tl.arange(0, W2P)[None, :], mask=live[:, None], other=0.0)
    ds = a * (da - tl.sum(a * da, 1)[:, None])
    for c in range(0, C):
        q = tl.load(base + c * sxc + pos * sxn, mask=live, other=0.0).to(a.dtype)
        kv = tl.load(base + c * sxc + nb * sxn, mask=inside, other=0.0).to(a.dtype)
        tl.atomic_add(dxb + c * N + pos, tl.sum(ds * kv, 1), mask=live)
        tl.atomic_add(dxb + c * N + nb, ds * q[:, None], mask=inside)


def _launch(f, idx, H, W, window):
    """(grid, x = f's (B, C, N) view, constexprs) of the local kernels."""
    K = idx.shape[1]
    w2p = triton.next_power_of_2(window * window)
    bp = block(K, 16, max(16, (8192 if INTERPRET else 1024) // w2p))   # GPU 7x7: 16 rows, no spills
    return (triton.cdiv(K, bp), f.shape[0]), f.transpose(1, 2), dict(WINDOW=window, W2P=w2p, BP=bp)


@implement("route_local", "triton", TRITON_DEVICES)
def route_local(f: torch.Tensor, idx: torch.Tensor, v: list[torch.Tensor], H: int, W: int,
                window: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """f (B, N, C), idx (B, k), v_i (B, N, C_i) -> out_i (B, k, C_i) and lse (B, k), float32 (float64)."""
    grid, x, consts = _launch(f, idx, H, W, window)
    idx = idx.contiguous()
    B, K = idx.shape
    at = acc_dtype(f.dtype)
    lse = torch.empty(B, K, dtype=at, device=f.device)
    outs = []
    for i, vi in enumerate(v):
        vv = vi.transpose(1, 2)
        out = torch.empty(B, K, vi.shape[2], dtype=at, device=f.device)
        _route_local_fwd_kernel[grid](x, idx, vv, out, lse, f.shape[2], vi.shape[2], H, W, K, *x.stride(),
                                      *vv.stride(), WRITE_LSE=i == 0, **consts)
        outs.append(out)
    return outs, lse


@implement("route_local_backward", "triton", TRITON_DEVICES)
def route_local_backward(f: torch.Tensor, idx: torch.Tensor, v: list[torch.Tensor], out: list[torch.Tensor],
                         lse: torch.Tensor, grad_out: list[torch.Tensor], H: int, W: int,
                         window: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradients of ``route_local`` w.r.t. f and every v_i, the weights recomputed from lse."""
    grid, x, consts = _launch(f, idx, H, W, window)
    idx, lse = idx.contiguous(), lse.contiguous()
    B, K = idx.shape
    N, C = H * W, f.shape[2]
    at = acc_dtype(f.dtype)
    da = torch.empty(B, K, consts["W2P"], dtype=at, device=f.device)
    dvs = []
    for i, (vi, g) in enumerate(zip(v, grad_out)):
        vv = vi.transpose(1, 2)
        dv = torch.zeros(B, vi.shape[2], N, dtype=at, device=f.device)
        _route_local_bwd_values_kernel[grid](x, idx, vv, lse, g.contiguous(), da, dv, C, vi.shape[2], H, W, K,
                                             *x.stride(), *vv.stride(), FIRST=i == 0, **consts)
        dvs.append(as_grad(dv.transpose(1, 2), vi))
    dx = torch.zeros(B, C, N, dtype=at, device=f.device)
    _route_local_bwd_feat_kernel[grid](x, idx, lse, da, dx, C, H, W, K, *x.stride(), **consts)
    return as_grad(dx.transpose(1, 2), f), dvs
