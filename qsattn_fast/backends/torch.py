"""The ``torch`` backend: streaming QS-Attn in plain PyTorch (docs/design.md §2-§4), the portable fallback.

Global mode holds one block of rows x all N keys at a time, ``BLOCK_ELEMS`` attention entries per block
and at least ``MIN_ROWS`` rows: entropies are computed block of rows by block of rows with the
cancellation-free ``H = log1p(R) - T/(1 + R)``; routing saves only the per-row log-sum-exp and its
backward recomputes the attention rows from it. Local mode works on the window x window neighbourhoods
directly (entropy: one shifted product per offset; routing: gathers the neighbourhoods of the selected
positions only, its backward scatters them back).

Every op is this backend's implementation of the contract of qsattn_fast/ops.py,
``torch.ops.qsattn.<op>.torch``, so that ``torch.compile`` treats them as opaque calls instead of
unrolling the block loops. The backend casts half inputs to float32 before the ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._common import stable_select
from ..ops import acc_dtype, as_grad, implement
from ..registry import register_backend
from .base import FLOAT_DTYPES, Backend

#: Attention entries (rows x keys) held at once per block; 2**18 fp32 values = 1 MiB, cache-sized.
BLOCK_ELEMS = 1 << 18
#: Query rows per block, at least: each block's product reads all N keys, so at large N blocks of a few
#: rows are bound by streaming F (measured in docs/performance.md, "The torch backend's row blocks").
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


def _maps(f: Tensor, H: int, W: int) -> Tensor:
    """Rows f (B, N, C) -> maps (B, C, H, W) (a view when f is rows(.) of an NCHW map)."""
    return f.transpose(1, 2).reshape(f.shape[0], f.shape[2], H, W)


def _check_precision(precision):
    if precision not in (None, "ieee"):
        raise ValueError(f"precision: the torch backend computes in plain float32/float64 ('ieee'), got {precision!r}")


@implement("entropy_global", "torch")
def entropy_global(f: Tensor, precision) -> Tensor:
    """f (B, N, C) -> (B, N): entropy of each row of softmax(f f^T)."""
    _check_precision(precision)
    cd = acc_dtype(f.dtype)
    B, N, _ = f.shape
    out = torch.empty(B, N, dtype=cd, device=f.device)
    bq = _block_rows(N)
    for b in range(B):
        fb = f[b].to(cd)
        for i in range(0, N, bq):
            out[b, i:i + bq] = _entropy_of_logits(fb[i:i + bq] @ fb.T)
    return out


@implement("entropy_local", "torch")
def entropy_local(f: Tensor, H: int, W: int, window: int) -> Tensor:
    """f (B, N, C) -> (B, N): entropy of the softmax over each zero-padded window x window
    neighbourhood. Memory O(window^2 * N)."""
    x = _maps(f.to(acc_dtype(f.dtype)), H, W)
    xp = F.pad(x, (window // 2,) * 4)
    logits = x.new_empty(x.shape[0], window * window, H, W)
    for dy in range(window):
        for dx in range(window):
            logits[:, dy * window + dx] = (x * xp[:, :, dy:dy + H, dx:dx + W]).sum(1)
    return _entropy_of_logits(logits, dim=1).flatten(1)


@implement("select", "torch")
def select(entropy: Tensor, k: int) -> Tensor:
    return stable_select(entropy, k)


@implement("route_global", "torch")
def route_global(f: Tensor, idx: Tensor, v: list[Tensor], precision) -> tuple[list[Tensor], Tensor]:
    """out_i = softmax(f[idx] f^T) v_i (B, k, C_i) for every v_i (B, N, C_i), and lse (B, k), by blocks
    of attention rows."""
    _check_precision(precision)
    cd = acc_dtype(f.dtype)
    B, N, _ = f.shape
    k = idx.shape[1]
    out = [torch.empty(B, k, x.shape[2], dtype=cd, device=f.device) for x in v]
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


@implement("route_global_backward", "torch")
def route_global_backward(f: Tensor, idx: Tensor, v: list[Tensor], out: list[Tensor], lse: Tensor,
                          grad_out: list[Tensor], precision) -> tuple[Tensor, list[Tensor]]:
    """P = exp(f[idx] f^T - lse) recomputed by blocks: dV_i = P^T dO_i,
    dS = P * (sum_i dO_i V_i^T - rowsum_i(dO_i * O_i)), dF = dS^T Q + index_add(idx, dS K)."""
    cd = acc_dtype(f.dtype)
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
    return as_grad(df, f), [as_grad(dvi, x) for dvi, x in zip(dv, v)]


def _neighbourhood_positions(idx: Tensor, H: int, W: int, window: int) -> Tensor:
    """(B, k * window^2): flat positions of each idx's window x window neighbourhood in the map padded
    by window // 2, offsets in row-major order (dy, dx)."""
    r = window // 2
    d = torch.arange(window, device=idx.device)
    h, w = (idx // W)[..., None, None], (idx % W)[..., None, None]
    return ((h + d[:, None]) * (W + 2 * r) + (w + d)).flatten(1)


def neighbourhoods(x: Tensor, idx: Tensor, window: int) -> Tensor:
    """x (B, C, H, W), idx (B, k) -> (B, k, window^2, C): the zero-padded neighbourhood of each idx."""
    B, C, H, W = x.shape
    pos = _neighbourhood_positions(idx, H, W, window)[:, None]
    picked = F.pad(x, (window // 2,) * 4).flatten(2).gather(2, pos.expand(B, C, -1))
    return picked.view(B, C, idx.shape[1], window * window).permute(0, 2, 3, 1)


def _scatter_neighbourhoods(g: Tensor, idx: Tensor, H: int, W: int, window: int) -> Tensor:
    """The adjoint of :func:`neighbourhoods`: g (B, k, window^2, C) summed back into (B, C, H, W)."""
    B, C, r = g.shape[0], g.shape[3], window // 2
    pos = _neighbourhood_positions(idx, H, W, window)[:, None]
    padded = g.new_zeros(B, C, (H + 2 * r) * (W + 2 * r))
    padded.scatter_add_(2, pos.expand(B, C, -1), g.permute(0, 3, 1, 2).flatten(2))
    return padded.view(B, C, H + 2 * r, W + 2 * r)[:, :, r:r + H, r:r + W]


def _local_logits(x: Tensor, idx: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, C, H, W) -> (queries (B, k, C), keys (B, k, window^2, C), logits (B, k, window^2))."""
    q = x.flatten(2).transpose(1, 2).gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[1]))
    keys = neighbourhoods(x, idx, window)
    return q, keys, torch.einsum("bkpc,bkc->bkp", keys, q)


@implement("route_local", "torch")
def route_local(f: Tensor, idx: Tensor, v: list[Tensor], H: int, W: int, window: int) -> tuple[list[Tensor], Tensor]:
    """Each selected position's softmax over its neighbourhood of f weights the same neighbourhood of
    every v_i: out_i (B, k, C_i) and lse (B, k)."""
    cd = acc_dtype(f.dtype)
    _, _, s = _local_logits(_maps(f.to(cd), H, W), idx, window)
    lse = s.logsumexp(-1)
    p = (s - lse[..., None]).exp()
    return [torch.einsum("bkp,bkpc->bkc", p, neighbourhoods(_maps(x.to(cd), H, W), idx, window)) for x in v], lse


@implement("route_local_backward", "torch")
def route_local_backward(f: Tensor, idx: Tensor, v: list[Tensor], out: list[Tensor], lse: Tensor,
                         grad_out: list[Tensor], H: int, W: int, window: int) -> tuple[Tensor, list[Tensor]]:
    """P = exp(S - lse) recomputed; dS = P * (sum_i dO_i . V_i[nb] - sum_i dO_i . O_i); df = the
    neighbourhoods' share dS Q (as keys) plus dS K at idx (as queries); dV_i[nb] += P dO_i."""
    cd = acc_dtype(f.dtype)
    q, keys, s = _local_logits(_maps(f.to(cd), H, W), idx, window)
    p = (s - lse[..., None]).exp()
    g = [x.to(cd) for x in grad_out]
    da = sum(torch.einsum("bkc,bkpc->bkp", gi, neighbourhoods(_maps(x.to(cd), H, W), idx, window))
             for gi, x in zip(g, v))
    ds = p * (da - sum((gi * o.to(cd)).sum(-1, keepdim=True) for gi, o in zip(g, out)))
    dmap = _scatter_neighbourhoods(ds[..., None] * q[:, :, None], idx, H, W, window)
    df = dmap.flatten(2).transpose(1, 2).clone()
    df.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, f.shape[2]), torch.einsum("bkp,bkpc->bkc", ds, keys))
    dv = [_scatter_neighbourhoods(p[..., None] * gi[:, :, None], idx, H, W, window).flatten(2).transpose(1, 2)
          for gi in g]
    return as_grad(df, f), [as_grad(d, x) for d, x in zip(dv, v)]


class TorchBackend(Backend):
    name = "torch"
    summary = "streaming pure PyTorch, O(N*C) memory; the portable fallback"
    devices = ("cpu", "cuda")
    dtypes = FLOAT_DTYPES


register_backend(TorchBackend())
