"""The ``triton`` backend (qsattn_fast/triton_backend.py): import hygiene, availability reasons, dispatch,
the whole QS-Attn step in all three modes against the reference, and torch.compile over the ops."""
import subprocess
import sys

import pytest
import torch
from conftest import assert_valid_selection, features, rel_err
from triton_env import DEVICE, INTERPRET

import qsattn_fast as q
from qsattn_fast.registry import BackendUnavailableError, Request, backends, resolve
from qsattn_fast.triton_backend import TritonBackend


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


@pytest.mark.parametrize("mode", ["global", "local", "local_global"])
@pytest.mark.parametrize("B,C,H,W,k", [(1, 3, 7, 9, 63), (2, 16, 9, 11, 23), (3, 7, 5, 6, 10)])
def test_qsattn_step_matches_reference(mode, B, C, H, W, k):
    """Selection valid against the reference entropies; routed outputs and gradients (w.r.t. the source
    and the target features) equal to the reference's for the same selection."""
    x = features(B, C, H, W, scale=1.5 * C ** -0.5)
    tgt = torch.randn(B, C, H, W)
    xs, ts = x.to(DEVICE).requires_grad_(), tgt.to(DEVICE).requires_grad_()
    idx, (ps, pt) = q.query_selected_attention(xs, [xs, ts], k=k, mode=mode, window=5, backend="triton")
    sel_mode = "global" if mode == "global" else "local"
    ref_ent = q.attention_entropy(x.double(), sel_mode, 5, backend="reference")
    assert_valid_selection(idx.cpu(), ref_ent, k, tol=2e-4 * float(ref_ent.max()))

    route_mode = "local" if mode == "local" else "global"
    xr, tr = x.double().requires_grad_(), tgt.double().requires_grad_()
    rs, rt = q.route(xr, idx.cpu(), [xr, tr], route_mode, 5, backend="reference")
    assert rel_err(ps.cpu(), rs) < 2e-4 and rel_err(pt.cpu(), rt) < 2e-4
    w1, w2 = torch.randn_like(rs), torch.randn_like(rt)
    g = torch.autograd.grad((ps * w1.float().to(DEVICE)).sum() + (pt * w2.float().to(DEVICE)).sum(), (xs, ts))
    r = torch.autograd.grad((rs * w1).sum() + (rt * w2).sum(), (xr, tr))
    assert rel_err(g[0].cpu(), r[0]) < 1e-4 and rel_err(g[1].cpu(), r[1]) < 1e-4


def test_torch_compile():
    """entropy -> selection -> routing -> loss -> backward as one compiled graph (fullgraph: the custom
    ops are opaque calls), equal to the eager run."""
    from qsattn_fast.kernels import entropy_global, route_global, select

    def step(x, t):
        idx = select.select(entropy_global.entropy_global(x.detach(), None), 9)
        out, _ = route_global.route_global(x, idx, torch.cat([x, t], 1), None)
        return (out * out).sum()

    x = features(2, 6, 5, 7).to(DEVICE).requires_grad_()
    t = torch.randn(2, 6, 5, 7).to(DEVICE).requires_grad_()
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    loss_c = compiled(x, t)
    grads_c = torch.autograd.grad(loss_c, (x, t))
    loss_e = step(x, t)
    grads_e = torch.autograd.grad(loss_e, (x, t))
    assert rel_err(loss_c, loss_e) < 1e-6
    assert all(rel_err(a, b) < 1e-6 for a, b in zip(grads_c, grads_e))
