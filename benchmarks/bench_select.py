"""Top-k selection (select_queries, k = min(256, N)): every backend that runs here (and sdpa on CUDA), at
harness.SUITE_SHAPES (pytest-benchmark; the small CPU shapes, or S1..S5 on CUDA; see benchmarks/harness.py).

    python -m pytest benchmarks/bench_select.py --benchmark-group-by=param:shape
"""
from harness import bench, cases


@cases(["select"])
def bench_select(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
