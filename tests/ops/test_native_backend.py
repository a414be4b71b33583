"""What only the ``native`` backend has (its API conformance is tests/ops/test_conformance.py): precision
and dispatch declarations, the clean fallback when qsattn_fast._C is not built, the CUDA kernels against
the reference when CUDA is present, torch.compile over its ops."""
import os
import subprocess
import sys

import pytest
import torch

import qsattn_fast as q
from qsattn_fast import OP_MODES
from qsattn_fast.backends import native
from qsattn_fast.backends.base import Request
from qsattn_fast.ops import split_mode
from qsattn_fast.registry import resolve

from support.numerics import assert_valid_selection, features, rel_err

built = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and native.has_kernel("entropy_global", "cuda")),
                          reason="needs CUDA and qsattn_fast._C built with CUDA kernels")
MODES = OP_MODES["qsattn"]


@built
def test_declares_ieee_only_and_auto_prefers_it_on_cpu():
    be = q.backends()["native"]
    assert be.precisions == ("ieee",)
    why = be.why_not(Request("entropy", "cpu", torch.float32, "global", "tf32"))
    assert any("precision 'tf32' not supported" in r for r in why)
    assert resolve("auto", Request("qsattn", "cpu", torch.float32, "global")).name == "native"


@built
def test_cuda_without_cuda_kernels_is_explained():
    if native.has_kernel("entropy_global", "cuda"):
        pytest.skip("this build has CUDA kernels")
    why = q.backends()["native"].why_not(Request("qsattn", "cuda", torch.float32, "global"))
    assert why and "without CUDA kernels" in why[0]


def test_package_falls_back_when_the_extension_is_missing():
    """Block the import of qsattn_fast._C: the package imports, native reports why, auto takes torch."""
    code = (
        "import sys; sys.modules['qsattn_fast._C'] = None\n"
        "import torch, qsattn_fast as q\n"
        "from qsattn_fast import info\n"
        "from qsattn_fast.backends import native\n"
        "from qsattn_fast.backends.base import Request\n"
        "from qsattn_fast.registry import resolve\n"
        "assert native.LOAD_ERROR and 'qsattn_fast._C is not built' in native.LOAD_ERROR\n"
        "assert q.backends()['native'].why_not(Request('qsattn', 'cpu', torch.float32, 'global'))\n"
        "assert resolve('auto', Request('qsattn', 'cpu', torch.float32, 'global')).name == 'torch'\n"
        "x = torch.randn(1, 3, 4, 5)\n"
        "q.qsattn(x, [x], k=4)\n"
        "assert 'qsattn_fast._C is not built' in info.report()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr


@cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_kernels_against_reference(mode):
    x, t = features(2, 37, 19, 23, scale=0.4), features(2, 11, 19, 23)
    xc, tc = x.cuda().requires_grad_(), t.cuda().requires_grad_()
    idx_c, out_c = q.qsattn(xc, [xc, tc], k=40, mode=mode, backend="native")
    sel_mode = split_mode(mode)[0]
    ref_ent = q.entropy(x.double(), sel_mode, backend="reference")
    assert_valid_selection(idx_c.cpu(), ref_ent, 40, tol=2e-4 * float(ref_ent.abs().max()))
    ra = q.route(x.double(), idx_c.cpu(), [x.double(), t.double()], split_mode(mode)[1],
                 backend="reference")
    assert all(rel_err(o.cpu(), r) < 2e-4 for o, r in zip(out_c, ra))
    sum((o * o).sum() for o in out_c).backward()
    rx, rt = x.double().requires_grad_(), t.double().requires_grad_()
    ro = q.route(rx, idx_c.cpu(), [rx, rt], split_mode(mode)[1], backend="reference")
    sum((o * o).sum() for o in ro).backward()
    assert rel_err(xc.grad.cpu(), rx.grad) < 2e-4 and rel_err(tc.grad.cpu(), rt.grad) < 2e-4


@cuda
def test_cuda_select_equals_stable_argsort():
    e = torch.randint(0, 7, (3, 4097)).float().cuda()
    for k in (1, 256, 4097):
        assert torch.equal(q.select(e, k, backend="native"), torch.argsort(e, dim=1, stable=True)[:, :k])


@built
@pytest.mark.parametrize("mode", OP_MODES["route"])
def test_torch_compile_runs_the_native_ops(mode):
    x, t = features(1, 4, 5, 6, requires_grad=True), features(1, 4, 5, 6)

    def step(x, t):
        return q.qsattn(x, [x, t], k=6, mode=mode, backend="native", check_finite=False)[1][1].sum()

    got = torch.compile(step, backend="aot_eager", fullgraph=False)(x, t)
    got.backward()
    assert torch.allclose(got, step(x, t)) and x.grad is not None
