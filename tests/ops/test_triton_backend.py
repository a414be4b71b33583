"""What only the ``triton`` backend has (its API conformance is tests/ops/test_conformance.py): import
hygiene, availability reasons, dispatch, and torch.compile over the ops."""
import subprocess
import sys

import pytest
import torch

from qsattn_fast.backends.base import Request
from qsattn_fast.backends.triton import TritonBackend
from qsattn_fast.registry import BackendUnavailableError, backends, resolve

from support.numerics import features, rel_err
from support.triton_env import DEVICE, INTERPRET


def test_import_does_not_load_triton_or_cuda():
    code = ("import sys, os, qsattn_fast, torch; assert 'triton' not in sys.modules; "
            "assert not torch.cuda.is_initialized(); assert 'TRITON_INTERPRET' not in os.environ; "
            "print(qsattn_fast.backends()['triton'].summary)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)


def test_unavailable_names_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)          # import triton -> ImportError
    monkeypatch.setattr(TritonBackend, "_checked", False)
    monkeypatch.setattr(TritonBackend, "_missing", None)
    be = TritonBackend()
    assert "triton is not importable" in be.unavailable()
    with pytest.raises(BackendUnavailableError, match="triton is not importable"):
        resolve("triton", Request("entropy", DEVICE, torch.float32, "global"))


def test_auto_never_picks_the_interpreter():
    req = Request("qsattn", "cpu", torch.float32, "global")
    assert backends()["triton"].auto_reasons(req)
    assert resolve("auto", req).name != "triton"


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors run only under the interpreter")
def test_forced_on_cpu_under_interpreter():
    assert resolve("triton", Request("route", "cpu", torch.float32, "local")).name == "triton"


def test_torch_compile():
    """entropy -> selection -> routing -> loss -> backward as one compiled graph (fullgraph: the custom
    ops are opaque calls), equal to the eager run."""
    be = backends()["triton"]
    entropy, select, route = (be.kernel(name) for name in ("entropy_global", "select", "route_global"))
    rows = lambda m: m.flatten(2).transpose(1, 2)  # noqa: E731

    def step(x, t):
        idx = select(entropy(rows(x.detach()), None), 9)
        (a, b), _ = route(rows(x), idx, [rows(x), rows(t)], None)
        return (a * a).sum() + (b * b).sum()

    x = features(2, 6, 5, 7).to(DEVICE).requires_grad_()
    t = torch.randn(2, 6, 5, 7).to(DEVICE).requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    loss_c = compiled(x, t)
    grads_c = torch.autograd.grad(loss_c, (x, t))
    loss_e = step(x, t)
    grads_e = torch.autograd.grad(loss_e, (x, t))
    assert rel_err(loss_c, loss_e) < 1e-6
    assert all(rel_err(a, b) < 1e-6 for a, b in zip(grads_c, grads_e))
