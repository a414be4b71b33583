"""Public API: ``entropy``, ``select``, ``route`` and ``qsattn`` (the whole QS-Attn step) on NCHW feature maps,
the same four names as the op requests, the backends' methods and the benchmarks.

Shapes: ``feat`` / ``feat_src`` (B, C, H, W); ``values`` one or more (B, C_v, H, W) maps with the same
B, H, W (C_v may differ); N = H*W, row n = h*W + w. Dtypes float16, bfloat16, float32, float64, all
inputs of one call on one device with one dtype; accumulation is float32 (float64 for float64).

``check_finite=True`` (the default) rejects NaN/Inf in the inputs and, in ``route``, indices outside
[0, N). It costs one extra read of every input map (B*C*N elements each; measured in docs/performance.md,
"What the input checks cost") and, on a GPU, one device-to-host synchronisation per input; pass
``check_finite=False`` in tight loops. Shapes, dtypes, devices, k and window are always checked (no data
is read for that).
"""
from __future__ import annotations

import functools
import warnings

import torch

from . import _checks as chk
from .backends.base import Request, request
from .registry import resolve


def _prepare(op, feat_src, mode, window, precision, variant, check_finite, values=None):
    """The checks every call of ``op`` makes; (window, precision, variant, values) as the backend takes them.
    Errors name the feature map as the caller's argument does: ``feat`` for entropy, else ``feat_src``."""
    name = "feat" if op == "entropy" else "feat_src"
    chk.check_feature_map(name, feat_src)
    chk.check_choice("mode", mode, chk.OP_MODES[op])
    chk.check_choice("variant", variant, chk.VARIANTS)
    window = chk.check_window(window)
    precision = chk.check_precision(precision, feat_src.dtype)
    if mode == "global":
        variant = "paper"            # the released global mode is the paper's: any backend may run it
    if values is not None:
        values = chk.check_values(feat_src, values)
    if check_finite:
        chk.check_finite(name, feat_src)
        for i, v in enumerate(values or ()):
            if v is not feat_src:
                chk.check_finite(f"values[{i}]", v)
    return window, precision, variant, values


def entropy(feat, mode="global", window=7, *, backend="auto", precision=None, variant="paper",
            check_finite=True) -> torch.Tensor:
    """Row entropies H_i = -sum_j A_ij log A_ij of the source attention (docs/design.md §1).

    ``mode="global"``: A = softmax(F F^T) over all N positions (no scaling). ``mode="local"``: softmax
    over each position's ``window`` x ``window`` neighbourhood of the zero-padded map.
    feat (B, C, H, W) -> (B, H*W) float32 (float64 for float64 input). Not differentiable.
    """
    window, precision, variant, _ = _prepare("entropy", feat, mode, window, precision, variant, check_finite)
    be = resolve(backend, request("entropy", feat, mode, precision, variant, window))
    with torch.no_grad():
        return be.entropy(feat, mode, window, precision, variant)


def select(entropy, k, *, backend="auto") -> torch.Tensor:
    """The k lowest-entropy rows per image, ascending, ties broken by the lower index; equal to
    ``argsort(entropy, stable=True)[:, :k]``. entropy (B, N) -> (B, k) int64."""
    chk.check_entropy(entropy)
    k = chk.check_k(k, entropy.shape[1])
    be = resolve(backend, Request("select", entropy.device.type, entropy.dtype, n=entropy.shape[1]))
    return be.select(entropy, k)


def route(feat_src, idx, values, mode="global", window=7, *, backend="auto", precision=None, variant="paper",
          check_finite=True) -> tuple[torch.Tensor, ...]:
    """Route every value map with the attention rows of the selected queries of ``feat_src``.

    Global: out_v = softmax(F[idx] F^T) V_v. Local: each selected position's softmax over its
    ``window`` x ``window`` neighbourhood weights the same neighbourhood of V_v.
    feat_src (B, C, H, W), idx (B, k) int64, values (B, C_v, H, W)... -> tuple of (B, k, C_v) in the
    values' dtype; differentiable w.r.t. ``feat_src`` and every value.
    """
    window, precision, variant, values = _prepare("route", feat_src, mode, window, precision, variant,
                                         check_finite, values)
    chk.check_idx(idx, feat_src, check_range=check_finite)
    be = resolve(backend, request("route", feat_src, mode, precision, variant, window))
    return be.route(feat_src, idx, values, mode, window, precision, variant)


def qsattn(feat_src, values, k=256, mode="global", window=7, *, backend="auto", precision=None, variant="paper",
           check_finite=True):
    """The QS-Attn step: select k queries by the entropy of the source attention, route every value.

    ``mode``: "global" (select and route globally), "local" (select and route within the window),
    "local_global" (select by the local entropy, route with the global rows). ``variant="official"``
    reproduces the released code's local layout (reference backend only; see docs/known-issues.md).
    feat_src (B, C, H, W), values (B, C_v, H, W)... -> (idx (B, k) int64, tuple of (B, k, C_v)).
    """
    window, precision, variant, values = _prepare("qsattn", feat_src, mode, window, precision, variant,
                                         check_finite, values)
    B, _, H, W = feat_src.shape
    k = chk.check_k(k, H * W)
    be = resolve(backend, request("qsattn", feat_src, mode, precision, variant, window))
    return be.qsattn(feat_src, values, k, mode, window, precision, variant)


def _alias(fn, old: str):
    """``old``, the 0.1 name of ``fn``: calls fn with a DeprecationWarning (removed in 0.2)."""
    @functools.wraps(fn)
    def alias(*args, **kwargs):
        warnings.warn(f"qsattn_fast.{old} is renamed qsattn_fast.{fn.__name__}; the old name goes in 0.2",
                      DeprecationWarning, stacklevel=2)
        return fn(*args, **kwargs)
    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of :func:`{fn.__name__}` (the 0.1 name; removed in 0.2)."
    return alias


attention_entropy = _alias(entropy, "attention_entropy")
select_queries = _alias(select, "select_queries")
query_selected_attention = _alias(qsattn, "query_selected_attention")
