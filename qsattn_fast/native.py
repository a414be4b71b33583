"""The ``native`` backend: the compiled extension ``qsattn_fast._C`` (built by setup.py from csrc/).

The extension registers the operators ``torch.ops.qsattn.*`` (schemas in ``csrc/ops.cpp``) with
C++/OpenMP kernels for CPU tensors and, when it was built against a CUDA torch, CUDA kernels for CUDA
tensors. This module loads it (recording why not, for ``python -m qsattn_fast.info``), registers the
fake kernels and the autograd formulas of the operators, and the backend itself. Operators work on
rows f (B, N, C) = ``rows(feat)``; float16/bfloat16 inputs are computed in float32 and cast back.
"""
from __future__ import annotations

import torch

from ._common import compute_dtype, register_route_global_autograd, rows
from .registry import Backend, Request, register_backend

_BUILD = "'python setup.py build_ext --inplace' or 'pip install --no-build-isolation -e .'"


def _load_extension() -> str | None:
    """Import qsattn_fast._C (which registers torch.ops.qsattn); None, or why it is not usable."""
    try:
        from . import _C  # noqa: F401
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) or "cannot import name '_C'" in str(exc):
            return f"compiled extension qsattn_fast._C is not built; build it with {_BUILD}"
        return f"compiled extension qsattn_fast._C failed to load ({exc}); rebuild it for this torch with {_BUILD}"
    return None


#: Why the extension cannot be used (shown by ``python -m qsattn_fast.info``), or None when loaded.
LOAD_ERROR = _load_extension()

def has_kernel(op: str, device: str) -> bool:
    """Whether the loaded extension has a kernel for ``qsattn::<op>`` on ``device`` ("cpu"/"cuda")."""
    return LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"qsattn::{op}", device.upper())


def _register_python_side() -> None:
    """Fake kernels (shapes/dtypes for torch.compile and meta tensors) and autograd of the routing ops."""
    lib = "qsattn::"

    @torch.library.register_fake(lib + "entropy_global")
    def _(f):
        return f.new_empty(f.shape[:2])

    @torch.library.register_fake(lib + "entropy_local")
    def _(f, H, W, window):
        return f.new_empty(f.shape[:2])

    @torch.library.register_fake(lib + "select")
    def _(entropy, k):
        return entropy.new_empty(entropy.shape[0], k, dtype=torch.int64)

    def fake_route(f, idx, v, *grid):
        return v.new_empty(idx.shape[0], idx.shape[1], v.shape[2]), f.new_empty(idx.shape)

    def fake_backward(f, idx, v, out, lse, grad_out, *grid):
        return torch.empty_like(f), torch.empty_like(v)

    torch.library.register_fake(lib + "route_local", fake_route)
    torch.library.register_fake(lib + "route_local_backward", fake_backward)

    @torch.library.register_fake(lib + "route_global")
    def _(f, idx, v):
        return [x.new_empty(idx.shape[0], idx.shape[1], x.shape[2]) for x in v], f.new_empty(idx.shape)

    @torch.library.register_fake(lib + "route_global_backward")
    def _(f, idx, v, out, lse, grad_out):
        return torch.empty_like(f), [torch.empty_like(x) for x in v]

    def setup_local(ctx, inputs, output):
        f, idx, v, *grid = inputs
        ctx.grid = grid
        ctx.save_for_backward(f, idx, v, *output)

    def backward_local(ctx, grad_out, grad_lse):
        df, dv = torch.ops.qsattn.route_local_backward(*ctx.saved_tensors, grad_out.contiguous(), *ctx.grid)
        return (df, None, dv) + (None,) * len(ctx.grid)

    torch.library.register_autograd(lib + "route_local", backward_local, setup_context=setup_local)
    register_route_global_autograd(lib + "route_global", torch.ops.qsattn.route_global_backward)


if LOAD_ERROR is None:
    _register_python_side()


class NativeBackend(Backend):
    name = "native"
    summary = "compiled extension qsattn_fast._C: C++/OpenMP kernels on CPU, CUDA kernels on CUDA"
    devices = ("cpu", "cuda")
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    precisions = ("ieee",)
    # The CUDA kernels' limits: kMaxWindow in csrc/qsattn_cuda.h (a test pins it) and 32-bit sizes.
    limits = {"cuda": {"window": 15, "channels": 2**31 - 1, "n": 2**31 - 1}}

    def unavailable(self):
        return LOAD_ERROR

    def why_not(self, req: Request) -> list[str]:
        reasons = super().why_not(req)
        if reasons:
            return reasons
        if not has_kernel("entropy_global", req.device):
            reasons.append(f"qsattn_fast._C was built without {req.device.upper()} kernels")
        elif req.device == "cuda" and req.dtype == torch.float64:
            reasons.append("dtype float64 not supported on CUDA (CUDA kernels are float32)")
        return reasons

    # The global ops read the transposed views rows(feat) in place; the local ops want contiguous rows.
    def entropy(self, feat, mode, window, precision, variant):
        f = rows(feat.to(compute_dtype(feat.dtype)))
        if mode == "global":
            return torch.ops.qsattn.entropy_global(f)
        return torch.ops.qsattn.entropy_local(f.contiguous(), feat.shape[2], feat.shape[3], window)

    def select(self, entropy, k):
        return torch.ops.qsattn.select(entropy.to(compute_dtype(entropy.dtype)), k)

    def route(self, feat, idx, values, mode, window, precision, variant):
        cd = compute_dtype(feat.dtype)
        f = rows(feat.to(cd))
        if mode == "local":
            v = rows(torch.cat([x.to(cd) for x in values], dim=1))
            out, _ = torch.ops.qsattn.route_local(f.contiguous(), idx, v.contiguous(), feat.shape[2], feat.shape[3],
                                                  window)
            outs = out.split([x.shape[1] for x in values], dim=2)
        else:                      # the value maps are routed as they are: no concatenated copy
            outs, _ = torch.ops.qsattn.route_global(f, idx, [rows(x.to(cd)) for x in values])
        return tuple(o.to(x.dtype) for o, x in zip(outs, values))


register_backend(NativeBackend())
