"""Public API contract: bad input gets an error naming the argument, and backend dispatch (auto never
picks the reference, a forced backend that cannot run says why)."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast import registry
from qsattn_fast.backends import native as native_module
from qsattn_fast.backends.base import Backend, Request, request
from qsattn_fast.registry import BackendUnavailableError

from support.numerics import features


def x_and_values():
    x = features(2, 4, 5, 6)
    return x, [x, features(2, 3, 5, 6)]


@pytest.mark.parametrize("call,exc,words", [
    (lambda x, v: q.route(x, torch.zeros(2, 3, dtype=torch.int64), [features(2, 3, 5, 7)]), ValueError,
     ["values[0]", "B, H or W"]),
    (lambda x, v: q.qsattn(x, [features(3, 3, 5, 6)], k=4), ValueError, ["values[0]"]),
    (lambda x, v: q.qsattn(x[0], v, k=4), ValueError, ["feat_src", "4-D"]),
    (lambda x, v: q.qsattn(x, [x.double()], k=4), TypeError, ["values[0]", "dtype"]),
    (lambda x, v: q.qsattn(x, [x.to("meta")], k=4), ValueError, ["values[0]", "device"]),
    (lambda x, v: q.qsattn(x, v, k=0), ValueError, ["k", ">= 1"]),
    (lambda x, v: q.qsattn(x, v, k=31), ValueError, ["k", "<= 30"]),
    (lambda x, v: q.qsattn(x, v, k=2.5), TypeError, ["k"]),
    (lambda x, v: q.qsattn(x, v, k=True), TypeError, ["k"]),
    (lambda x, v: q.qsattn(x, v, k=4, mode="local", window=4), ValueError, ["window", "odd"]),
    (lambda x, v: q.qsattn(x, v, k=4, mode="local", window=-3), ValueError, ["window"]),
    (lambda x, v: q.qsattn(x, v, k=4, mode="diagonal"), ValueError, ["mode", "local_global"]),
    (lambda x, v: q.qsattn(x, v, k=4, variant="released"), ValueError, ["variant"]),
    (lambda x, v: q.qsattn(x, v, k=4, precision="fp8"), ValueError, ["precision"]),
    (lambda x, v: q.qsattn(x.double(), [x.double()], k=4, precision="tf32"), ValueError,
     ["precision", "float32"]),
    (lambda x, v: q.qsattn(x, [], k=4), TypeError, ["values"]),
    (lambda x, v: q.qsattn(x, "x", k=4), TypeError, ["values"]),
    (lambda x, v: q.qsattn(torch.ones(2, 4, 5, 6, dtype=torch.int32), v, k=4), TypeError,
     ["feat_src", "int32"]),
    (lambda x, v: q.qsattn(torch.empty(0, 4, 5, 6), v, k=4), ValueError, ["feat_src", "empty"]),
    (lambda x, v: q.entropy(torch.empty(2, 4, 0, 6)), ValueError, ["feat:", "empty"]),   # entropy's own name
    (lambda x, v: q.entropy(x.numpy()), TypeError, ["feat:", "Tensor"]),
    (lambda x, v: q.entropy(x.masked_fill(x > 1, float("nan"))), ValueError, ["feat:", "NaN"]),
    (lambda x, v: q.route(x, torch.zeros(2, 3), v), TypeError, ["idx", "int64"]),
    (lambda x, v: q.route(x, torch.zeros(3, 3, dtype=torch.int64), v), ValueError, ["idx", "shape"]),
    (lambda x, v: q.route(x, torch.full((2, 3), 30), v), ValueError, ["idx", "[0, 30)"]),
    (lambda x, v: q.route(x, torch.full((2, 3), -1), v), ValueError, ["idx"]),
    (lambda x, v: q.select(torch.rand(2, 9), 10), ValueError, ["k", "<= 9"]),
    (lambda x, v: q.select(torch.rand(9), 3), ValueError, ["entropy", "(B, N)"]),
    (lambda x, v: q.select(torch.arange(9).view(1, 9), 3), TypeError, ["entropy", "floating"]),
])
def test_bad_input_names_the_argument(call, exc, words):
    x, v = x_and_values()
    with pytest.raises(exc) as info:
        call(x, v)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["feat_src", "values[1]"])
def test_non_finite_inputs_rejected_and_switchable(bad, where):
    x, v = x_and_values()
    (x if where == "feat_src" else v[1])[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf") as info:
        q.qsattn(x, v, k=4)
    assert str(info.value).startswith(where)
    idx, _ = q.qsattn(x, v, k=4, check_finite=False)   # no check: runs through
    assert idx.shape == (2, 4)


def test_values_may_be_a_single_tensor():
    x, v = x_and_values()
    idx, routed = q.qsattn(x, v[1], k=4)
    assert isinstance(routed, tuple) and len(routed) == 1 and routed[0].shape == (2, 4, 3)


def test_auto_never_picks_reference_and_forced_backend_gives_reasons():
    x, v = x_and_values()
    assert registry.resolve("auto", Request("qsattn", "cpu", torch.float32, "global")).name != "reference"
    with pytest.raises(BackendUnavailableError) as info:
        q.qsattn(x, v, k=4, mode="local", backend="torch", variant="official")
    assert "torch" in info.value.reasons and "variant 'official'" in str(info.value)
    with pytest.raises(BackendUnavailableError) as info:           # auto: every candidate's reasons
        q.qsattn(x, v, k=4, mode="local", variant="official")
    assert "torch" in info.value.reasons and "backend='reference'" in str(info.value)
    with pytest.raises(ValueError, match="backend: unknown backend 'fast'"):
        q.entropy(x, backend="fast")


def test_every_reason_is_reported_and_auto_follows_priority(monkeypatch):
    """A stand-in backend (float64-only, CPU-only) placed first in the priority list."""
    class Narrow(Backend):
        name = "narrow"
        devices = ("cpu",)
        dtypes = (torch.float64,)

        def entropy(self, feat, mode, window, precision, variant):
            return torch.zeros(feat.shape[0], feat.shape[2] * feat.shape[3], dtype=feat.dtype)

    monkeypatch.setitem(registry._REGISTRY, "narrow", Narrow())
    monkeypatch.setattr(registry, "AUTO_PRIORITY", ("narrow",) + registry.AUTO_PRIORITY)
    x = features(1, 3, 4, 4)
    assert torch.equal(q.entropy(x.double()), torch.zeros(1, 16, dtype=torch.float64))
    assert q.entropy(x).dtype == torch.float32                # falls through to torch
    with pytest.raises(BackendUnavailableError) as info:
        q.entropy(x.half(), backend="narrow", precision=None)
    assert "dtype float16 not supported" in str(info.value)
    req = Request("entropy", "cuda", torch.float32, "global", "tf32")
    assert len(registry.backends()["narrow"].why_not(req)) == 3          # device, dtype, precision


@pytest.mark.parametrize("mode", ["local", "local_global"])
def test_a_window_above_a_declared_limit_falls_back_under_auto(monkeypatch, mode):
    """A backend first in the priority list that declares window <= 5 on CPU: auto takes it for window 5 and
    passes it over for 7 (reasons kept); forced, it raises with its reason; global requests carry no window."""
    calls = []

    class Small(Backend):
        name = "small"
        devices = ("cpu",)
        dtypes = (torch.float32,)
        limits = {"cpu": {"window": 5}}

        def qsattn(self, feat, values, k, mode, window, precision, variant):
            calls.append(window)
            return registry.backends()["torch"].qsattn(feat, values, k, mode, window, precision, variant)

    monkeypatch.setitem(registry._REGISTRY, "small", Small())
    monkeypatch.setattr(registry, "AUTO_PRIORITY", ("small",) + registry.AUTO_PRIORITY)
    x, v = x_and_values()
    ref5 = q.qsattn(x, v, k=4, mode=mode, window=5, backend="reference")
    got5 = q.qsattn(x, v, k=4, mode=mode, window=5)
    assert calls == [5] and torch.equal(got5[0], ref5[0])
    got7 = q.qsattn(x, v, k=4, mode=mode, window=7)
    assert calls == [5] and torch.equal(got7[0], q.qsattn(x, v, k=4, mode=mode, window=7,
                                                                            backend="reference")[0])
    with pytest.raises(BackendUnavailableError, match="window 7 exceeds the cpu kernels' limit 5") as info:
        q.qsattn(x, v, k=4, mode=mode, window=7, backend="small")
    assert "window=7" in str(info.value)
    q.qsattn(x, v, k=4, mode="global", window=7, backend="small")   # no window in global
    assert calls == [5, 7]


@pytest.mark.skipif(native_module.LOAD_ERROR is not None, reason=str(native_module.LOAD_ERROR))
def test_native_declares_the_cuda_kernels_window_limit():
    k_max = native_module.constants()["cuda_max_window"]   # csrc/qsattn_cuda.h's kMaxWindow, from the extension
    native = registry.backends()["native"]
    assert native.limits["cuda"]["window"] == k_max
    req = request("qsattn", torch.empty(1, 4, 8, 8, device="meta"), "local", window=k_max + 2)
    assert req.window == k_max + 2 and req.channels == 4 and req.n == 64
    req = Request("qsattn", "cuda", torch.float32, "local", window=k_max + 2)
    assert f"window {k_max + 2} exceeds the cuda kernels' limit {k_max}" in native.why_not(req)
    assert not any("window" in r for r in native.why_not(Request("qsattn", "cuda", torch.float32, "local",
                                                                   window=k_max)))


def test_select_is_stable_argsort():
    ent = torch.randint(0, 4, (3, 50)).float()                          # many exact ties
    for be in ("torch", "reference"):
        assert torch.equal(q.select(ent, 20, backend=be), torch.argsort(ent, dim=1, stable=True)[:, :20])


def test_official_global_runs_on_any_backend():
    """The released global mode is the paper's, so variant='official' does not restrict the backend."""
    x, v = x_and_values()
    a = q.qsattn(x, v, k=5, variant="official", backend="torch")
    b = q.qsattn(x, v, k=5, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][1], b[1][1])


