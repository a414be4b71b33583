"""QS-Attn on every NCE layer (``--qs_layers all``): the generator's real five maps through the sampler on
every backend against the reference, and a memory regression test: no path of the fast backends holds
anything N x N (the reference's entropy, which does, shows that the measure would see it)."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast._memory import PeakMemory
from qsattn_fast.sampler import QSPatchSampler
from qsattn_fast.train.networks import define_G

from conftest import features, rel_err

NCE_LAYERS = [0, 4, 8, 12, 16]
FAST = [b for b in ("torch", "native") if not q.backends()[b].why_not(
    q.registry.Request("qsattn", "cpu", torch.float64, "global"))]


def generator_maps(B, crop):
    """The five NCE maps of CUT's default generator (resnet_9blocks) at ngf 4 on a crop, float64."""
    net = define_G(ngf=4, netG="resnet_9blocks").double()
    x = torch.rand(B, 3, crop, crop, dtype=torch.float64) * 2 - 1
    return [f.detach().requires_grad_() for f in net(x, NCE_LAYERS, encode_only=True)]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode", ["global", "local", "local_global"])
@pytest.mark.parametrize("B,crop", [(1, 28), (2, 20)])
def test_all_five_layers_through_the_sampler(backend, mode, B, crop):
    """Every layer is a QS layer; selections, pooled rows and the gradients that reach every source map
    equal the reference's (float64)."""
    feats = generator_maps(B, crop)
    assert [tuple(f.shape[1:]) for f in feats] == [(3, crop + 6, crop + 6), (8, crop, crop), (16, crop // 2, crop // 2),
                                                   (16, crop // 4, crop // 4), (16, crop // 4, crop // 4)]
    out = {}
    for be in ("reference", backend):
        s = QSPatchSampler(nc=8, qs_layers=range(5), mode=mode, backend=be)
        s.create_mlp(feats)
        if be == "reference":
            state = s.state_dict()
        else:
            s.load_state_dict(state)
        s.double()
        pooled, ids, qs_state = s(feats, 24)
        assert set(qs_state) == set(range(5))
        grads = torch.autograd.grad(sum((p * p).sum() for p in pooled), feats)
        out[be] = (pooled, ids, grads)
    (p_ref, i_ref, g_ref), (p, i, g) = out["reference"], out[backend]
    assert all(torch.equal(a, b) for a, b in zip(i, i_ref))
    assert all(rel_err(a, b) < 1e-9 for a, b in zip(p, p_ref))
    assert all(rel_err(a, b) < 1e-8 for a, b in zip(g, g_ref))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode", ["global", "local", "local_global"])
def test_no_path_holds_n_by_n(backend, mode):
    """N = 4096 (a 64 x 64 map): one fp32 N x N matrix is 64 MiB. The whole QS-Attn step, forward and
    backward, must stay far below it (< 16 MiB extra peak), while the reference entropy alone exceeds it."""
    side, C = 64, 32
    nn_bytes = (side * side) ** 2 * 4
    x = features(1, C, side, side, scale=C ** -0.5, requires_grad=True)
    t = features(1, C, side, side, requires_grad=True)
    q.query_selected_attention(features(1, C, 8, 8), [features(1, C, 8, 8)], k=8, mode=mode, backend=backend)
    with PeakMemory() as m:
        idx, (a, b) = q.query_selected_attention(x, [x, t], k=256, mode=mode, backend=backend)
        (a.sum() + b.sum()).backward()
    assert idx.shape == (1, 256) and x.grad is not None
    assert m.extra_bytes < nn_bytes / 4, f"{backend} {mode}: {m.extra_bytes / 2**20:.1f} MiB extra peak"
    if mode == "global":
        with PeakMemory() as ref:
            q.attention_entropy(x.detach(), "global", backend="reference")
        assert ref.extra_bytes > nn_bytes, f"the measure missed the reference's N x N ({ref.extra_bytes} B)"
