"""pytest-benchmark: local routing (qsattn::route_local) of 256 selected rows with values [x, t],
forward and forward+backward, native beside reference and torch.

    python -m pytest benchmarks/bench_native_route_local.py --benchmark-group-by=param:shape,func
"""
from native_common import route_benches

bench_route_local, bench_route_local_forward_backward = route_benches("local")