def test_choice_lists_have_one_source():
    """qsattn_fast/_checks.py lists the ops' modes, the variants, the backends and the precisions; the
    package exports them, and the registry, the op overloads, auto's order, the backends' declarations and
    the trainer's options take them from there."""
    from qsattn_fast import _checks, ops
    from qsattn_fast.registry import AUTO_PRIORITY
    from qsattn_fast.train import options
    assert (q.OP_MODES, q.VARIANTS, q.BACKENDS, q.PRECISIONS) == (_checks.OP_MODES, _checks.VARIANTS,
                                                                  _checks.BACKENDS, _checks.PRECISIONS)
    assert tuple(q.backends()) and set(q.backends()) == set(_checks.BACKENDS)
    assert set(ops.IMPLEMENTATIONS) == set(_checks.BACKENDS) - {"reference"}
    assert set(AUTO_PRIORITY) <= set(_checks.BACKENDS)
    assert q.backends()["triton"].precisions == _checks.PRECISIONS
    assert q.backends()["reference"].variants == _checks.VARIANTS
    assert all(set(be.variants) <= set(_checks.VARIANTS) for be in q.backends().values())
    acts = {a.dest: a for a in options.build_parser()._actions}
    assert acts["qs_backend"].choices == ["auto", *_checks.BACKENDS]
    assert acts["qs_precision"].choices == list(_checks.PRECISIONS)
    assert acts["qs_mode"].choices == _checks.OP_MODES["qsattn"] and acts["qs_variant"].choices == _checks.VARIANTS


