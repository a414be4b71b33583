"""The ``native`` backend: the compiled extension ``qsattn_fast._C`` (built by setup.py from csrc/).

The extension implements the overloads ``torch.ops.qsattn.<op>.native`` of the schemas in
:mod:`qsattn_fast.ops` (which also registers their fake kernels and autograd) with C++/OpenMP kernels
for CPU tensors and, when it was built against a CUDA torch, CUDA kernels for CUDA tensors. This module
loads it (recording why not, for ``python -m qsattn_fast.info``) and registers the backend. Operators
work on rows f (B, N, C) = ``rows(feat)``; float16/bfloat16 inputs are computed in float32 and cast back.
"""
from __future__ import annotations

import torch

from .. import ops  # noqa: F401  (defines the schemas before _C registers its kernels for them)
from ..registry import register_backend
from .base import FLOAT_DTYPES, Backend, Request

_BUILD = "'python setup.py build_ext --inplace' or 'pip install --no-build-isolation -e .'"


def _load_extension() -> str | None:
    """Import qsattn_fast._C (which registers the kernels qsattn::<op>.native); None, or why it is not usable."""
    try:
        from .. import _C
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) or "cannot import name '_C'" in str(exc):
            return f"compiled extension qsattn_fast._C is not built; build it with {_BUILD}"
        return f"compiled extension qsattn_fast._C failed to load ({exc}); rebuild it for this torch with {_BUILD}"
    if not hasattr(_C, "constants"):
        return f"compiled extension qsattn_fast._C was built from older sources; rebuild it with {_BUILD}"
    return None


#: Why the extension cannot be used (shown by ``python -m qsattn_fast.info``), or None when loaded.
LOAD_ERROR = _load_extension()


def constants() -> dict:
    """The extension's kernel constants by name (``entropy_global_tile``, ``entropy_global_small_c``: the CPU
    global entropy's tiling; ``cuda_max_window``: the CUDA kernels' largest window); {} when not loaded."""
    if LOAD_ERROR is not None:
        return {}
    from .. import _C
    return _C.constants()


def has_kernel(op: str, device: str) -> bool:
    """Whether the loaded extension has a kernel for ``qsattn::<op>.native`` on ``device`` ("cpu"/"cuda")."""
    return LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"qsattn::{op}.native",
                                                                                 device.upper())


class NativeBackend(Backend):
    name = "native"
    summary = "compiled extension qsattn_fast._C: C++/OpenMP kernels on CPU, CUDA kernels on CUDA"
    devices = ("cpu", "cuda")
    dtypes = FLOAT_DTYPES
    precisions = ("ieee",)
    # The CUDA kernels' limits: kMaxWindow of csrc/qsattn_cuda.h, as the extension reports it, and 32-bit sizes.
    limits = {"cuda": {"window": constants().get("cuda_max_window", 0), "channels": 2**31 - 1, "n": 2**31 - 1}}

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


register_backend(NativeBackend())
