"""benchmarks/harness.py measures the same thing on every peer: each quantity's output agrees with the
reference backend's on the harness's own inputs (odd N, B = 2), its backward reaches both maps, and its
FLOP count is flop_model.py's."""
import sys

import pytest
import torch

from qsattn_fast import OP_MODES

from support import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import flop_model  # noqa: E402
import harness  # noqa: E402

PEERS = [p for p in harness.peers("cpu") if p != "reference"]


def outputs(peer, what, backward):
    """The outputs (and with ``backward`` the gradients of x and t) of one quantity at C=5, N=13^2, B=2."""
    x, t = harness.inputs(what, 5, 13, 2, "cpu", backward, seed=3)
    fn = harness.workload(peer, what, k=20)
    out = fn(x, t)
    outs = list(out) if isinstance(out, tuple) else [out]
    if backward:
        sum((o.float() * (i + 1)).sum() for i, o in enumerate(outs)).backward()   # the runner's loss
        outs += [x.grad, t.grad]
    return outs


def test_peers_on_cpu():
    assert "reference" in harness.peers("cpu") and "sdpa" not in harness.peers("cpu")
    assert "triton" not in harness.peers("cpu")        # the interpreter is not a benchmark


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("what,backward", [(w, False) for w in harness.WHATS]
                         + [(w, True) for w in harness.WHATS if w.startswith(("route", "qsattn"))])
def test_same_quantity_as_reference(peer, what, backward):
    got, want = outputs(peer, what, backward), outputs("reference", what, backward)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.dtype == torch.int64:
            assert torch.equal(g, w)
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_routes_use_a_fixed_selection():
    a = harness.selection(2, 169, 20, "cpu")
    assert a is harness.selection(2, 169, 20, "cpu") and a.shape == (2, 20)
    assert all(len(set(row.tolist())) == 20 for row in a) and int(a.max()) < 169


@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_flops_and_floor_are_the_model(mode):
    C, N, B, k = 7, 300, 2, 256
    for backward in (False, True):
        assert harness.flops(f"qsattn_{mode}", C, N, B, backward, k) == flop_model.qsattn_flops(
            mode, C, N, k, 2 * C, B, backward=backward)
        assert harness.floor(f"qsattn_{mode}", C, N, B, backward, k) == flop_model.qsattn_floor(
            mode, C, N, k, 2 * C, B, backward=backward)
    if mode != "local_global":
        assert harness.flops(f"entropy_{mode}", C, N, B, False) == flop_model.entropy_flops(mode, C, N, B)
        assert harness.flops(f"route_{mode}", C, 16, B, True) == flop_model.route_flops(
            mode, C, 16, 16, 2 * C, B, backward=True)                   # k = min(256, N)
    assert harness.flops("select", C, N, B, False) == 0
    with pytest.raises(ValueError, match="what"):
        harness.flops("qsattn_diagonal", C, N, B, False)
