"""Global row entropy: H_i = -sum_j A_ij log A_ij with A = softmax(F F^T), F the (N, C) rows of one image.

One program per (block of BM query rows, image) streams the keys in blocks of BN: S = Q K^T (channels in
chunks of BC), then the online, cancellation-free update of docs/design.md §2 on (m, Z, T);
H = log Z - T/Z. Z is kept as 1 + R, R the sum without the current max's own term, and
H = log1p(R) - T/(1 + R): for peaked rows (R below fp32's epsilon) log Z would round to 0 and lose the
entropy's leading digits.
Nothing of size N x N (or k x N) is written; the output is (B, N). FLOPs: 2 N^2 C per image.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, TRITON_DEVICES, acc_dtype, block, dot_precision, fill_sms, implement, log1p, mm


@triton.jit
def _entropy_global_kernel(x_ptr, out_ptr, N, C, sxb, sxc, sxn,
                           BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
                           DOT_PREC: tl.constexpr, INTERP: tl.constexpr):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    base = x_ptr + b.to(tl.int64) * sxb
    rm = pid_m * BM + tl.arange(0, BM)
    rc = tl.arange(0, BC)
    acc_t = out_ptr.dtype.element_ty
    m = tl.full((BM,), float("-inf"), acc_t)
    r = tl.zeros((BM,), acc_t)                              # Z - 1: the sum without the max's own 1
    t = tl.zeros((BM,), acc_t)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        s = tl.zeros((BM, BN), acc_t)
        for c0 in range(0, C, BC):
            cc = c0 + rc
            q = tl.load(base + cc[None, :] * sxc + rm[:, None] * sxn,
                        mask=(rm[:, None] < N) & (cc[None, :] < C), other=0.0)
            kt = tl.load(base + cc[:, None] * sxc + rn[None, :] * sxn,
                         mask=(cc[:, None] < C) & (rn[None, :] < N), other=0.0)
            s = mm(q, kt, s, DOT_PREC, INTERP)
        valid = rn[None, :] < N
        s = tl.where(valid, s, float("-inf"))
        blk_max = tl.max(s, 1)
        new = blk_max > m                                   # this block holds the new row max
        m_new = tl.maximum(m, blk_max)
        delta = tl.where(m > float("-inf"), m - m_new, 0.0)  # <= 0
        alpha = tl.exp(m - m_new)                           # 0 on the first block
        d = tl.where(valid, s - m_new[:, None], 0.0)
        e = tl.where(valid, tl.exp(d), 0.0)
        own = new[:, None] & (tl.arange(0, BN)[None, :] == tl.argmax(s, 1)[:, None])
        t = alpha * (t + delta * (1.0 + r)) + tl.sum(e * d, 1)
        r = tl.where(new, alpha * (1.0 + r), r) + tl.sum(tl.where(own, 0.0, e), 1)
        m = m_new
    h = log1p(r) - t / (1.0 + r)
    tl.store(out_ptr + b.to(tl.int64) * N + rm, h, mask=rm < N)


@implement("entropy_global", "triton", TRITON_DEVICES)
def entropy_global(f: torch.Tensor, precision: str | None) -> torch.Tensor:
    """f (B, N, C) -> (B, N): entropy of every row of softmax(F F^T); float32 (float64 for float64).
    ``precision`` (fp32 inputs): None (tf32x3), "ieee", "tf32x3", "tf32", "bf16"."""
    B, N, C = f.shape
    x = f.transpose(1, 2)                    # (B, C, N), read through strides
    out = torch.empty(B, N, dtype=acc_dtype(f.dtype), device=f.device)
    # GPU: 64 x 64 tiles, 32 channels, 8 warps: no register spills at fp32/tf32x3 on sm_90
    # (tests/support/aot_compile.py), query blocks halved until the grid fills the GPU; the interpreter takes
    # blocks of up to 128 (fewer interpreted steps).
    bm = bn = block(N, 16, 128 if INTERPRET else 64)
    bm = fill_sms(bm, lambda m: B * triton.cdiv(N, m), f.device)
    bc = block(C, 16, 128 if INTERPRET else 32)
    _entropy_global_kernel[(triton.cdiv(N, bm), B)](x, out, N, C, x.stride(0), x.stride(1), x.stride(2),
                                                   BM=bm, BN=bn, BC=bc, DOT_PREC=dot_precision(f.dtype, precision),
                                                   INTERP=INTERPRET, num_warps=4 if INTERPRET else 8)
    return out
