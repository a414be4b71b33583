"""The ``triton`` backend: fused Triton kernels (``qsattn_fast.kernels``, one op per file), the
implementations ``torch.ops.qsattn.<op>.triton`` of the contract (qsattn_fast/ops.py).

Importing this module neither imports Triton nor touches CUDA: the kernels are imported (and registered)
on the first op call. Devices: CUDA; CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
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

from .._checks import PRECISIONS
from ..registry import register_backend
from .base import FLOAT_DTYPES, Backend

_KERNELS = "qsattn_fast.kernels"


def interpreting() -> bool:
    """Whether the kernels run (or, once imported, would run) under the Triton interpreter."""
    common = sys.modules.get(f"{_KERNELS}._common")
    if common is not None:
        return common.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


class TritonBackend(Backend):
    name = "triton"
    summary = "fused Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1)"
    devices = ("cuda", "cpu")
    dtypes = FLOAT_DTYPES
    precisions = PRECISIONS
    kernel_dtypes = dtypes                       # half operands go to the tensor cores as they are
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

    _loaded = False

    def kernel(self, name):
        if not TritonBackend._loaded:          # a flag, not the import, is what torch.compile traces later
            importlib.import_module(_KERNELS)    # decorates the kernels and registers the implementations
            TritonBackend._loaded = True
        return super().kernel(name)


register_backend(TritonBackend())
