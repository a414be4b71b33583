"""Local row entropy: for every position, the entropy of the softmax over its WINDOW x WINDOW
neighbourhood of the zero-padded map (out-of-map keys have feature 0, hence logit 0, and count).

One program per (block of BP positions, image). The window offsets form the second axis of a
(BP, next_pow2(WINDOW^2)) logit tile accumulated channel by channel (fp32 FMAs, or float64), so the
tile's halo of neighbours is read through the cache; then H = log1p(Z - 1) - T/Z over the tile's rows
(as in entropy_global.py).
Memory: O(N) output; the window^2 * N logits are never stored. Any odd window.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, TRITON_DEVICES, acc_dtype, block, implement, log1p, neighbours


@triton.jit
def _entropy_local_kernel(x_ptr, out_ptr, C, H, W, sxb, sxc, sxn,
                          WINDOW: tl.constexpr, W2P: tl.constexpr, BP: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    N = H * W
    base = x_ptr + b.to(tl.int64) * sxb
    pos = pid * BP + tl.arange(0, BP)
    live = pos < N
    nb, inside, real = neighbours(pos, H, W, WINDOW, W2P)
    inside = inside & live[:, None]
    acc_t = out_ptr.dtype.element_ty
    s = tl.zeros((BP, W2P), acc_t)
    for c in range(0, C):
        q = tl.load(base + c * sxc + pos * sxn, mask=live, other=0.0).to(acc_t)
        kv = tl.load(base + c * sxc + nb * sxn, mask=inside, other=0.0).to(acc_t)
        s += q[:, None] * kv
    s = tl.where(real[None, :], s, float("-inf"))
    d = tl.where(real[None, :], s - tl.max(s, 1)[:, None], 0.0)
    e = tl.where(real[None, :], tl.exp(d), 0.0)
    own = tl.arange(0, W2P)[None, :] == tl.argmax(s, 1)[:, None]
    rest = tl.sum(tl.where(own, 0.0, e), 1)                 # Z - 1, kept exact for peaked rows
    t = tl.sum(e * d, 1)
    tl.store(out_ptr + b.to(tl.int64) * N + pos, log1p(rest) - t / (1.0 + rest), mask=live)


@implement("entropy_local", "triton", TRITON_DEVICES)
def entropy_local(f: torch.Tensor, H: int, W: int, window: int) -> torch.Tensor:
    """f (B, N, C) rows of an H x W map, odd window -> (B, N) local entropies, float32 (float64 for float64)."""
    B, N, C = f.shape
    x = f.transpose(1, 2)
    out = torch.empty(B, N, dtype=acc_dtype(f.dtype), device=f.device)
    w2p = triton.next_power_of_2(window * window)
    bp = block(N, 16, max(16, (8192 if INTERPRET else 2048) // w2p))
    _entropy_local_kernel[(triton.cdiv(N, bp), B)](x, out, C, H, W, x.stride(0), x.stride(1), x.stride(2),
                                                   WINDOW=window, W2P=w2p, BP=bp)
    return out
