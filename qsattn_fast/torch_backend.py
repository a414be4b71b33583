"""The ``torch`` backend: streaming QS-Attn in plain PyTorch (docs/design.md §2-§4), the portable fallback.

Global mode holds one block of rows x all N keys at a time, ``BLOCK_ELEMS`` attention entries per block
and at least ``MIN_ROWS`` rows: entropies are computed block of rows by block of rows with the
cancellation-free ``H = log1p(R) - T/(1 + R)``; routing saves only the per-row log-sum-exp and its
backward recomputes the attention rows from it. Local mode works on the window x window neighbourhoods directly (entropy: one
shifted product per offset; routing: gathers the neighbourhoods of the selected positions only). Half
inputs are computed in float32.

The global ops and the local entropy are registered with ``torch.library`` (``qsattn::torch_*``)
so that ``torch.compile`` treats them as opaque calls instead of unrolling the block loops; the local
routing is plain differentiable PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import compute_dtype, register_route_global_autograd, rows, stable_select
from .registry import Backend, register_backend

#: Attention entries (rows x keys) held at once per block; 2**18 fp32 values = 1 MiB, cache-sized.
BLOCK_ELEMS = 1 << 18
#: Query rows per block, at least: each block's product reads all N keys, so at large N blocks of a few
#: rows are bound by streaming F (C=128, N=192^2: 7-row blocks 15.9 s, 64-row blocks 5.7 s, 2 threads).
MIN_ROWS = 64


def _block_rows(n_keys: int) -> int:
    return max(MIN_ROWS, BLOCK_ELEMS // n_keys)


def _entropy_of_logits(s: Tensor, dim: int = -1) -> Tensor:
    """Row entropy of softmax(s) along ``dim``, overwriting ``s``. With m the row max, e = exp(s - m),
    Z = 1 + R (R: the sum without the max's own 1) and T = sum e (s - m) <= 0:
    H = log1p(R) - T / (1 + R), two terms >= 0, so peaked rows (R << eps) keep their digits."""
    m, arg = s.max(dim, keepdim=True)
    e = torch.exp(s.sub_(m))
    rest = e.scatter_(dim, arg, 0.0).sum(dim)
    t = e.mul_(s).sum(dim)
    return torch.log1p(rest).sub_(t.div_(rest.add_(1.0)))


@torch.library.custom_op("qsattn::torch_entropy_global", mutates_args=())
def entropy_global(f: Tensor) -> Tensor:
    """f (B, N, C) -> (B, N): entropy of each row of softmax(f f^T), float32 (float64 for float64)."""
    cd = compute_dtype(f.dtype)
    B, N, _ = f.shape
    out = torch.empty(B, N, dtype=cd, device=f.device)
    bq = _block_rows(N)
    for b in range(B):
        fb = f[b].to(cd)
        for i in range(0, N, bq):
            out[b, i:i + bq] = _entropy_of_logits(fb[i:i + bq] @ fb.T)
    return out


@entropy_global.register_fake
def _(f):
    return f.new_empty(f.shape[:2], dtype=compute_dtype(f.dtype))


@torch.library.custom_op("qsattn::torch_entropy_local", mutates_args=())
def entropy_local(feat: Tensor, window: int) -> Tensor:
    """feat (B, C, H, W) -> (B, H*W): entropy of the softmax over each zero-padded window x window
    neighbourhood, float32 (float64 for float64). Memory O(window^2 * N)."""
    x = feat.to(compute_dtype(feat.dtype))
    B, C, H, W = x.shape
    xp = F.pad(x, (window // 2,) * 4)
    logits = x.new_empty(B, window * window, H, W)
    for dy in range(window):
        for dx in range(window):
            logits[:, dy * window + dx] = (x * xp[:, :, dy:dy + H, dx:dx + W]).sum(1)
    return _entropy_of_logits(logits, dim=1).flatten(1)


@entropy_local.register_fake
def _(feat, window):
    B, _, H, W = feat.shape
    return feat.new_empty(B, H * W, dtype=compute_dtype(feat.dtype))


@torch.library.custom_op("qsattn::torch_route_global", mutates_args=())
def route_global(f: Tensor, idx: Tensor, v: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """f (B, N, C), idx (B, k), values v_i (B, N, C_i) -> out_i = softmax(f[idx] f^T) v_i (B, k, C_i) in
    v_i's dtype, every value routed by the same attention rows, and lse (B, k), the log-sum-exp of each
    attention row (float32; float64 for float64). The signature of qsattn::route_global (csrc/ops.cpp)."""
    cd = compute_dtype(f.dtype)
    B, N, _ = f.shape
    k = idx.shape[1]
    out = [torch.empty(B, k, x.shape[2], dtype=x.dtype, device=f.device) for x in v]
    lse = torch.empty(B, k, dtype=cd, device=f.device)
    bq = _block_rows(N)
    for b in range(B):
        fb, vb = f[b].to(cd), [x[b].to(cd) for x in v]
        q = fb[idx[b]]
        for i in range(0, k, bq):
            s = q[i:i + bq] @ fb.T
            m = s.amax(-1, keepdim=True)
            p = s.sub_(m).exp_()
            z = p.sum(-1, keepdim=True)
            for o, x in zip(out, vb):
                o[b, i:i + bq] = (p @ x).div_(z)
            lse[b, i:i + bq] = (m + z.log()).squeeze(-1)
    return out, lse


@route_global.register_fake
def _(f, idx, v):
    B, k = idx.shape
    return [x.new_empty(B, k, x.shape[2]) for x in v], f.new_empty(B, k, dtype=compute_dtype(f.dtype))


@torch.library.custom_op("qsattn::torch_route_global_backward", mutates_args=())
def route_global_backward(f: Tensor, idx: Tensor, v: list[Tensor], out: list[Tensor], lse: Tensor,
                          grad_out: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Gradients of ``route_global`` w.r.t. f and every v_i, recomputing P = exp(f[idx] f^T - lse) by
    blocks: dV_i = P^T dO_i, dS = P * (sum_i dO_i V_i^T - rowsum_i(dO_i * O_i)), dF = dS^T Q + index_add(idx, dS K)."""
    cd = compute_dtype(f.dtype)
    B, N, C = f.shape
    k = idx.shape[1]
    df = torch.zeros(B, N, C, dtype=cd, device=f.device)
    dv = [torch.zeros(B, N, x.shape[2], dtype=cd, device=f.device) for x in v]
    bq = _block_rows(N)
    for b in range(B):
        fb, vb = f[b].to(cd), [x[b].to(cd) for x in v]
        q = fb[idx[b]]
        g = [x[b].to(cd) for x in grad_out]
        d = sum((gi * o[b].to(cd)).sum(-1, keepdim=True) for gi, o in zip(g, out))
        for i in range(0, k, bq):
            j = min(i + bq, k)
            p = (q[i:j] @ fb.T).sub_(lse[b, i:j, None]).exp_()
            dp = -d[i:j]
            for dvi, gi, x in zip(dv, g, vb):
                dvi[b].addmm_(p.T, gi[i:j])
                dp = dp + gi[i:j] @ x.T
            ds = p.mul_(dp)
            df[b].addmm_(ds.T, q[i:j])
            df[b].index_add_(0, idx[b, i:j], ds @ fb)
    return df.to(f.dtype), [dvi.to(x.dtype) for dvi, x in zip(dv, v)]


@route_global_backward.register_fake
def _(f, idx, v, out, lse, grad_out):
    return torch.empty_like(f), [torch.empty_like(x) for x in v]


register_route_global_autograd(route_global, route_global_backward)


def neighbourhoods(x: Tensor, idx: Tensor, window: int) -> Tensor:
    """x (B, C, H, W), idx (B, k) -> (B, k, window^2, C): the zero-padded neighbourhood of each idx,
    offsets in row-major order (dy, dx). Differentiable w.r.t. x."""
    B, C, H, W = x.shape
    k, r = idx.shape[1], window // 2
    d = torch.arange(window, device=x.device)
    h, w = (idx // W)[..., None, None], (idx % W)[..., None, None]
    pos = ((h + d[:, None]) * (W + 2 * r) + (w + d)).view(B, 1, k * window * window)
    picked = F.pad(x, (r,) * 4).flatten(2).gather(2, pos.expand(B, C, -1))
    return picked.view(B, C, k, window * window).permute(0, 2, 3, 1)


def route_local(feat: Tensor, idx: Tensor, values, window: int) -> tuple[Tensor, ...]:
    """Local routing: softmax over each selected position's neighbourhood of feat weights the same
    neighbourhood of every value. feat (B, C, H, W), idx (B, k) -> tuple of (B, k, C_v)."""
    x = feat.to(compute_dtype(feat.dtype))
    q = rows(x).gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[1]))
    attn = torch.softmax(torch.einsum("bkpc,bkc->bkp", neighbourhoods(x, idx, window), q), dim=-1)
    return tuple(torch.einsum("bkp,bkpc->bkc", attn, neighbourhoods(v.to(x.dtype), idx, window)).to(v.dtype)
                 for v in values)


class TorchBackend(Backend):
    name = "torch"
    summary = "streaming pure PyTorch, O(N*C) memory; the portable fallback"
    devices = ("cpu", "cuda")
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def entropy(self, feat, mode, window, precision, variant):
        if mode == "global":
            return entropy_global(rows(feat))
        return entropy_local(feat, window)

    def select(self, entropy, k):
        return stable_select(entropy, k)

    def route(self, feat, idx, values, mode, window, precision, variant):
        if mode == "local":
            return route_local(feat, idx, values, window)
        out, _ = route_global(rows(feat), idx, [rows(v) for v in values])
        return tuple(out)


register_backend(TorchBackend())
