"""pytest-benchmark, CUDA only: the local routing of [x, t] (kernels/route_local.py), and the whole local step
against reference and the SDPA composition, at the shapes S1..S5 of benchmarks/gpu_report.py.

    python -m pytest benchmarks/bench_route_local.py --benchmark-group-by=param:shape
"""
import pytest
import torch
from gpu_report import PEERS, SHAPES, bench

if not torch.cuda.is_available():
    pytest.skip("GPU benchmark (needs CUDA; the Triton interpreter on CPU is not a benchmark)",
                allow_module_level=True)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("what", ["route_local", "step_local"])
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_route_local(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
