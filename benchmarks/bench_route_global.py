"""Global routing of [x, t] (kernels/route_global.py) and the whole global step against reference and the SDPA
composition at S1..S5 (pytest-benchmark; CUDA only, see benchmarks/gpu_report.py).

    python -m pytest benchmarks/bench_route_global.py --benchmark-group-by=param:shape
"""
from gpu_report import bench, cases


@cases(["route_global", "step_global"], passes=(False, True))
def bench_route_global(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
