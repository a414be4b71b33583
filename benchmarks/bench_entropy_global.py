"""Global row entropies (attention_entropy, mode global): every backend that runs here (and sdpa on CUDA), at
harness.SUITE_SHAPES (pytest-benchmark; the small CPU shapes, or S1..S5 on CUDA; see benchmarks/harness.py).

    python -m pytest benchmarks/bench_entropy_global.py --benchmark-group-by=param:shape
"""
from harness import bench, cases


@cases(["entropy_global"])
def bench_entropy_global(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
