"""pytest-benchmark: global routing (qsattn::route_global) of 256 selected rows with values [x, t],
forward and forward+backward, native beside reference and torch.

    python -m pytest benchmarks/bench_native_route_global.py --benchmark-group-by=param:shape,func
"""
from native_common import route_benches

bench_route_global, bench_route_global_forward_backward = route_benches("global")
