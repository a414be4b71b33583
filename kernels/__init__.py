"""Triton kernels of qsattn_fast (installed as ``qsattn_fast.kernels``); one op per file.

Importing this package imports Triton and decorates every kernel at once, so that all of them run in
the same mode: compiled, or interpreted on CPU when ``TRITON_INTERPRET=1`` is set at this import
(docs/design.md §9). ``import qsattn_fast`` does not import it; the ``triton`` backend does on first use.
"""
from . import entropy_global, entropy_local, route_global, route_local, select  # noqa: F401
from ._common import INTERPRET  # noqa: F401
