"""Global routing: out = softmax(Q K^T) V with Q = F[idx] (k selected rows), K = F (all N rows of the
image), V one or more value maps concatenated along channels (source and target share the attention).

Forward: one program per (block of BM selected rows, block of BV value channels, image) streams the
keys with the online softmax and saves the per-row log-sum-exp (B, k). Backward (flash-attention
style, P = exp(Q K^T - lse) recomputed, docs/design.md §3): with D = rowsum(dO * O) and dS = P * (dO V^T - D),
one kernel per (key block, output-channel block) accumulates dK = dS^T Q (channels < C, also adding
its share dS K of dQ by atomic adds, so the sum order over key blocks is not deterministic on GPUs) or
dV = P^T dO (channels >= C) over the k selected rows; dF = dK + index_add(idx, dQ). Nothing of size
k x N is stored. The value and output channel blocks trade parallelism for recomputation of S (and dP).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, acc_dtype, block, dot_precision, fill_sms, mm, selected_rows


def _precisions(dtype, precision):
    """(DOT_PREC of Q K^T, PREC2 of the products with computed probabilities). For half inputs the
    second-stage products run on fp32 operands at tf32x3 so that P is not rounded to half."""
    first = dot_precision(dtype, precision)
    second = "tf32x3" if dtype in (torch.float16, torch.bfloat16) else first
    return first, second


@triton.jit
def _scores(base, qi, rm_live, rn, N, C, sxc, sxn, acc_t,
            BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr):
    """S = F[qi] F[rn]^T, (BM, BN), channels in chunks of BC."""
    rc = tl.arange(0, BC)
    s = tl.zeros((BM, BN), acc_t)
    for c0 in range(0, C, BC):
        cc = c0 + rc
        q = tl.load(base + cc[None, :] * sxc + qi[:, None] * sxn, mask=rm_live[:, None] & (cc[None, :] < C),
                    other=0.0)
        kt = tl.load(base + cc[:, None] * sxc + rn[None, :] * sxn, mask=(cc[:, None] < C) & (rn[None, :] < N),
                     other=0.0)
        s = mm(q, kt, s, DOT_PREC, INTERP)
    return s


@triton.jit
def _probs(base, qi, rm_live, lse, rn, N, C, sxc, sxn, acc_t,
           BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr):
    """P = exp(S - lse) recomputed, (BM, BN); 0 outside the k rows and the N keys."""
    s = _scores(base, qi, rm_live, rn, N, C, sxc, sxn, acc_t, BM, BN, BC, DOT_PREC, INTERP)
    return tl.where(rm_live[:, None] & (rn[None, :] < N), tl.exp(s - lse[:, None]), 0.0)


@triton.jit
def _grad_scores(dob, vb, rm_live, rn, N, CV, sgc, svc, svn, acc_t,
                 BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, PREC2: tl.constexpr, INTERP: tl.constexpr):
    """dP = dO V^T, (BM, BN): dO rows of this block (row stride CV), V columns rn."""
    rc = tl.arange(0, BC)
    rm = tl.arange(0, BM)
    dp = tl.zeros((BM, BN), acc_t)
    for c0 in range(0, CV, BC):
        cc = c0 + rc
        do = tl.load(dob + rm[:, None] * CV + cc[None, :] * sgc, mask=rm_live[:, None] & (cc[None, :] < CV),
                     other=0.0).to(acc_t)
        vt = tl.load(vb + cc[:, None] * svc + rn[None, :] * svn, mask=(cc[:, None] < CV) & (rn[None, :] < N),
                     other=0.0).to(acc_t)
        dp = mm(do, vt, dp, PREC2, INTERP)
    return dp


@triton.jit
def _route_fwd_kernel(x_ptr, idx_ptr, v_ptr, out_ptr, lse_ptr, N, C, CV, K,
                      sxb, sxc, sxn, svb, svc, svn,
                      BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr,
                      DOT_PREC: tl.constexpr, PREC2: tl.constexpr, INTERP: tl.constexpr):
    """Per (block of BM selected rows, block of BV value channels): online softmax over key blocks,
    out = softmax(Q K^T) V for those channels; the first channel block also stores lse = m + log l."""
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    base = x_ptr + b * sxb
    vb = v_ptr + b * svb
    acc_t = lse_ptr.dtype.element_ty
    rm, live, qi = selected_rows(idx_ptr, b, pid_m, K, BM)
    rv = pid_v * BV + tl.arange(0, BV)
    m = tl.full((BM,), float("-inf"), acc_t)
    l = tl.zeros((BM,), acc_t)
    acc = tl.zeros((BM, BV), acc_t)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        valid = rn[None, :] < N
        s = _scores(base, qi, live, rn, N, C, sxc, sxn, acc_t, BM, BN, BC, DOT_PREC, INTERP)
        m_new = tl.maximum(m, tl.max(tl.where(valid, s, float("-inf")), 1))
        alpha = tl.exp(m - m_new)
        p = tl.where(valid, tl.exp(s - m_new[:, None]), 0.0)
        l = alpha * l + tl.sum(p, 1)
        vt = tl.load(vb + rv[None, :] * svc + rn[:, None] * svn, mask=(rn[:, None] < N) & (rv[None, :] < CV),
                     other=0.0).to(acc_t)
        acc = mm(p, vt, acc * alpha[:, None], PREC2, INTERP)
        m = m_new
    out = acc / l[:, None]
    tl.store(out_ptr + (b * K + rm[:, None]) * CV + rv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=live[:, None] & (rv[None, :] < CV))
    if pid_v == 0:
        tl.store(lse_ptr + b * K + rm, m + tl.log(l), mask=live)


@triton.jit
def _route_bwd_kernel(x_ptr, idx_ptr, v_ptr, lse_ptr, d_ptr, go_ptr, dk_ptr, dv_ptr, dq_ptr, N, C, CV, K,
                      sxb, sxc, sxn, svb, svc, svn,
                      BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BO: tl.constexpr,
                      DOT_PREC: tl.constexpr, PREC2: tl.constexpr, INTERP: tl.constexpr):
    """Per (key block rn, output channel block ro): for ro < C, dK[ro, rn] = sum over the k rows of
    dS^T Q[:, ro], and dQ[:, ro] += dS K[rn, ro] by atomic adds (every key block adds its share);
    for the blocks past C, dV[ro - C, rn] = P^T dO."""
    pid_n = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    base = x_ptr + b * sxb
    vb = v_ptr + b * svb
    acc_t = lse_ptr.dtype.element_ty
    n_dk = tl.cdiv(C, BO)
    is_dk = pid_o < n_dk
    ro = tl.where(is_dk, pid_o, pid_o - n_dk) * BO + tl.arange(0, BO)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BO), acc_t)
    kc = tl.load(base + ro[None, :] * sxc + rn[:, None] * sxn, mask=(rn[:, None] < N) & (ro[None, :] < C),
                 other=0.0).to(acc_t)                       # K[rn, ro], for dQ
    for i in range(0, tl.cdiv(K, BM)):
        rm, live, qi = selected_rows(idx_ptr, b, i, K, BM)
        lse = tl.load(lse_ptr + b * K + rm, mask=live, other=float("inf"))
        p = _probs(base, qi, live, lse, rn, N, C, sxc, sxn, acc_t, BM, BN, BC, DOT_PREC, INTERP)
        dob = go_ptr + (b * K + i * BM) * CV
        if is_dk:
            dp = _grad_scores(dob, vb, live, rn, N, CV, 1, svc, svn, acc_t, BM, BN, BC, PREC2, INTERP)
            dd = tl.load(d_ptr + b * K + rm, mask=live, other=0.0)
            ds = p * (dp - dd[:, None])
            q = tl.load(base + ro[None, :] * sxc + qi[:, None] * sxn, mask=live[:, None] & (ro[None, :] < C),
                        other=0.0).to(acc_t)
            acc = mm(tl.trans(ds), q, acc, PREC2, INTERP)
            dq = mm(ds, kc, tl.zeros((BM, BO), acc_t), PREC2, INTERP)
            tl.atomic_add(dq_ptr + (b * K + rm[:, None]) * C + ro[None, :], dq,
                          mask=live[:, None] & (ro[None, :] < C))
        else:
            do = tl.load(dob + tl.arange(0, BM)[:, None] * CV + ro[None, :], mask=live[:, None] & (ro[None, :] < CV),
                         other=0.0).to(acc_t)
            acc = mm(tl.trans(p), do, acc, PREC2, INTERP)
    if is_dk:
        tl.store(dk_ptr + (b * C + ro[None, :]) * N + rn[:, None], acc, mask=(ro[None, :] < C) & (rn[:, None] < N))
    else:
        tl.store(dv_ptr + (b * CV + ro[None, :]) * N + rn[:, None], acc,
                 mask=(ro[None, :] < CV) & (rn[:, None] < N))


#: GPU tiles per kernel: the largest found without register spills at fp32/tf32x3 on sm_90 with 8 warps
#: (ahead-of-time compilation, tests/aot_compile.py); BV/BO: value / output channel blocks.
_GPU_TILES = {"fwd": dict(BM=64, BN=64, BC=16, BV=64), "bwd": dict(BM=32, BN=32, BC=16, BO=64)}


def _tiles(kernel, N, C, K, CV):
    """(block sizes, num_warps) for one kernel: the GPU table clamped to the problem, or under the
    interpreter blocks of up to 128 (fewer interpreted steps)."""
    t = _GPU_TILES[kernel]
    cap = (lambda name: 128) if INTERPRET else (lambda name: t[name])
    extents = dict(BM=K, BN=N, BC=max(C, CV) if INTERPRET else C, BV=CV, BO=max(C, CV))
    return {name: block(extents[name], 16, cap(name)) for name in t}, 4 if INTERPRET else 8


@torch.library.custom_op("qsattn::triton_route_global", mutates_args=())
def route_global(feat: torch.Tensor, idx: torch.Tensor, v: torch.Tensor,
                 precision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """feat (B, C, H, W), idx (B, k) int64, v (B, C_v, H, W) -> out = softmax(F[idx] F^T) V (B, k, C_v)
    and lse (B, k), both float32 (float64 for float64): the backward's D = rowsum(dO * O) cancels in
    dO V^T - D, so O is kept unrounded (k x C_v values; the caller casts to the values' dtype)."""
    B, C, H, W = feat.shape
    N, K, CV = H * W, idx.shape[1], v.shape[1]
    x, vv, idx = feat.reshape(B, C, N), v.reshape(B, CV, N), idx.contiguous()
    out = torch.empty(B, K, CV, dtype=acc_dtype(feat.dtype), device=feat.device)
    lse = torch.empty(B, K, dtype=acc_dtype(feat.dtype), device=feat.device)
    blk, warps = _tiles("fwd", N, C, K, CV)
    blk["BM"] = fill_sms(blk["BM"], lambda m: B * triton.cdiv(K, m) * triton.cdiv(CV, blk["BV"]), feat.device)
    p1, p2 = _precisions(feat.dtype, precision)
    grid = (triton.cdiv(K, blk["BM"]), triton.cdiv(CV, blk["BV"]), B)
    _route_fwd_kernel[grid](x, idx, vv, out, lse, N, C, CV, K, *x.stride(), *vv.stride(),
                            DOT_PREC=p1, PREC2=p2, INTERP=INTERPRET, num_warps=warps, **blk)
    return out, lse


@route_global.register_fake
def _(feat, idx, v, precision=None):
    B, K = idx.shape
    return (feat.new_empty(B, K, v.shape[1], dtype=acc_dtype(feat.dtype)),
            feat.new_empty(B, K, dtype=acc_dtype(feat.dtype)))


@torch.library.custom_op("qsattn::triton_route_global_backward", mutates_args=())
def route_global_backward(feat: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          lse: torch.Tensor, grad_out: torch.Tensor,
                          precision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``route_global`` w.r.t. feat (through Q = F[idx] and K = F) and v, P recomputed
    from lse: dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dF = dS^T Q + index_add(idx, dS K)."""
    B, C, H, W = feat.shape
    N, K, CV = H * W, idx.shape[1], v.shape[1]
    x, vv, idx = feat.reshape(B, C, N), v.reshape(B, CV, N), idx.contiguous()
    at = acc_dtype(feat.dtype)
    go = grad_out.contiguous()
    d = (go.to(at) * out.to(at)).sum(-1)
    dk = torch.empty(B, C, N, dtype=at, device=feat.device)
    dv = torch.empty(B, CV, N, dtype=at, device=feat.device)
    dq = torch.zeros(B, K, C, dtype=at, device=feat.device)
    p1, p2 = _precisions(feat.dtype, precision)
    args = (N, C, CV, K, *x.stride(), *vv.stride())
    blk, warps = _tiles("bwd", N, C, K, CV)
    bo = blk["BO"]
    grid = (triton.cdiv(N, blk["BN"]), triton.cdiv(C, bo) + triton.cdiv(CV, bo), B)
    _route_bwd_kernel[grid](x, idx, vv, lse, d, go, dk, dv, dq, *args, DOT_PREC=p1, PREC2=p2, INTERP=INTERPRET,
                            num_warps=warps, **blk)
    dk.scatter_add_(2, idx[:, None, :].expand(B, C, K), dq.transpose(1, 2))
    return dk.view(feat.shape).to(feat.dtype), dv.view(v.shape).to(v.dtype)


@route_global_backward.register_fake
def _(feat, idx, v, out, lse, grad_out, precision=None):
    return feat.new_empty(feat.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    feat, idx, v, precision = inputs
    ctx.precision = precision
    ctx.save_for_backward(feat, idx, v, *output)


def _backward(ctx, grad_out, grad_lse):
    dfeat, dv = route_global_backward(*ctx.saved_tensors, grad_out, ctx.precision)
    return dfeat, None, dv, None


route_global.register_autograd(_backward, setup_context=_setup)
