"""qsattn_fast: QS-Attn (query-selected attention, CVPR 2022) without the N x N matrix.

Public API: :func:`entropy`, :func:`select`, :func:`route`, :func:`qsattn` (the op names of every layer
below, docs/design.md §7), :class:`QSPatchSampler`; the backends in :mod:`qsattn_fast.backends`, which
``backends()`` lists by name; the choice lists ``OP_MODES`` (each op's modes), ``VARIANTS``, ``PRECISIONS``
and ``BACKENDS``, defined once, for command lines. The 0.1 names ``attention_entropy``, ``select_queries``
and ``query_selected_attention`` are deprecated aliases until 0.2.
Nothing here touches CUDA at import time.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise: set
here when torch is not imported yet (OpenMP reads it once, when torch loads it), as for the command
lines: spinning threads slow down runs that share the machine's cores (measured in docs/performance.md,
"A busy machine: OpenMP threads wait passively").
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import backends  # registers the backends; backends() lists them
from ._checks import BACKENDS, OP_MODES, PRECISIONS, VARIANTS
from .api import attention_entropy, entropy, qsattn, query_selected_attention, route, select, select_queries
from .registry import AUTO_PRIORITY, BackendUnavailableError
from .sampler import QSPatchSampler

__version__ = "0.1.0"

__all__ = ["entropy", "select", "route", "qsattn", "QSPatchSampler", "backends", "AUTO_PRIORITY",
           "BackendUnavailableError", "__version__", "BACKENDS", "OP_MODES", "PRECISIONS", "VARIANTS",
           "attention_entropy", "select_queries", "query_selected_attention"]   # deprecated aliases (0.1 names)
