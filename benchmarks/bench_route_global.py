"""pytest-benchmark, CUDA only: the global routing of [x, t] (kernels/route_global.py), and the whole global step
against reference and the SDPA composition, at the shapes S1..S5 of benchmarks/gpu_report.py.

    python -m pytest benchmarks/bench_route_global.py --benchmark-group-by=param:shape
"""
import pytest
import torch
from gpu_report import PEERS, SHAPES, bench

if not torch.cuda.is_available():
    pytest.skip("GPU benchmark (needs CUDA; the Triton interpreter on CPU is not a benchmark)",
                allow_module_level=True)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("what", ["route_global", "step_global"])
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_route_global(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
