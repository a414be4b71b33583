"""Shared pieces of the bench_native_*.py suites: small CPU shapes, the backends compared, the
benchmark functions of the entropy and routing ops per mode (each row's ``extra_info["flops"]`` from
flop_model.py)."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast import native
from flop_model import entropy_flops, route_flops

SHAPES = {"C64-N32x32": (64, 32), "C256-N32x32": (256, 32), "C64-N48x48": (64, 48)}
BACKENDS = [pytest.param("reference"), pytest.param("torch"),
            pytest.param("native", marks=pytest.mark.skipif(native.LOAD_ERROR is not None,
                                                            reason=str(native.LOAD_ERROR)))]


def feature_maps(C, side, grad=False):
    """Source (scaled like encoder features) and target maps, (1, C, side, side) each."""
    x = (torch.randn(1, C, side, side) * 0.5).requires_grad_(grad)
    return x, torch.randn(1, C, side, side, requires_grad=grad)


def entropy_bench(mode):
    """The benchmark of attention_entropy in ``mode`` over SHAPES x BACKENDS."""
    @pytest.mark.parametrize("shape", list(SHAPES))
    @pytest.mark.parametrize("backend", BACKENDS)
    def bench(benchmark, shape, backend):
        x, _ = feature_maps(*SHAPES[shape])
        benchmark.extra_info["flops"] = entropy_flops(mode, x.shape[1], x.shape[2] * x.shape[3])
        benchmark(q.attention_entropy, x, mode, backend=backend, check_finite=False)
    return bench


def route_benches(mode):
    """The forward and forward+backward benchmarks of route in ``mode`` (256 random rows, values [x, t])."""
    def inputs(shape, grad):
        C, side = SHAPES[shape]
        return (*feature_maps(C, side, grad), torch.randperm(side * side)[:256].unsqueeze(0))

    @pytest.mark.parametrize("shape", list(SHAPES))
    @pytest.mark.parametrize("backend", BACKENDS)
    def forward(benchmark, shape, backend):
        x, t, idx = inputs(shape, False)
        benchmark.extra_info["flops"] = route_flops(mode, x.shape[1], x.shape[2] * x.shape[3],
                                                    idx.shape[1], 2 * x.shape[1])
        benchmark(q.route, x, idx, [x, t], mode, backend=backend, check_finite=False)

    @pytest.mark.parametrize("shape", list(SHAPES))
    @pytest.mark.parametrize("backend", BACKENDS)
    def forward_backward(benchmark, shape, backend):
        x, t, idx = inputs(shape, True)
        benchmark.extra_info["flops"] = route_flops(mode, x.shape[1], x.shape[2] * x.shape[3], idx.shape[1],
                                                    2 * x.shape[1], backward=True)

        def step():
            a, b = q.route(x, idx, [x, t], mode, backend=backend, check_finite=False)
            (a.sum() + b.sum()).backward()

        benchmark(step)
    return forward, forward_backward
