"""pytest-benchmark, CUDA only: the top-256 selection (kernels/select.py)
against reference and the SDPA composition, at the shapes S1..S5 of benchmarks/gpu_report.py.

    python -m pytest benchmarks/bench_select.py --benchmark-group-by=param:shape
"""
import pytest
import torch
from gpu_report import PEERS, SHAPES, bench

if not torch.cuda.is_available():
    pytest.skip("GPU benchmark (needs CUDA; the Triton interpreter on CPU is not a benchmark)",
                allow_module_level=True)


@pytest.mark.parametrize("backward", [False])
@pytest.mark.parametrize("what", ["select"])
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_select(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
