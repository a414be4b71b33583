"""pytest-benchmark: local entropy (qsattn::entropy_local) of the native backend beside reference and torch.

    python -m pytest benchmarks/bench_native_entropy_local.py --benchmark-group-by=param:shape
"""
from native_common import entropy_bench

bench_entropy_local = entropy_bench("local")
