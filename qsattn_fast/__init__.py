"""qsattn_fast: QS-Attn (query-selected attention, CVPR 2022) without the N x N matrix.

Public API: :func:`attention_entropy`, :func:`select_queries`, :func:`route`,
:func:`query_selected_attention`, :class:`QSPatchSampler`; backends in :mod:`qsattn_fast.registry`.
Nothing here touches CUDA at import time.
"""
from . import native, reference, torch_backend, triton_backend  # noqa: F401  (register the backends)
from .api import attention_entropy, query_selected_attention, route, select_queries
from .registry import AUTO_PRIORITY, BackendUnavailableError, backends
from .sampler import QSPatchSampler

__version__ = "0.1.0"

__all__ = ["attention_entropy", "select_queries", "route", "query_selected_attention", "QSPatchSampler",
           "backends", "AUTO_PRIORITY", "BackendUnavailableError", "__version__"]
