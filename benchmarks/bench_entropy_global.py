"""pytest-benchmark, CUDA only: the global row entropy (kernels/entropy_global.py)
against reference and the SDPA composition, at the shapes S1..S5 of benchmarks/gpu_report.py.

    python -m pytest benchmarks/bench_entropy_global.py --benchmark-group-by=param:shape
"""
import pytest
import torch
from gpu_report import PEERS, SHAPES, bench

if not torch.cuda.is_available():
    pytest.skip("GPU benchmark (needs CUDA; the Triton interpreter on CPU is not a benchmark)",
                allow_module_level=True)


@pytest.mark.parametrize("backward", [False])
@pytest.mark.parametrize("what", ["entropy_global"])
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_entropy_global(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
