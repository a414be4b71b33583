"""One conformance suite for every registered backend (xformers style): each test runs once per backend
of ``qsattn_fast.backends()`` other than ``reference`` (the ground truth every backend is held to) and
skips, with the backend's own reasons, where ``why_not`` refuses the request. Entropies, selections,
routed outputs and gradients in every mode (fp32 relative to the float64 reference, float64 equal to it,
float64 gradcheck), k = N, ties, window borders, half inputs and bad inputs; B = 1..3 and N never a
multiple of a block. Backend-specific behaviour stays in the backend's own test file."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast import OP_MODES, ops
from qsattn_fast._common import rows
from qsattn_fast.backends.base import request
from qsattn_fast.sample_inputs import sample_inputs

from support.numerics import SHAPES, assert_valid_selection, features, op, ref_entropy, rel_err, run, stable

try:                                  # the Triton kernels: compiled on a GPU, else under the interpreter
    from support.triton_env import DEVICE
except pytest.skip.Exception:         # triton missing: the triton backend skips with its own reason
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

BACKENDS = [name for name in q.backends() if name != "reference"]
MODES = OP_MODES["qsattn"]


def runs(backend, name, x, mode=None, window=7):
    """Skip unless ``backend`` takes the request of op ``name`` (forced, as the tests call it)."""
    why = q.backends()[backend].why_not(request(name, x, mode, window=window))
    if why:
        pytest.skip(f"{backend}: {'; '.join(why)}")


def on(x):
    return x.to(DEVICE)


@pytest.mark.parametrize("backend", ops.IMPLEMENTATIONS)
def test_every_backend_implements_every_op_of_the_contract(backend):
    """qsattn::<op>.<backend> exists for every op with the contract's schema and has a kernel for the
    device the backend runs on here."""
    x = on(features(1, 3, 2, 2))
    runs(backend, "qsattn", x, "global")
    key = x.device.type.upper()
    for name, schema in ops.SCHEMAS.items():
        overload = op(name, backend)
        assert str(overload._schema) == f"qsattn::{name}.{backend}{schema}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"qsattn::{name}.{backend}", key), (name, key)


#: sample_inputs settings of the opcheck cases: float64 at (2, 3, 5, 7), k = 6, window 3, precision None;
#: float32 on a 2 x 3 map with k = N, a window larger than the map and precision "ieee" spelled out.
OPCHECK_CASES = {"fp64": dict(dtype=torch.float64),
                 "fp32-tiny": dict(dtype=torch.float32, shape=(1, 2, 2, 3), k=6, window=7, precision="ieee")}


@pytest.mark.parametrize("backend", ops.IMPLEMENTATIONS)
@pytest.mark.parametrize("sample", range(len(sample_inputs("torch"))),
                         ids=[name for name, _ in sample_inputs("torch")])
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(backend, sample, case):
    """torch.library.opcheck of each implementation on sample_inputs: schema, fake kernel (shapes,
    dtypes, strides), autograd registration, and AOT dispatch (the routing ops' shared autograd glue)."""
    runs(backend, "qsattn", on(features(2, 3, 5, 7, torch.float64)), "global")
    name, args = sample_inputs(backend, DEVICE, requires_grad=True, **OPCHECK_CASES[case])[sample]
    torch.library.opcheck(op(name, backend), args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", OP_MODES["entropy"])
@pytest.mark.parametrize("B,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_entropy(backend, mode, B, C, H, W, dtype, tol):
    x = features(B, C, H, W, dtype, scale=1.0)
    runs(backend, "entropy", on(x), mode)
    got = q.entropy(on(x), mode, 5, backend=backend).cpu()
    ref = ref_entropy(x, mode, 5)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.shape == (B, H * W)
    assert rel_err(got, ref) < tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-12)])
