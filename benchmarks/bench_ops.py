"""The ops, every backend that runs here, one parametrised pytest-benchmark suite (the small CPU shapes, or
S1..S5 on CUDA: harness.SUITE_SHAPES).

``bench_op``: each quantity of harness.WHATS (an API call: ``entropy``, ``select``, ``route`` or ``qsattn``
in a mode, as a user makes it, checks included) on every peer, forward and, for the routings, forward +
backward; sdpa is PyTorch's own fused attention on CUDA. ``bench_kernel``: each op of the contract
(qsattn_fast/ops.py) called directly on ``sample_inputs`` at the same shapes, per implementation:
the kernels without the API's checks and casts.

    python -m pytest benchmarks/bench_ops.py --benchmark-group-by=param:what,param:shape
    python -m pytest benchmarks/bench_ops.py -k "route_local and native"
"""
import pytest
import torch

from qsattn_fast import ops
from qsattn_fast.sample_inputs import sample_inputs

from harness import SHAPES, SUITE_SHAPES, bench, cases, peers, suite_device


@cases()
def bench_op(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)


@pytest.mark.parametrize("impl", [p for p in peers(suite_device()) if p in ops.IMPLEMENTATIONS])
@pytest.mark.parametrize("sample", range(len(sample_inputs("torch"))),
                         ids=[name for name, _ in sample_inputs("torch")])
@pytest.mark.parametrize("shape", SUITE_SHAPES[suite_device()])
def bench_kernel(benchmark, shape, sample, impl):
    device = suite_device()
    C, side, B = SHAPES[shape]
    N = side * side
    name, args = sample_inputs(impl, device, torch.float32, shape=(B, C, side, side), k=min(256, N),
                               value_channels=(C, C), window=7)[sample]
    kernel = ops.op(name, impl)
    benchmark(lambda: (kernel(*args), torch.cuda.synchronize() if device == "cuda" else None))
