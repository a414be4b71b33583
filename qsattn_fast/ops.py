"""The operator contract (docs/design.md §7): one schema per op in the namespace ``qsattn``, defined here
once and implemented by every compiled backend under the same signature as the overload named after
it, ``torch.ops.qsattn.<op>.<backend>``; the device is the dispatch key of each implementation (native:
CPU and CUDA kernels; triton: CUDA, CPU under the interpreter; torch: any device).

Layout and dtypes, the same for every implementation:

* ``f`` (B, N, C): the source map as rows, N = H·W, row n = h·W + w; any strides (the API passes
  ``rows(feat)``, a transposed view of the NCHW map). ``v``: a list of value maps v_i (B, N, C_i),
  routed by the same attention rows without being concatenated; ``idx`` (B, k) int64.
* Results in the accumulation dtype ``acc_dtype(f.dtype)`` (float64 for float64, else float32):
  entropies (B, N), routed out_i (B, k, C_i), row log-sum-exps ``lse`` (B, k); ``select`` gives (B, k)
  int64 = ``argsort(entropy, stable=True)[:, :k]``. Gradients come back in the dtype, shape and
  strides of f and v_i. Which input dtypes an implementation takes is its backend's business (native
  and torch compute half inputs in float32, the backend casts them first).
* Both routings save f, idx, v, out and lse for the backward (one autograd glue, below), which
  recomputes the attention rows from lse; an output without a gradient gets zeros.
* ``precision`` (global ops): None or "ieee" everywhere; Triton also "tf32x3", "tf32", "bf16".
* Every implementation checks its arguments first (ranks, dtypes, devices, sizes; ``check_args``, or
  csrc/op_checks.h for native) and refuses bad ones with a one-line error naming the argument.

No argument has a default: the autograd of an op with a ``Tensor[]`` argument mis-counts the inputs
when the dispatcher drops arguments equal to their defaults (torch 2.13), so every call passes all.
"""
from __future__ import annotations

import torch

from ._checks import BACKENDS

#: The schema of every op (arguments and results), the same for every implementation.
SCHEMAS = {
    # (B, N) entropy of each row of softmax(f f^T).
    "entropy_global": "(Tensor f, str? precision) -> Tensor",
    # (B, N) entropy of the softmax over each zero-padded window x window neighbourhood.
    "entropy_local": "(Tensor f, int H, int W, int window) -> Tensor",
    # (B, k) int64: the k smallest entropies ascending, ties by the lower index.
    "select": "(Tensor entropy, int k) -> Tensor",
    # out_i = softmax(f[idx] f^T) v_i for every v_i, and lse (B, k).
    "route_global": "(Tensor f, Tensor idx, Tensor[] v, str? precision) -> (Tensor[], Tensor)",
    "route_global_backward": "(Tensor f, Tensor idx, Tensor[] v, Tensor[] out, Tensor lse, Tensor[] grad_out, "
                             "str? precision) -> (Tensor, Tensor[])",
    # out_i = softmax over the window x window neighbourhood of each idx, applied to the same
    # neighbourhood of v_i (zero outside the map), and lse (B, k).
    "route_local": "(Tensor f, Tensor idx, Tensor[] v, int H, int W, int window) -> (Tensor[], Tensor)",
    "route_local_backward": "(Tensor f, Tensor idx, Tensor[] v, Tensor[] out, Tensor lse, Tensor[] grad_out, "
                            "int H, int W, int window) -> (Tensor, Tensor[])",
}

#: The backends that implement every op of SCHEMAS (``reference`` materialises N x N and is plain PyTorch).
IMPLEMENTATIONS = tuple(b for b in BACKENDS if b != "reference")

_LIB = torch.library.Library("qsattn", "DEF")
for _op, _schema in SCHEMAS.items():
    for _impl in IMPLEMENTATIONS:
        _LIB.define(f"{_op}.{_impl}{_schema}")


def op(name: str, backend: str) -> torch._ops.OpOverload:
    """``torch.ops.qsattn.<name>.<backend>``."""
    return getattr(getattr(torch.ops.qsattn, name), backend)


def split_mode(mode: str) -> tuple[str, str]:
    """(selection mode, routing mode) of a QS-Attn ``mode``: global -> (global, global), local -> (local,
    local), local_global -> (local, global): the local entropy selects, the global rows route."""
    return ("global" if mode == "global" else "local"), ("local" if mode == "local" else "global")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the results: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A gradient ``g`` of input ``x`` in x's dtype and strides, as the contract returns them (a copy
    only where the strides differ)."""
    g = g.to(x.dtype)
    return g if g.stride() == x.stride() else torch.empty_like(x).copy_(g)


def _check_tensor(name: str, t: torch.Tensor, dim: int) -> None:
    if t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {t.dtype}")


def _check_routing(f: torch.Tensor, idx: torch.Tensor, v: list[torch.Tensor]) -> None:
    """v_i (B, N, C_i) like f; idx (B, k) int64 on f's device, in [0, N) (checked on the CPU only: no sync)."""
    B, N, _ = f.shape
    if not v:
        raise ValueError("v: expected at least one value tensor")
    for x in v:
        _check_tensor("v", x, 3)
        if x.shape[:2] != f.shape[:2]:
            raise ValueError(f"v: expected shape (B={B}, N={N}, C_v), got {tuple(x.shape)}")
        if x.dtype != f.dtype:
            raise TypeError(f"v: dtype {x.dtype} differs from f's {f.dtype}")
        if x.device != f.device:
            raise ValueError(f"v: on {x.device} but f is on {f.device}")
    if idx.dtype != torch.int64:
        raise TypeError(f"idx: expected int64 indices, got {idx.dtype}")
    if idx.dim() != 2 or idx.shape[0] != B:
        raise ValueError(f"idx: expected shape (B={B}, k), got {tuple(idx.shape)}")
    if idx.device != f.device:
        raise ValueError(f"idx: on {idx.device} but f is on {f.device}")
    if idx.device.type == "cpu" and idx.numel():
        low, high = torch.aminmax(idx)
        if int(low) < 0 or int(high) >= N:
            raise ValueError(f"idx: indices must lie in [0, {N})")


