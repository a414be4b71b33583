"""The local (7x7) row entropy kernel (kernels/entropy_local.py) against reference and the SDPA
composition at S1..S5 (pytest-benchmark; CUDA only, see benchmarks/gpu_report.py).

    python -m pytest benchmarks/bench_entropy_local.py --benchmark-group-by=param:shape
"""
from gpu_report import bench, cases


@cases(["entropy_local"])
def bench_entropy_local(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