@pytest.mark.parametrize("old,new", [("attention_entropy", "entropy"), ("select_queries", "select"),
                                     ("query_selected_attention", "qsattn")])
def test_old_names_are_deprecated_aliases(old, new):
    """The 0.1 names call the renamed functions with a DeprecationWarning that names the new one."""
    x = features(2, 3, 4, 5)
    args = {"entropy": (x,), "select": (torch.rand(2, 20), 4), "qsattn": (x, [x], 4)}[new]
    with pytest.warns(DeprecationWarning, match=f"qsattn_fast.{new};"):
        got = getattr(q, old)(*args)
    want = getattr(q, new)(*args)
    flat = torch.utils._pytree.tree_leaves
    assert len(flat(got)) == len(flat(want)) and all(torch.equal(a, b) for a, b in zip(flat(got), flat(want)))


def test_backends_is_both_the_listing_and_the_package():
    """``qsattn_fast.backends()`` lists the registered backends, and ``qsattn_fast.backends`` is also the
    package of their modules, reachable by every import form."""
    import qsattn_fast.backends.torch as torch_module
    from qsattn_fast import registry
    assert q.backends() == registry.backends() and q.backends()["torch"].__module__ == torch_module.__name__
    assert q.backends.torch is torch_module and q.backends.base.Backend is type(q.backends()["torch"]).__mro__[1]
