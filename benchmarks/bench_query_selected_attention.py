"""The whole QS-Attn call (query_selected_attention of [x, t]: entropy, selection, routing) in the global,
local and local_global modes, forward and forward+backward: every backend that runs here (and sdpa on
CUDA, global only) at harness.SUITE_SHAPES (pytest-benchmark; see benchmarks/harness.py).

    python -m pytest benchmarks/bench_query_selected_attention.py --benchmark-group-by=param:shape,param:what
"""
from harness import bench, cases


@cases(["qsattn_global", "qsattn_local", "qsattn_local_global"], passes=(False, True))
def bench_query_selected_attention(benchmark, shape, peer, what, backward):
    bench(benchmark, what, shape, peer, backward)
