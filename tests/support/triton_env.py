"""Loads the Triton kernels for the tests: compiled when CUDA is present, else under the interpreter.

Without CUDA, TRITON_INTERPRET=1 is set while Triton and the kernels are imported (docs/design.md §9), then
removed from os.environ again with the interpreter kept on in Triton's own knob; so other test modules
and subprocesses see the environment they started with. Tests use
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

if "qsattn_fast.kernels" not in sys.modules and not torch.cuda.is_available():
    if "triton" in sys.modules and not sys.modules["triton"].knobs.runtime.interpret:
        pytest.skip("triton was imported before the interpreter could be switched on; run the tests with "
                    "TRITON_INTERPRET=1", allow_module_level=True)
    # Triton decorates its own library and our kernels as interpreted functions only when the variable
    # is set at their import; afterwards it reads the knob, kept here in Triton's state only.
    _old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton
        importlib.import_module("qsattn_fast.kernels")
        triton.knobs.propagate_env = False
        triton.knobs.runtime.interpret = True
        triton.knobs.propagate_env = True
    finally:
        if _old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _old

INTERPRET = importlib.import_module("qsattn_fast.kernels._common").INTERPRET
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels were compiled for a GPU but CUDA is not available", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"
