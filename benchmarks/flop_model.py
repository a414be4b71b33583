"""The one FLOP model of the benchmarks, through harness.py (report.py, gpu_report.py, bench_ops.py).

Matrix-product FLOPs of the math (2 per multiply-add), as docs/design.md §1 defines the ops; exponentials,
reductions and the selection are not counted. The count is of the dense products the definition implies,
not of what a kernel forms (a kernel may skip or recompute work), so achieved FLOP/s compare backends on
the same work. With ``m`` the attended positions per row (N global, window^2 local), F (N, C) and values
of C_v channels in all:

* entropy: 2 N m C (the logits of every row); never differentiated, so backward adds nothing;
* route (k selected rows): forward 2 k m (C + C_v) (logits, then P V); backward 2 k m (3 C + 2 C_v)
  (the logits recomputed, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q);
* qsattn: entropy in the selection mode (local for local_global) plus route in the routing mode
  (global for local_global).

``qsattn_floor`` is the work a step cannot avoid, for the time floor of the reports: the matrix products
that must be formed (the global entropy's logits S = F F^T are symmetric, so only half of them: N (N + 1)
dot products of C, i.e. about N^2 C FLOPs) and the exponentials (every logit of the entropy once per row
it belongs to, N m; each routed row's m logits once forward and once more in the backward's recompute).
A step takes at least the products at the matmul rate plus the exponentials at the exp rate: on a CPU core
both run on the same FMA units, so they add (on a GPU the exponentials run on separate units, and the sum
is a conservative floor).
"""
from __future__ import annotations

from qsattn_fast.ops import split_mode


def _attended(mode: str, N: int, window: int) -> int:
    if mode not in ("global", "local"):
        raise ValueError(f"mode: expected 'global' or 'local', got {mode!r}")
    return N if mode == "global" else window * window


def entropy_flops(mode: str, C: int, N: int, B: int = 1, window: int = 7) -> int:
    """Row entropies of B maps (B, C, N): 2 B N m C."""
    return 2 * B * N * _attended(mode, N, window) * C


def route_flops(mode: str, C: int, N: int, k: int, cv: int, B: int = 1, window: int = 7,
                backward: bool = False) -> int:
    """Routing k rows of B maps into values of cv channels in all; with ``backward`` forward + backward."""
    m = _attended(mode, N, window)
    return 2 * B * k * m * ((C + cv) + ((3 * C + 2 * cv) if backward else 0))


def qsattn_flops(mode: str, C: int, N: int, k: int, cv: int, B: int = 1, window: int = 7,
                 backward: bool = False) -> int:
    """The whole step in ``mode`` (global, local, local_global)."""
    select_mode, route_mode = split_mode(mode)
    return (entropy_flops(select_mode, C, N, B, window)
            + route_flops(route_mode, C, N, k, cv, B, window, backward))


def entropy_floor(mode: str, C: int, N: int, B: int = 1, window: int = 7) -> tuple[int, int]:
    """(FLOPs of the products that must be formed, exponentials) of the row entropies in ``mode``."""
    products = B * N * (N + 1) * C if mode == "global" else entropy_flops("local", C, N, B, window)
    return products, B * N * _attended(mode, N, window)


def qsattn_floor(mode: str, C: int, N: int, k: int, cv: int, B: int = 1, window: int = 7,
                 backward: bool = False) -> tuple[int, int]:
    """(FLOPs of the products that must be formed, exponentials) of the whole step in ``mode``."""
    select_mode, route_mode = split_mode(mode)
    products, exps = entropy_floor(select_mode, C, N, B, window)
    products += route_flops(route_mode, C, N, k, cv, B, window, backward)
    exps += B * k * _attended(route_mode, N, window) * (2 if backward else 1)
    return products, exps
