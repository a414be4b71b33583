"""Small helpers shared by the backends."""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def rows(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C) with N = H*W, row n = h*W + w (a view, not a copy)."""
    return feat.flatten(2).transpose(1, 2)


def stable_select(entropy: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) -> (B, k) int64: the k smallest entries ascending, ties broken by the lower index."""
    return torch.argsort(entropy, dim=1, stable=True)[:, :k]


def register_route_global_autograd(op, backward_op) -> None:
    """Autograd of a global routing op of qsattn::route_global's signature, (f, idx, Tensor[] v) ->
    (Tensor[] out, lse): saves f, idx, lse, v and out, and calls ``backward_op(f, idx, v, out, lse, grad_out)
    -> (df, [dv])``, an output without a gradient getting zeros."""

    def setup(ctx, inputs, output):
        (f, idx, v), (out, lse) = inputs, output
        ctx.n = len(v)
        ctx.save_for_backward(f, idx, lse, *v, *out)

    def backward(ctx, grad_out, grad_lse):
        f, idx, lse, *rest = ctx.saved_tensors
        v, out = rest[:ctx.n], rest[ctx.n:]
        g = [torch.zeros_like(o) if d is None else d.contiguous() for d, o in zip(grad_out, out)]
        df, dv = backward_op(f, idx, v, out, lse, g)
        return df, None, dv

    torch.library.register_autograd(op, backward, setup_context=setup)