def _check_saved(f, idx, v, out, lse, grad_out) -> None:
    """A routing backward's out_i and grad_out_i (B, k, C_i), one per v_i, and lse (B, k)."""
    if len(out) != len(v) or len(grad_out) != len(v):
        raise ValueError(f"out, grad_out: expected one tensor per value map ({len(v)}), got {len(out)} and "
                         f"{len(grad_out)}")
    B, k = idx.shape
    for x, o, g in zip(v, out, grad_out):
        if o.shape != (B, k, x.shape[2]):
            raise ValueError(f"out: expected shape (B, k, C_v) = {(B, k, x.shape[2])}, got {tuple(o.shape)}")
        if g.shape != o.shape:
            raise ValueError(f"grad_out: expected the shape of out {tuple(o.shape)}, got {tuple(g.shape)}")
    if lse.shape != (B, k):
        raise ValueError(f"lse: expected shape (B, k) = {(B, k)}, got {tuple(lse.shape)}")


def check_args(name: str, args: tuple) -> None:
    """The arguments of op ``name`` as SCHEMAS lists them, checked as the native kernels check theirs
    (csrc/op_checks.h): ranks, dtypes, devices, sizes that must agree, k in [1, N], H*W = N, odd window.
    Raises ValueError or TypeError, one line starting with the argument's name; reads no data but a CPU
    idx."""
    if name == "select":
        entropy, k = args
        _check_tensor("entropy", entropy, 2)
        if not 1 <= k <= entropy.shape[1]:
            raise ValueError(f"k: must lie in [1, N = {entropy.shape[1]}], got {k}")
        return
    f = args[0]
    _check_tensor("f", f, 3)
    if name.startswith("route"):
        _check_routing(f, args[1], args[2])
    if name.endswith("_backward"):
        _check_saved(*args[:6])
    if "local" in name:
        H, W, window = args[-3:]
        if H < 1 or W < 1 or H * W != f.shape[1]:
            raise ValueError(f"H, W: H*W must equal N = {f.shape[1]}, got H={H}, W={W}")
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window: must be a positive odd number, got {window}")


def implement(name: str, backend: str, devices=("CPU", "CUDA")):
    """Decorator: register a Python function as ``backend``'s kernel of op ``name`` on ``devices``, behind
    :func:`check_args` (the native kernels check in C++)."""
    def register(fn):
        def checked(*args):
            check_args(name, args)
            return fn(*args)
        torch.library.impl(f"qsattn::{name}.{backend}", list(devices), func=checked, lib=_LIB)
        return fn
    return register


def _fake_entropy(f, *args):
    return f.new_empty(f.shape[:2], dtype=acc_dtype(f.dtype))


def _fake_select(entropy, k):
    return entropy.new_empty(entropy.shape[0], k, dtype=torch.int64)


def _fake_route(f, idx, v, *args):
    at = acc_dtype(f.dtype)
    return [x.new_empty(idx.shape[0], idx.shape[1], x.shape[2], dtype=at) for x in v], f.new_empty(idx.shape, dtype=at)


def _fake_route_backward(f, idx, v, out, lse, grad_out, *args):
    return torch.empty_like(f), [torch.empty_like(x) for x in v]


def _routing_autograd(backward_name: str, impl: str):
    """(setup_context, backward) of a routing op: saves f, idx, lse, v, out; calls the backward op."""
    def setup(ctx, inputs, output):
        (f, idx, v, *tail), (out, lse) = inputs, output
        ctx.tail, ctx.n = tail, len(v)
        ctx.save_for_backward(f, idx, lse, *v, *out)

    def backward(ctx, grad_out, grad_lse):
        f, idx, lse, *rest = ctx.saved_tensors
        v, out = rest[:ctx.n], rest[ctx.n:]
        g = [torch.zeros_like(o) if d is None else d.contiguous() for d, o in zip(grad_out, out)]
        df, dv = op(backward_name, impl)(f, idx, v, out, lse, g, *ctx.tail)
        return (df, None, dv) + (None,) * len(ctx.tail)

    return setup, backward


_FAKES = {"entropy_global": _fake_entropy, "entropy_local": _fake_entropy, "select": _fake_select,
          "route_global": _fake_route, "route_local": _fake_route,
          "route_global_backward": _fake_route_backward, "route_local_backward": _fake_route_backward}

for _impl in IMPLEMENTATIONS:
    for _op, _fake in _FAKES.items():
        torch.library.register_fake(f"qsattn::{_op}.{_impl}", _fake, lib=_LIB)
    for _op in ("route_global", "route_local"):
        _setup, _backward = _routing_autograd(_op + "_backward", _impl)
        torch.library.register_autograd(f"qsattn::{_op}.{_impl}", _backward, setup_context=_setup, lib=_LIB)
