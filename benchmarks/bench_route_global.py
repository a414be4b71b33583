"""Routing of [x, t] by k = min(256, N) fixed random rows (route, mode global), forward and
forward+backward: every backend that runs here (and sdpa on CUDA) at harness.SUITE_SHAPES
(pytest-benchmark; the small CPU shapes, or S1..S5 on CUDA; see benchmarks/harness.py).

    python -m pytest benchmarks/bench_route_global.py --benchmark-group-by=param:shape
"""
from harness import bench, cases


@cases(["route_global"], passes=(False, True))
def bench_route_global(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