def test_qsattn_against_reference(backend, mode, B, C, H, W, dtype, tol):
    """The selection is the stable argsort of the backend's own entropies and valid against the
    reference's; the routed values equal the reference routing of that selection."""
    x, t = features(B, C, H, W, dtype), features(B, C + 2, H, W, dtype)
    runs(backend, "qsattn", on(x), mode, 5)
    k = min(13, H * W)
    idx, (a, b) = q.qsattn(on(x), [on(x), on(t)], k=k, mode=mode, window=5, backend=backend)
    idx, a, b = idx.cpu(), a.cpu(), b.cpu()
    sel_mode = ops.split_mode(mode)[0]
    ref_ent = ref_entropy(x, sel_mode, 5)
    assert_valid_selection(idx, ref_ent, k, tol=max(tol, 1e-4) * float(ref_ent.abs().max()))
    own = q.entropy(on(x), sel_mode, 5, backend=backend).cpu()
    assert torch.equal(idx, stable(own, k))
    ra, rb = q.route(x.double(), idx, [x.double(), t.double()], ops.split_mode(mode)[1], 5,
                     backend="reference")
    assert a.dtype == dtype and a.shape == (B, k, C) and b.shape == (B, k, C + 2)
    assert rel_err(a, ra) < tol and rel_err(b, rb) < tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_gradients_against_reference(backend, mode, dtype, tol):
    """Outputs and gradients (source and value maps) against the float64 reference routing of the
    backend's selection, which in float64 is the reference's own selection."""
    B, C, H, W = 2, 6, 5, 7
    x, t = features(B, C, H, W, dtype), features(B, 4, H, W, dtype)
    runs(backend, "qsattn", on(x), mode, 3)
    w1, w2 = torch.randn(B, 9, C, dtype=torch.float64), torch.randn(B, 9, 4, dtype=torch.float64)
    xs, ts = on(x).requires_grad_(), on(t).requires_grad_()
    idx, (a, b) = q.qsattn(xs, [xs, ts], k=9, mode=mode, window=3, backend=backend)
    mine = torch.autograd.grad((a.double().cpu() * w1).sum() + (b.double().cpu() * w2).sum(), (xs, ts))
    idx = idx.cpu()
    if dtype == torch.float64:
        assert torch.equal(idx, q.qsattn(x, [x, t], k=9, mode=mode, window=3,
                                                           backend="reference")[0])
    xr, tr = x.double().requires_grad_(), t.double().requires_grad_()
    ra, rb = q.route(xr, idx, [xr, tr], ops.split_mode(mode)[1], 3, backend="reference")
    ref = torch.autograd.grad((ra * w1).sum() + (rb * w2).sum(), (xr, tr))
    assert rel_err(a.cpu(), ra) < tol and rel_err(b.cpu(), rb) < tol
    assert all(rel_err(g.cpu(), r) < tol for g, r in zip(mine, ref))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", OP_MODES["route"])
def test_route_gradcheck(backend, mode):
    x = features(2, 3, 3, 5, torch.float64)
    runs(backend, "route", on(x), mode, 3)
    x, t = on(x).requires_grad_(), on(features(2, 2, 3, 5, torch.float64)).requires_grad_()
    idx = on(torch.stack([torch.randperm(15)[:6], torch.randperm(15)[:6]]))
    fast = backend == "triton" and DEVICE == "cpu"    # the interpreter: a random projection, not every column
    assert torch.autograd.gradcheck(lambda a, b: q.route(a, idx, [a, b], mode, 3, backend=backend), (x, t),
                                    fast_mode=fast)


