"""Global routing: out_i = softmax(Q K^T) V_i with Q = F[idx] (k selected rows), K = F (all N rows of the
image), for each value map V_i of the list (source and target share the attention).

Forward: one launch per value map, one program per (block of BM selected rows, block of BV value
channels, image); it streams the keys with the online softmax, the first launch saves the per-row
log-sum-exp (B, k). Splitting the maps costs nothing: every value channel block recomputes S anyway.
Backward (flash-attention
style, P = exp(Q K^T - lse) recomputed, docs/design.md §3): with D = rowsum(dO * O) and dS = P * (dO V^T - D),
one kernel per (key block, output-channel block) accumulates dK = dS^T Q (channels < C, also adding
its share dS K of dQ by atomic adds, so the sum order over key blocks is not deterministic on GPUs) or
dV_i = P^T dO_i (the blocks past C, map 0's channels then map 1's) over the k selected rows;
dF = dK + index_add(idx, dQ). dP = sum_i dO_i V_i^T needs every map in one kernel: it reads two maps in
place, and a longer list is routed with maps 1.. concatenated into the second slot. Nothing of size
k x N is stored. The value and output channel blocks trade parallelism for recomputation of S (and dP).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    TRITON_DEVICES,
    acc_dtype,
    as_grad,
    block,
    dot_precision,
    fill_sms,
    implement,
    mm,
    selected_rows,
)


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
def _route_global_fwd_kernel(x_ptr, idx_ptr, v_ptr, out_ptr, lse_ptr, N, C, CV, K,
                             sxb, sxc, sxn, svb, svc, svn,
                             BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr,
                             DOT_PREC: tl.constexpr, PREC2: tl.constexpr, INTERP: tl.constexpr,
                             WRITE_LSE: tl.constexpr):
    """Per (block of BM selected rows, block of BV value channels): online softmax over key blocks,
    out = softmax(Q K^T) V for those channels; with WRITE_LSE the first channel block also stores
    lse = m + log l_i."""
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    base = x_ptr + b * sxb
    vb = v_ptr + b * svb
    acc_t = lse_ptr.dtype.element_ty
    rm, live, qi = selected_rows(idx_ptr, b, pid_m, K, BM)
    rv = pid_v * BV + tl.arange(0, BV)
    m = tl.full((BM,), float("-inf"), acc_t)
    l_i = tl.zeros((BM,), acc_t)
    acc = tl.zeros((BM, BV), acc_t)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        valid = rn[None, :] < N
        s = _scores(base, qi, live, rn, N, C, sxc, sxn, acc_t, BM, BN, BC, DOT_PREC, INTERP)
        m_new = tl.maximum(m, tl.max(tl.where(valid, s, float("-inf")), 1))
        alpha = tl.exp(m - m_new)
        p = tl.where(valid, tl.exp(s - m_new[:, None]), 0.0)
        l_i = alpha * l_i + tl.sum(p, 1)
        vt = tl.load(vb + rv[None, :] * svc + rn[:, None] * svn, mask=(rn[:, None] < N) & (rv[None, :] < CV),
                     other=0.0).to(acc_t)
        acc = mm(p, vt, acc * alpha[:, None], PREC2, INTERP)
        m = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + (b * K + rm[:, None]) * CV + rv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=live[:, None] & (rv[None, :] < CV))
    if WRITE_LSE:
        if pid_v == 0:
            tl.store(lse_ptr + b * K + rm, m + tl.log(l_i), mask=live)


@triton.jit
def _route_global_bwd_kernel(x_ptr, idx_ptr, v0_ptr, v1_ptr, lse_ptr, d_ptr, go0_ptr, go1_ptr, dk_ptr, dv0_ptr, dv1_ptr,
                             dq_ptr, N, C, CV0, CV1, K, sxb, sxc, sxn, sv0b, sv0c, sv0n, sv1b, sv1c, sv1n,
                             BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BO: tl.constexpr,
                             DOT_PREC: tl.constexpr, PREC2: tl.constexpr, INTERP: tl.constexpr):
    """Per (key block rn, output channel block): for the first cdiv(C, BO) blocks, dK[ro, rn] = sum over
    the k rows of dS^T Q[:, ro], dS = P * (dO_0 V_0^T + dO_1 V_1^T - D), and dQ[:, ro] += dS K[rn, ro] by
    atomic adds (every key block adds its share); for the next blocks, dV_0[ro, rn] = P^T dO_0, then
    dV_1 (CV1 = 0: no second map)."""
    pid_n = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    base = x_ptr + b * sxb
    vb0 = v0_ptr + b * sv0b
    vb1 = v1_ptr + b * sv1b
    acc_t = lse_ptr.dtype.element_ty
    n_dk = tl.cdiv(C, BO)
    n_dv0 = tl.cdiv(CV0, BO)
    is_dk = pid_o < n_dk
    second = pid_o >= n_dk + n_dv0                          # a dV block of map 1
    if second:
        gop = go1_ptr
        dvp = dv1_ptr
    else:
        gop = go0_ptr
        dvp = dv0_ptr
    cv = tl.where(second, CV1, CV0)
    j = tl.where(is_dk, pid_o, tl.where(second, pid_o - n_dk - n_dv0, pid_o - n_dk))
    ro = j * BO + tl.arange(0, BO)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BO), acc_t)
    kc = tl.load(base + ro[None, :] * sxc + rn[:, None] * sxn, mask=(rn[:, None] < N) & (ro[None, :] < C),
                 other=0.0).to(acc_t)                       # K[rn, ro], for dQ
    for i in range(0, tl.cdiv(K, BM)):
        rm, live, qi = selected_rows(idx_ptr, b, i, K, BM)
        lse = tl.load(lse_ptr + b * K + rm, mask=live, other=float("inf"))
        p = _probs(base, qi, live, lse, rn, N, C, sxc, sxn, acc_t, BM, BN, BC, DOT_PREC, INTERP)
        if is_dk:
            dp = _grad_scores(go0_ptr + (b * K + i * BM) * CV0, vb0, live, rn, N, CV0, 1, sv0c, sv0n, acc_t,
                              BM, BN, BC, PREC2, INTERP)
            dp += _grad_scores(go1_ptr + (b * K + i * BM) * CV1, vb1, live, rn, N, CV1, 1, sv1c, sv1n, acc_t,
                               BM, BN, BC, PREC2, INTERP)
            dd = tl.load(d_ptr + b * K + rm, mask=live, other=0.0)
            ds = p * (dp - dd[:, None])
            q = tl.load(base + ro[None, :] * sxc + qi[:, None] * sxn, mask=live[:, None] & (ro[None, :] < C),
                        other=0.0).to(acc_t)
            acc = mm(tl.trans(ds), q, acc, PREC2, INTERP)
            dq = mm(ds, kc, tl.zeros((BM, BO), acc_t), PREC2, INTERP)
            tl.atomic_add(dq_ptr + (b * K + rm[:, None]) * C + ro[None, :], dq,
                          mask=live[:, None] & (ro[None, :] < C))
        else:
            do = tl.load(gop + (b * K + rm[:, None]) * cv + ro[None, :], mask=live[:, None] & (ro[None, :] < cv),
                         other=0.0).to(acc_t)
            acc = mm(tl.trans(p), do, acc, PREC2, INTERP)
    if is_dk:
        tl.store(dk_ptr + (b * C + ro[None, :]) * N + rn[:, None], acc, mask=(ro[None, :] < C) & (rn[:, None] < N))
    else:
        tl.store(dvp + (b * cv + ro[None, :]) * N + rn[:, None], acc, mask=(ro[None, :] < cv) & (rn[:, None] < N))


#: GPU tiles per kernel: the largest found without register spills at fp32/tf32x3 on sm_90 with 8 warps
#: (ahead-of-time compilation, tests/support/aot_compile.py); BV/BO: value / output channel blocks.
_GPU_TILES = {"fwd": dict(BM=64, BN=64, BC=16, BV=64), "bwd": dict(BM=32, BN=32, BC=16, BO=64)}


def _tiles(kernel, N, C, K, CV):
    """(block sizes, num_warps) for one kernel: the GPU table clamped to the problem, or under the
    interpreter blocks of up to 128 (fewer interpreted steps)."""
    t = _GPU_TILES[kernel]
    cap = (lambda name: 128) if INTERPRET else (lambda name: t[name])
    extents = dict(BM=K, BN=N, BC=max(C, CV) if INTERPRET else C, BV=CV, BO=max(C, CV))
    return {name: block(extents[name], 16, cap(name)) for name in t}, 4 if INTERPRET else 8


@implement("route_global", "triton", TRITON_DEVICES)
def route_global(f: torch.Tensor, idx: torch.Tensor, v: list[torch.Tensor],
                 precision: str | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """f (B, N, C), idx (B, k) int64, v_i (B, N, C_i) -> out_i = softmax(F[idx] F^T) V_i (B, k, C_i) and
    lse (B, k), float32 (float64 for float64): the backward's D = rowsum(dO * O) cancels in dO V^T - D,
    so O is kept unrounded (k x C_i values; the backend casts to the values' dtype)."""
    B, N, C = f.shape
    K = idx.shape[1]
    x, idx = f.transpose(1, 2), idx.contiguous()
    at = acc_dtype(f.dtype)
    lse = torch.empty(B, K, dtype=at, device=f.device)
    p1, p2 = _precisions(f.dtype, precision)
    outs = []
    for i, vi in enumerate(v):
        CV = vi.shape[2]
        vv = vi.transpose(1, 2)
        out = torch.empty(B, K, CV, dtype=at, device=f.device)
        blk, warps = _tiles("fwd", N, C, K, CV)
        blk["BM"] = fill_sms(blk["BM"], lambda m: B * triton.cdiv(K, m) * triton.cdiv(CV, blk["BV"]),  # noqa: B023 (called here)
                             f.device)
        grid = (triton.cdiv(K, blk["BM"]), triton.cdiv(CV, blk["BV"]), B)
        _route_global_fwd_kernel[grid](x, idx, vv, out, lse, N, C, CV, K, *x.stride(), *vv.stride(),
                                       DOT_PREC=p1, PREC2=p2, INTERP=INTERPRET, WRITE_LSE=i == 0,
                                       num_warps=warps, **blk)
        outs.append(out)
    return outs, lse


@implement("route_global_backward", "triton", TRITON_DEVICES)
def route_global_backward(f: torch.Tensor, idx: torch.Tensor, v: list[torch.Tensor], out: list[torch.Tensor],
                          lse: torch.Tensor, grad_out: list[torch.Tensor],
                          precision: str | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradients of ``route_global`` w.r.t. f (through Q = F[idx] and K = F) and every v_i, P recomputed
    from lse: dV_i = P^T dO_i, dS = P * (sum_i dO_i V_i^T - D), D = sum_i rowsum(dO_i * O_i),
    dF = dS^T Q + index_add(idx, dS K)."""
    B, N, C = f.shape
    K = idx.shape[1]
    x, idx = f.transpose(1, 2), idx.contiguous()
    at = acc_dtype(f.dtype)
    go = [g.contiguous() for g in grad_out]
    d = sum((g.to(at) * o.to(at)).sum(-1) for g, o in zip(go, out))
    pair = list(v) if len(v) <= 2 else [v[0], torch.cat(v[1:], 2)]
    gpair = go if len(v) <= 2 else [go[0], torch.cat(go[1:], 2)]
    vv = [t.transpose(1, 2) for t in pair]
    dv = [torch.empty(B, t.shape[2], N, dtype=at, device=f.device) for t in pair]
    cvs = [t.shape[2] for t in pair]
    if len(pair) == 1:                                      # no second map: CV1 = 0, never read
        vv, dv, gpair, cvs = vv * 2, dv * 2, gpair * 2, cvs + [0]
    dk = torch.empty(B, C, N, dtype=at, device=f.device)
    dq = torch.zeros(B, K, C, dtype=at, device=f.device)
    p1, p2 = _precisions(f.dtype, precision)
    blk, warps = _tiles("bwd", N, C, K, max(cvs))
    bo = blk["BO"]
    grid = (triton.cdiv(N, blk["BN"]), sum(triton.cdiv(c, bo) for c in [C] + cvs), B)
    _route_global_bwd_kernel[grid](x, idx, vv[0], vv[1], lse, d, gpair[0], gpair[1], dk, dv[0], dv[1], dq,
                                   N, C, cvs[0], cvs[1], K, *x.stride(), *vv[0].stride(), *vv[1].stride(),
                                   DOT_PREC=p1, PREC2=p2, INTERP=INTERPRET, num_warps=warps, **blk)
    dk.scatter_add_(2, idx[:, None, :].expand(B, C, K), dq.transpose(1, 2))
    dvs = [t.transpose(1, 2) for t in dv[:len(pair)]]
    if len(v) > 2:
        dvs = [dvs[0], *dvs[1].split([t.shape[2] for t in v[1:]], dim=2)]
    return as_grad(dk.transpose(1, 2), f), [as_grad(g, t) for g, t in zip(dvs, v)]
