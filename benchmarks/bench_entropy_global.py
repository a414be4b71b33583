"""The global row entropy kernel (kernels/entropy_global.py) against reference and the SDPA
composition at S1..S5 (pytest-benchmark; CUDA only, see benchmarks/gpu_report.py).

    python -m pytest benchmarks/bench_entropy_global.py --benchmark-group-by=param:shape
"""
from gpu_report import bench, cases


@cases(["entropy_global"])
def bench_entropy_global(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
