"""The ``native`` backend through the public API: the whole QS-Attn step in every mode against the
reference (fp32 and fp64, B = 1..3, odd sizes, k = N, ties), half inputs, dispatch and the clean
fallback when qsattn_fast._C is not built; CUDA kernels against the CPU ones when CUDA is present."""
import os
import subprocess
import sys

import pytest
import torch

import qsattn_fast as q
from qsattn_fast import native
from qsattn_fast.registry import Request, resolve

from conftest import assert_valid_selection, features, rel_err

built = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and native.has_kernel("entropy_global", "cuda")),
                          reason="needs CUDA and qsattn_fast._C built with CUDA kernels")
MODES = ["global", "local", "local_global"]
SHAPES = [(1, 8, 7, 9), (2, 5, 6, 11), (3, 3, 5, 5)]


@built
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_qsattn_against_reference(mode, B, C, H, W, dtype, tol):
    x, t = features(B, C, H, W, dtype), features(B, C + 2, H, W, dtype)
    k = min(13, H * W)
    idx, (a, b) = q.query_selected_attention(x, [x, t], k=k, mode=mode, window=5, backend="native")
    sel_mode = "global" if mode == "global" else "local"
    ref_ent = q.attention_entropy(x.double(), sel_mode, 5, backend="reference")
    assert_valid_selection(idx, ref_ent, k, tol=tol * float(ref_ent.abs().max()))
    got_ent = q.attention_entropy(x, sel_mode, 5, backend="native")
    assert torch.equal(idx, torch.argsort(got_ent, dim=1, stable=True)[:, :k])
    ra, rb = q.route(x.double(), idx, [x.double(), t.double()], "local" if mode == "local" else "global", 5,
                     backend="reference")
    assert a.dtype == dtype and a.shape == (B, k, C) and b.shape == (B, k, C + 2)
    assert rel_err(a, ra) < tol and rel_err(b, rb) < tol


@built
@pytest.mark.parametrize("mode", MODES)
def test_float64_selection_and_gradients_equal_reference(mode):
    B, C, H, W = 2, 6, 5, 7
    x = features(B, C, H, W, torch.float64, requires_grad=True)
    t = features(B, 4, H, W, torch.float64, requires_grad=True)
    w1, w2 = torch.randn(B, 9, C, dtype=torch.float64), torch.randn(B, 9, 4, dtype=torch.float64)
    runs = {}
    for be in ("reference", "native"):
        idx, (a, b) = q.query_selected_attention(x, [x, t], k=9, mode=mode, window=3, backend=be)
        ((a * w1).sum() + (b * w2).sum()).backward()
        runs[be] = (idx, a.detach(), b.detach(), x.grad.clone(), t.grad.clone())
        x.grad = t.grad = None
    ref, got = runs["reference"], runs["native"]
    assert torch.equal(ref[0], got[0])
    for g, r in zip(got[1:], ref[1:]):
        assert rel_err(g, r) < 1e-8


@built
@pytest.mark.parametrize("mode", MODES)
def test_k_equals_n(mode):
    x = features(2, 4, 3, 4, torch.float64)
    idx, (out,) = q.query_selected_attention(x, [x], k=12, mode=mode, backend="native")
    assert all(sorted(row.tolist()) == list(range(12)) for row in idx)
    _, (ref,) = q.query_selected_attention(x, [x], k=12, mode=mode, backend="reference")
    assert rel_err(out, ref) < 1e-12


@built
def test_ties_broken_by_lower_index():
    base = features(1, 4, 1, 5, torch.float64)
    x = base.repeat(2, 1, 3, 1)                             # 3-way exact ties of the global entropy
    x[1] = x[1].flip(-1)
    ent = q.attention_entropy(x, "global", backend="native")
    assert torch.equal(q.select_queries(ent, 7, backend="native"), torch.argsort(ent, dim=1, stable=True)[:, :7])
    assert torch.equal(ent[:, :5], ent[:, 5:10])


@built
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(dtype):
    x, t = features(2, 8, 5, 6, dtype), features(2, 8, 5, 6, dtype)
    idx, (a, b) = q.query_selected_attention(x, [x, t], k=10, backend="native")
    ra, rb = q.route(x.double(), idx, [x.double(), t.double()], backend="reference")
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert a.dtype == dtype and rel_err(a, ra) < tol and rel_err(b, rb) < tol


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
        "from qsattn_fast import info, native\n"
        "from qsattn_fast.registry import Request, resolve\n"
        "assert native.LOAD_ERROR and 'qsattn_fast._C is not built' in native.LOAD_ERROR\n"
        "assert q.backends()['native'].why_not(Request('qsattn', 'cpu', torch.float32, 'global'))\n"
        "assert resolve('auto', Request('qsattn', 'cpu', torch.float32, 'global')).name == 'torch'\n"
        "x = torch.randn(1, 3, 4, 5)\n"
        "q.query_selected_attention(x, [x], k=4)\n"
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
    idx_c, out_c = q.query_selected_attention(xc, [xc, tc], k=40, mode=mode, backend="native")
    sel_mode = "global" if mode == "global" else "local"
    ref_ent = q.attention_entropy(x.double(), sel_mode, backend="reference")
    assert_valid_selection(idx_c.cpu(), ref_ent, 40, tol=2e-4 * float(ref_ent.abs().max()))
    ra = q.route(x.double(), idx_c.cpu(), [x.double(), t.double()], "local" if mode == "local" else "global",
                 backend="reference")
    assert all(rel_err(o.cpu(), r) < 2e-4 for o, r in zip(out_c, ra))
    sum((o * o).sum() for o in out_c).backward()
    rx, rt = x.double().requires_grad_(), t.double().requires_grad_()
    ro = q.route(rx, idx_c.cpu(), [rx, rt], "local" if mode == "local" else "global", backend="reference")
    sum((o * o).sum() for o in ro).backward()
    assert rel_err(xc.grad.cpu(), rx.grad) < 2e-4 and rel_err(tc.grad.cpu(), rt.grad) < 2e-4


@cuda
def test_cuda_select_equals_stable_argsort():
    e = torch.randint(0, 7, (3, 4097)).float().cuda()
    for k in (1, 256, 4097):
        assert torch.equal(q.select_queries(e, k, backend="native"), torch.argsort(e, dim=1, stable=True)[:, :k])


@built
@pytest.mark.parametrize("mode", ["global", "local"])
def test_torch_compile_runs_the_native_ops(mode):
    x, t = features(1, 4, 5, 6, requires_grad=True), features(1, 4, 5, 6)

    def step(x, t):
        return q.query_selected_attention(x, [x, t], k=6, mode=mode, backend="native", check_finite=False)[1][1].sum()

    got = torch.compile(step, backend="aot_eager", fullgraph=False)(x, t)
    got.backward()
    assert torch.allclose(got, step(x, t)) and x.grad is not None
