"""pytest-benchmark: global entropy (qsattn::entropy_global) of the native backend beside reference and torch.

    python -m pytest benchmarks/bench_native_entropy_global.py --benchmark-group-by=param:shape
"""
from native_common import entropy_bench

bench_entropy_global = entropy_bench("global")
