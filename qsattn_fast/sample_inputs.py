"""Sample arguments of every op of the contract (qsattn_fast/ops.py), as the backends call them: what
opcheck runs on (tests/ops/test_conformance.py) and what the op benchmarks time (benchmarks/bench_ops.py)."""
from __future__ import annotations

import torch

from ._common import rows
from .ops import op


def sample_inputs(impl: str, device="cpu", dtype=torch.float64, shape=(2, 3, 5, 7), k=6, value_channels=(3, 2),
                  window=3, precision=None, requires_grad=False, generator=None) -> list[tuple[str, tuple]]:
    """(op name, arguments) for every op of ops.SCHEMAS, as the backends call them: f = rows of a random
    (B, C, H, W) map, k distinct random rows per image, value maps of ``value_channels`` channels (global
    routing also with the first alone), (B, N) entropies, ``precision`` for the global ops; the backward ops
    get ``impl``'s own forward outputs and random output gradients. ``requires_grad`` marks the routings'
    f and v as leaves."""
    B, C, H, W = shape
    N = H * W

    def rand(*size):
        return torch.randn(*size, dtype=dtype, generator=generator).to(device)

    def leaves():
        f = rows(rand(B, C, H, W) * 0.5)
        v = [rows(rand(B, c, H, W)) for c in value_channels]
        return (f.detach().requires_grad_(), [x.detach().requires_grad_() for x in v]) if requires_grad else (f, v)

    idx = torch.stack([torch.randperm(N, generator=generator)[:k] for _ in range(B)]).to(device)
    ent = torch.rand(B, N, dtype=dtype, generator=generator).to(device)
    f, v = leaves()
    samples = [("entropy_global", (f.detach(), precision)), ("entropy_local", (f.detach(), H, W, window)),
               ("select", (ent, k)), ("route_global", (f, idx, v[:1], precision))]
    for mode, tail in (("global", (precision,)), ("local", (H, W, window))):
        name = f"route_{mode}"
        f, v = leaves()
        samples.append((name, (f, idx, v, *tail)))
        with torch.no_grad():
            out, lse = op(name, impl)(f, idx, v, *tail)
        samples.append((name + "_backward", (f.detach(), idx, [x.detach() for x in v], out, lse,
                                             [rand(B, k, c) for c in value_channels], *tail)))
    return samples
