"""Local routing of [x, t] (kernels/route_local.py) and the whole local step against reference and the SDPA
composition at S1..S5 (pytest-benchmark; CUDA only, see benchmarks/gpu_report.py).

    python -m pytest benchmarks/bench_route_local.py --benchmark-group-by=param:shape
"""
from gpu_report import bench, cases


@cases(["route_local", "step_local"], passes=(False, True))
def bench_route_local(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
