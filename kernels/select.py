"""Top-k selection: per image the k smallest entropies ascending, ties by the lower index, i.e.
``argsort(entropy, stable=True)[:, :k]``, without sorting all N values.

One program per image. The float32 values are mapped to order-preserving integer keys (-0.0 taken as
+0.0); eight radix passes of 4 bits, each a 16-bin histogram of the keys that share the prefix found so
far, find the k-th smallest key K* and how many keys equal to K* are needed (r). A last pass writes the
survivors (keys < K*, then the first r keys == K* by index) in index order, and a stable sort of those k
values (torch.sort, k elements) gives the answer. Cost: 9 reads of N values + a sort of k.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qsattn_fast._common import stable_select

from ._common import INTERPRET, TRITON_DEVICES, block, implement


@triton.jit
def _keys(base, rn, N):
    """Load float32 values at rn (< N) and map them to int64 keys in [0, 2^32) with the same order."""
    x = tl.load(base + rn, mask=rn < N, other=0.0)
    x = tl.where(x == 0.0, 0.0, x)                          # -0.0 -> +0.0 (argsort treats them equal)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, (~bits).to(tl.int64), bits.to(tl.int64) + 2147483648)
    return x, key


@triton.jit
def _select_kernel(e_ptr, vals_ptr, idx_ptr, N, k, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    base = e_ptr + b * N
    bins = tl.arange(0, 16)
    prefix = tl.zeros((), tl.int64)                         # the high digits of K* found so far
    r = k                                                   # rank of K* among keys sharing the prefix
    for p in tl.static_range(8):
        shift = 28 - 4 * p
        hist = tl.zeros((16,), tl.int32)
        for n0 in range(0, N, BLOCK):
            rn = n0 + tl.arange(0, BLOCK)
            _, key = _keys(base, rn, N)
            part = key >> shift
            same = (rn < N) & ((part >> 4) == prefix)
            hit = ((part & 15)[:, None] == bins[None, :]) & same[:, None]
            hist += tl.sum(hit.to(tl.int32), 0)
        below = tl.cumsum(hist, 0) < r
        prefix = prefix * 16 + tl.sum(below.to(tl.int64), 0)
        r = r - tl.sum(tl.where(below, hist, 0), 0)
    taken = 0
    eq_seen = 0
    for n0 in range(0, N, BLOCK):
        rn = n0 + tl.arange(0, BLOCK)
        x, key = _keys(base, rn, N)
        live = rn < N
        eq = live & (key == prefix)
        eq_rank = eq_seen + tl.cumsum(eq.to(tl.int32), 0)
        take = (live & (key < prefix)) | (eq & (eq_rank <= r))
        slot = taken + tl.cumsum(take.to(tl.int32), 0) - 1
        tl.store(vals_ptr + b * k + slot, x, mask=take)
        tl.store(idx_ptr + b * k + slot, rn.to(tl.int64), mask=take)
        taken += tl.sum(take.to(tl.int32), 0)
        eq_seen += tl.sum(eq.to(tl.int32), 0)


@implement("select", "triton", TRITON_DEVICES)
def select(entropy: torch.Tensor, k: int) -> torch.Tensor:
    """entropy (B, N) -> (B, k) int64, equal to argsort(stable=True)[:, :k]. The radix passes key float32
    bits: float64 entropies are sorted by torch instead."""
    if entropy.dtype == torch.float64:
        return stable_select(entropy, k)
    e = entropy.float().contiguous()
    B, N = e.shape
    vals = torch.empty(B, k, dtype=torch.float32, device=e.device)
    idx = torch.empty(B, k, dtype=torch.int64, device=e.device)
    # GPU: 512-value blocks with 8 warps keep the 16-bin one-hot compare in registers (no spills, sm_90).
    _select_kernel[(B,)](e, vals, idx, N, k, BLOCK=block(N, 16, 4096 if INTERPRET else 512),
                         num_warps=4 if INTERPRET else 8)
    order = torch.sort(vals, dim=1, stable=True).indices
    return idx.gather(1, order)
