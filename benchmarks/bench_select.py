"""The top-256 radix selection kernel (kernels/select.py) against reference and the SDPA
composition at S1..S5 (pytest-benchmark; CUDA only, see benchmarks/gpu_report.py).

    python -m pytest benchmarks/bench_select.py --benchmark-group-by=param:shape
"""
from gpu_report import bench, cases


@cases(["select"])
def bench_select(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
