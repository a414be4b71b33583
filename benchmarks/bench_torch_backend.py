"""pytest-benchmark: the streaming ``torch`` backend against ``reference`` on CPU, per op and for the
whole QS-Attn step (forward+backward), at a few small global and local sizes.

    python -m pytest benchmarks/bench_torch_backend.py --benchmark-group-by=param:shape,func
"""
import pytest
import torch

import qsattn_fast as q

SHAPES = {"C64-N32x32": (64, 32), "C64-N48x48": (64, 48), "C256-N32x32": (256, 32)}
BACKENDS = ["reference", "torch"]


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request):
    return SHAPES[request.param]


def inputs(C, side, grad=False):
    x = (torch.randn(1, C, side, side) * 0.5).requires_grad_(grad)
    return x, torch.randn(1, C, side, side, requires_grad=grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["global", "local"])
def bench_entropy(benchmark, shape, backend, mode):
    x, _ = inputs(*shape)
    benchmark(q.attention_entropy, x, mode, backend=backend, check_finite=False)


@pytest.mark.parametrize("backend", BACKENDS)
def bench_select(benchmark, shape, backend):
    ent = torch.rand(1, shape[1] ** 2)
    benchmark(q.select_queries, ent, 256, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["global", "local"])
def bench_route(benchmark, shape, backend, mode):
    x, t = inputs(*shape)
    idx = torch.randperm(shape[1] ** 2)[:256].unsqueeze(0)
    benchmark(q.route, x, idx, [x, t], mode, backend=backend, check_finite=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["global", "local", "local_global"])
def bench_qsattn_forward_backward(benchmark, shape, backend, mode):
    x, t = inputs(*shape, grad=True)

    def step():
        _, (a, b) = q.query_selected_attention(x, [x, t], k=256, mode=mode, backend=backend, check_finite=False)
        (a.sum() + b.sum()).backward()

    benchmark(step)