@pytest.mark.parametrize("backend", ops.IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", OP_MODES["route"])
def test_routing_returns_each_rows_log_sum_exp(backend, mode):
    """lse, what every routing saves for its backward, is the log-sum-exp of each selected attention row
    (local: over the zero-padded 3 x 3 window, out-of-map keys with logit 0)."""
    x = features(2, 6, 5, 7, torch.float64)
    runs(backend, "route", on(x), mode, 3)
    idx = torch.stack([torch.randperm(35)[:8] for _ in range(2)])
    tail = (None,) if mode == "global" else (5, 7, 3)
    _, lse = op(f"route_{mode}", backend)(rows(on(x)), on(idx), [rows(on(x))], *tail)
    q = rows(x).gather(1, idx[..., None].expand(-1, -1, 6))
    if mode == "global":
        s = q @ x.flatten(2)
    else:
        keys = torch.nn.functional.unfold(x, 3, padding=1).view(2, 6, 9, 35)
        s = torch.einsum("bcpk,bkc->bkp", keys.gather(3, idx[:, None, None].expand(-1, 6, 9, -1)), q)
    assert rel_err(lse.cpu(), torch.logsumexp(s, -1)) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", OP_MODES["route"])
def test_three_value_maps(backend, mode):
    """A list of three value maps (the Triton backward reads two in place and concatenates the rest) routes
    like the reference, outputs and gradients."""
    x = features(2, 4, 3, 5, torch.float64)
    runs(backend, "route", on(x), mode, 3)
    vals = [features(2, c, 3, 5, torch.float64) for c in (2, 5, 1)]
    idx = torch.stack([torch.randperm(15)[:7], torch.randperm(15)[:7]])
    outs, grads = run(backend, on(x), on(idx), [None, *map(on, vals)], mode, 3)
    ref_outs, ref_grads = run("reference", x, idx, [None, *vals], mode, 3)
    assert len(outs) == len(grads) == 4
    assert all(rel_err(a.cpu(), b) < 1e-10 for a, b in zip([*outs, *grads], [*ref_outs, *ref_grads], strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_k_equals_n(backend, mode):
    x = features(2, 4, 3, 4, torch.float64)
    runs(backend, "qsattn", on(x), mode)
    idx, (out,) = q.qsattn(on(x), [on(x)], k=12, mode=mode, backend=backend)
    assert all(sorted(row.tolist()) == list(range(12)) for row in idx.cpu())
    _, (ref,) = q.qsattn(x, [x], k=12, mode=mode, backend="reference")
    assert rel_err(out.cpu(), ref) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_lower_index(backend):
    """Repeated feature vectors give exactly equal entropies: the selection is the stable argsort."""
    base = features(1, 4, 1, 5, torch.float64)
    x = base.repeat(2, 1, 3, 1)                           # every column repeated on 3 rows: 3-way ties
    x[1] = x[1].flip(-1)
    runs(backend, "entropy", on(x), "global")
    ent = q.entropy(on(x), "global", backend=backend)
    idx = q.select(ent, 7, backend=backend).cpu()
    ent = ent.cpu()
    assert torch.equal(idx, stable(ent, 7))
    picked = ent.gather(1, idx)
    assert bool((picked[:, 1:] == picked[:, :-1]).any())       # the selection did cross exact ties


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_borders(backend):
    """Corners and edges, windows up to larger than the map: out-of-map keys are zeros with logit 0."""
    x, v = features(2, 3, 4, 5, torch.float64), features(2, 2, 4, 5, torch.float64)
    idx = torch.tensor([[0, 4, 15, 19, 7], [19, 0, 10, 9, 2]])
    for window in (3, 7, 9):
        runs(backend, "route", on(x), "local", window)
        out = q.route(on(x), on(idx), [on(x), on(v)], "local", window, backend=backend)
        ref = q.route(x, idx, [x, v], "local", window, backend="reference")
        assert all(rel_err(o.cpu(), r) < 1e-12 for o, r in zip(out, ref))
        ent = q.entropy(on(x), "local", window, backend=backend).cpu()
        assert rel_err(ent, q.entropy(x, "local", window, backend="reference")) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(backend, dtype):
    x, t = features(2, 8, 5, 6, dtype), features(2, 8, 5, 6, dtype)
    runs(backend, "qsattn", on(x), "global")
    idx, (a, b) = q.qsattn(on(x), [on(x), on(t)], k=10, backend=backend)
    ra, rb = q.route(x.double(), idx.cpu(), [x.double(), t.double()], backend="reference")
    assert a.dtype == dtype and q.entropy(on(x), backend=backend).dtype == torch.float32
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert rel_err(a.cpu(), ra) < tol and rel_err(b.cpu(), rb) < tol


def _zeros(f, *size):
    return f.new_zeros(size)


@pytest.mark.parametrize("backend", ops.IMPLEMENTATIONS)
@pytest.mark.parametrize("call,words", [   # run(name): the backend's op; f (2, 30, 4) rows of a 5 x 6 map
    (lambda run, f, idx: run("select")(f[..., 0], 31), ["k:", "31"]),
    (lambda run, f, idx: run("select")(f[..., 0], 0), ["k:", "0"]),
    (lambda run, f, idx: run("entropy_global")(f[0], None), ["f:", "3-D"]),
    (lambda run, f, idx: run("entropy_global")(f.int(), None), ["f:", "float"]),
    (lambda run, f, idx: run("entropy_local")(f, 5, 6, 4), ["window:", "odd"]),
    (lambda run, f, idx: run("entropy_local")(f, 6, 6, 3), ["H, W:", "N = 30"]),
    (lambda run, f, idx: run("select")(f[0, :, 0], 3), ["entropy:", "2-D"]),
    (lambda run, f, idx: run("route_global")(f, idx, [f[:, :29]], None), ["v:", "shape", "29"]),
    (lambda run, f, idx: run("route_local")(f, idx, [f[:1]], 5, 6, 3), ["v:", "shape", "B=2"]),
    (lambda run, f, idx: run("route_global")(f, idx, [f.double()], None), ["v:", "dtype"]),
    (lambda run, f, idx: run("route_local")(f, idx, [], 5, 6, 3), ["v:", "at least one"]),
    (lambda run, f, idx: run("route_local")(f, idx[:1], [f], 5, 6, 3), ["idx:", "shape"]),
    (lambda run, f, idx: run("route_global")(f, idx.int(), [f], None), ["idx:", "int64"]),
    (lambda run, f, idx: run("route_global_backward")(f, idx, [f], [], _zeros(f, 2, 3), [], None),
     ["out, grad_out:", "one tensor per value map"]),
    (lambda run, f, idx: run("route_local_backward")(f, idx, [f], [_zeros(f, 2, 3, 4)], _zeros(f, 2, 1),
                                                     [_zeros(f, 2, 3, 4)], 5, 6, 3), ["lse:", "shape"]),
    pytest.param(lambda run, f, idx: run("route_global")(f, idx + 28, [f], None), ["idx:", "[0, 30)"],
                 marks=pytest.mark.skipif(DEVICE != "cpu", reason="on CUDA only the API checks the range (a sync)")),
    pytest.param(lambda run, f, idx: run("route_local")(f, idx.cpu(), [f], 5, 6, 3), ["idx:", "cpu"],
                 marks=pytest.mark.skipif(DEVICE == "cpu", reason="needs a second device: CUDA")),
])
def test_bad_inputs_are_refused_whatever_the_backend(backend, call, words):
    """Each implementation of the contract refuses bad arguments itself (the API's own checks, before any
    backend, are test_api.py's): a one-line error that starts with the argument's name."""
    x = on(features(2, 4, 5, 6))
    runs(backend, "qsattn", x, "global")
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        call(lambda name: op(name, backend), rows(x), on(torch.tensor([[0, 7, 29], [3, 3, 11]])))
    msg = str(info.value)
    assert msg.startswith(words[0]) and "\n" not in msg and all(w in msg for w in words), msg
