"""Loads the Triton kernels for the tests: compiled when CUDA is present, else under the interpreter.

TRITON_INTERPRET=1 must be set when the kernels are decorated (first import); it is set only for that
import and restored afterwards, so other test modules see the environment they started with. Tests use
``DEVICE`` ("cuda" for compiled kernels, "cpu" under the interpreter).
"""
import importlib
import importlib.util
import os
import sys

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

if "qsattn_fast.kernels._common" not in sys.modules and not torch.cuda.is_available():
    _old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module("qsattn_fast.kernels._common")
    finally:
        if _old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _old

INTERPRET = importlib.import_module("qsattn_fast.kernels._common").INTERPRET
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels were compiled for a GPU but CUDA is not available", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"


def kernel(op: str):
    """The kernel module qsattn_fast.kernels.<op> (decorated in the mode chosen above)."""
    return importlib.import_module(f"qsattn_fast.kernels.{op}")
