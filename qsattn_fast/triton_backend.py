"""The ``triton`` backend: fused Triton kernels (``qsattn_fast.kernels``, one op per file).

Importing this module neither imports Triton nor touches CUDA: the kernels are imported on the first
op call. Devices: CUDA; CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
the kernels are first imported, as the tests do), which ``backend="auto"`` never picks because it is slow.
For fp32 inputs ``precision`` picks the tensor-core path of the global products: None = "tf32x3"
(fp32-faithful), "ieee", "tf32", "bf16"; half inputs multiply natively with fp32 accumulation; the
local kernels are fp32 FMAs for every precision.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

from ._common import stable_select
from .registry import Backend, register_backend

_KERNELS = "qsattn_fast.kernels"


def interpreting() -> bool:
    """Whether the kernels run (or, once imported, would run) under the Triton interpreter."""
    common = sys.modules.get(f"{_KERNELS}._common")
    if common is not None:
        return common.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def _kernel(op: str):
    return importlib.import_module(f"{_KERNELS}.{op}")


class TritonBackend(Backend):
    name = "triton"
    summary = "fused Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1)"
    devices = ("cuda", "cpu")
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    precisions = ("ieee", "tf32x3", "tf32", "bf16")
    _missing: str | None = None
    _checked = False

    def unavailable(self):
        if not TritonBackend._checked:
            try:
                importlib.import_module("triton")
            except Exception as exc:  # ImportError, or a broken installation
                TritonBackend._missing = f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
            TritonBackend._checked = True
        return TritonBackend._missing

    def why_not(self, req):
        reasons = super().why_not(req)
        if not reasons and req.device == "cpu" and not interpreting():
            reasons.append("CPU tensors run only under the Triton interpreter: set TRITON_INTERPRET=1 before "
                           "the kernels are first imported")
        return reasons

    def auto_reasons(self, req):
        if req.device == "cpu":
            return ["CPU tensors would run in the (slow) Triton interpreter; pass backend='triton' to force it"]
        if req.dtype == torch.float64:
            return ["float64 kernels are validated under the interpreter only; pass backend='triton' to force"]
        return []

    def entropy(self, feat, mode, window, precision, variant):
        if mode == "global":
            return _kernel("entropy_global").entropy_global(feat, precision)
        return _kernel("entropy_local").entropy_local(feat, window)

    def select(self, entropy, k):
        if entropy.dtype == torch.float64:          # the radix kernel keys float32 bits
            return stable_select(entropy, k)
        return _kernel("select").select(entropy, k)

    def route(self, feat, idx, values, mode, window, precision, variant):
        v = values[0] if len(values) == 1 else torch.cat(values, dim=1)
        if mode == "global":
            out, _ = _kernel("route_global").route_global(feat, idx, v, precision)
            out = out.to(v.dtype)
        else:
            out, _ = _kernel("route_local").route_local(feat, idx, v, window)
        return tuple(out.split([x.shape[1] for x in values], dim=2))


register_backend(TritonBackend())
