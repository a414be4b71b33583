"""pytest-benchmark: top-k selection (qsattn::select, nth_element + sort of k) beside the stable
argsort of the other backends, k = 256.

    python -m pytest benchmarks/bench_native_select.py --benchmark-group-by=param:n
"""
import pytest
import torch

import qsattn_fast as q

from native_common import BACKENDS


@pytest.mark.parametrize("n", [1024, 4096, 16384])
@pytest.mark.parametrize("backend", BACKENDS)
def bench_select(benchmark, n, backend):
    ent = torch.rand(2, n)
    benchmark(q.select_queries, ent, 256, backend=backend)
