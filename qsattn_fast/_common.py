"""Small helpers shared by the backends."""
from __future__ import annotations

import torch


def rows(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C) with N = H*W, row n = h*W + w (a view, not a copy)."""
    return feat.flatten(2).transpose(1, 2)


def stable_select(entropy: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) -> (B, k) int64: the k smallest entries ascending, ties broken by the lower index."""
    return torch.argsort(entropy, dim=1, stable=True)[:, :k].contiguous()
