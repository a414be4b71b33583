"""The ``reference`` backend: a literal PyTorch transcription of QS-Attn (docs/design.md §1).

It materialises the N x N attention (global) or the unfolded window x window neighbourhoods of every
position (local), exactly as the released code does, and is the ground truth of the test suite. Half inputs are
computed in float32. ``variant="official"`` reproduces the released code's local mode, which reads
``F.unfold``'s (C, w*w) column layout as (w*w, C) when forming the local attention and regroups the
gathered neighbourhoods of the selected positions with a reshape that mixes positions and channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import VARIANTS
from .._common import rows, stable_select
from ..ops import acc_dtype
from ..registry import register_backend
from .base import FLOAT_DTYPES, Backend


def _entropy(attn: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """-sum_j A_ij log A_ij over the last dim, with 0 log 0 = 0 (``official``: in the released code's
    operations, sum(A * where(isinf(-log A), 0, -log A)))."""
    if variant == "paper":
        return -torch.special.xlogy(attn, attn).sum(-1)
    neg_log = -torch.log(attn)
    return (attn * torch.where(torch.isinf(neg_log), torch.zeros_like(neg_log), neg_log)).sum(-1)


def _select(entropy: torch.Tensor, k: int, variant: str) -> torch.Tensor:
    """(B, N) -> (B, k): ``paper`` the stable selection (ties by the lower index); ``official`` the
    released code's ``torch.sort(entropy)`` (not stable: among exact ties its order is torch's)."""
    if variant == "paper":
        return stable_select(entropy, k)
    return torch.sort(entropy, dim=1)[1][:, :k].contiguous()


def global_attention(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> A = softmax(F F^T) row-wise, (B, N, N)."""
    f = rows(feat.to(acc_dtype(feat.dtype)))
    return torch.softmax(f @ f.transpose(1, 2), dim=-1)


def local_attention(feat: torch.Tensor, window: int, variant: str) -> torch.Tensor:
    """(B, C, H, W) -> softmax over each position's window x window zero-padded neighbourhood, (B, N, w*w).

    ``official``: the released code's layout and operations in its order (one bmm of the (B*N, w2, C)
    keys by the (B*N, C, 1) queries), so that its float32 rounding, and hence its order among
    near-tied entropies, is the released code's."""
    x = feat.to(acc_dtype(feat.dtype))
    B, C, H, W = x.shape
    w2, n = window * window, H * W
    cols = F.unfold(x, window, padding=window // 2)                  # (B, C*w2, N), row = c*w2 + p
    if variant == "paper":
        keys = cols.view(B, C, w2, n).permute(0, 3, 2, 1)            # (B, N, w2, C)
        return torch.softmax(torch.einsum("bnpc,bnc->bnp", keys, rows(x)), dim=-1)
    keys = cols.permute(0, 2, 1).reshape(B * n, w2, C)               # released code: (C, w2) read as (w2, C)
    logits = torch.bmm(keys, rows(x).reshape(B * n, C, 1))
    return logits.softmax(dim=1).reshape(B, n, w2)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, k) -> (B, k, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _route_local_values(attn_sel, idx, v, window, variant):
    """attn_sel (B, k, w2) routes the window x window neighbourhoods of v at idx -> (B, k, C_v)."""
    x = v.to(attn_sel.dtype)
    B, C, H, W = x.shape
    k, w2 = idx.shape[1], window * window
    cols = F.unfold(x, window, padding=window // 2)                  # (B, C*w2, N)
    picked = cols.gather(2, idx.unsqueeze(1).expand(-1, C * w2, -1))  # (B, C*w2, k)
    if variant == "paper":
        nb = picked.view(B, C, w2, k).permute(0, 3, 2, 1)             # (B, k, w2, C)
        return torch.einsum("bkp,bkpc->bkc", attn_sel, nb).to(v.dtype)
    nb = picked.reshape(B * k, w2, C)                                 # released code's flatten + view, and bmm
    return torch.bmm(attn_sel.reshape(B * k, 1, w2), nb).view(B, k, C).to(v.dtype)


class ReferenceBackend(Backend):
    name = "reference"
    summary = "literal PyTorch, materialises N x N; the ground truth; also variant='official'"
    devices = ("cpu", "cuda")
    dtypes = FLOAT_DTYPES
    variants = VARIANTS

    def entropy(self, feat, mode, window, precision, variant):
        attn = global_attention(feat) if mode == "global" else local_attention(feat, window, variant)
        return _entropy(attn, variant)

    def select(self, entropy, k):
        return stable_select(entropy, k)

    def route(self, feat, idx, values, mode, window, precision, variant):
        if mode == "global":
            return self._route_global(global_attention(feat), idx, values)
        attn_sel = _gather_rows(local_attention(feat, window, variant), idx)
        return tuple(_route_local_values(attn_sel, idx, v, window, variant) for v in values)

    @staticmethod
    def _route_global(attn, idx, values):
        attn_sel = _gather_rows(attn, idx)                            # (B, k, N)
        return tuple((attn_sel @ rows(v.to(attn.dtype))).to(v.dtype) for v in values)

    def qsattn(self, feat, values, k, mode, window, precision, variant):
        # As the released code: one attention matrix serves both the entropy and the routing.
        if mode == "local":
            attn = local_attention(feat, window, variant)
            idx = _select(_entropy(attn.detach(), variant), k, variant)
            attn_sel = _gather_rows(attn, idx)
            return idx, tuple(_route_local_values(attn_sel, idx, v, window, variant) for v in values)
        attn = global_attention(feat)
        sel = attn if mode == "global" else local_attention(feat, window, variant)
        idx = _select(_entropy(sel.detach(), variant), k, variant)
        return idx, self._route_global(attn, idx, values)


register_backend(ReferenceBackend())
