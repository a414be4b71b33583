"""Local row entropies (attention_entropy, mode local): every backend that runs here (and sdpa on CUDA), at
harness.SUITE_SHAPES (pytest-benchmark; the small CPU shapes, or S1..S5 on CUDA; see benchmarks/harness.py).

    python -m pytest benchmarks/bench_entropy_local.py --benchmark-group-by=param:shape
"""
from harness import bench, cases


@cases(["entropy_local"])
def bench_entropy_local(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
