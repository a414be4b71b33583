"""QS-Attn on every NCE layer (``--qs_layers all``): the generator's real five maps through the sampler on
every backend against the reference, and a memory regression test: no path of the fast backends holds
anything N x N (the reference's entropy, which does, shows that the measure would see it)."""
import subprocess
import sys

import pytest
import torch

import qsattn_fast as q
from qsattn_fast import OP_MODES
from qsattn_fast.backends.base import Request
from qsattn_fast.ops import split_mode
from qsattn_fast.sampler import QSPatchSampler
from qsattn_fast.train.networks import define_G

from support.numerics import rel_err

NCE_LAYERS = [0, 4, 8, 12, 16]
FAST = [b for b in ("torch", "native") if not q.backends()[b].why_not(
    Request("qsattn", "cpu", torch.float64, "global"))]


def generator_maps(B, crop):
    """The five NCE maps of CUT's default generator (resnet_9blocks) at ngf 4 on a crop, float64."""
    net = define_G(ngf=4, netG="resnet_9blocks").double()
    x = torch.rand(B, 3, crop, crop, dtype=torch.float64) * 2 - 1
    return [f.detach().requires_grad_() for f in net(x, NCE_LAYERS, encode_only=True)]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
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
    # Layer 0 is the reflection-padded image: a border pixel and its mirror are equal rows with equal
    # entropies, which two backends may order differently by an ulp; peaked rows' entropies (~1e-13) may
    # lie closer together than the reference's rounding. So selections are compared by the rows they
    # pick, in the same order up to such near-ties, and layer 0's gradient where the generator receives
    # it, folded back through the pad.
    for f, a, b, x, x_ref in zip(feats, i, i_ref, p, p_ref):
        perm = matching_rows(f, b, a)
        assert perm is not None
        ent = q.entropy(f.detach(), split_mode(mode)[0], 7, backend="reference")
        assert float((ent.gather(1, a) - ent.gather(1, b)).abs().max()) <= 1e-12   # moved only among near-ties
        at = perm[..., None].expand(-1, -1, x.shape[-1])
        assert rel_err(x.view(B, a.shape[1], -1), x_ref.view(B, a.shape[1], -1).gather(1, at)) < 1e-9
    assert all(rel_err(a, b) < 1e-8 for a, b in zip([unpad(g[0]), *g[1:]], [unpad(g_ref[0]), *g_ref[1:]]))


def picked(f, idx):
    """The rows (B, k, C) of map f (B, C, H, W) at positions idx (B, k)."""
    return f.flatten(2).transpose(1, 2).gather(1, idx[..., None].expand(-1, -1, f.shape[1]))


def matching_rows(f, a, b):
    """perm (B, k) such that row j of selection b of map f is row perm[j] of selection a (each position
    of a used once); None when b picks a row that a does not."""
    pa, pb = picked(f, a), picked(f, b)
    perm = torch.empty_like(a)
    for n in range(a.shape[0]):
        free = list(range(a.shape[1]))
        for j in range(a.shape[1]):
            m = next((m for m in free if torch.equal(pb[n, j], pa[n, m])), None)
            if m is None:
                return None
            perm[n, j] = m
            free.remove(m)
    return perm


def unpad(g, pad=3):
    """A gradient w.r.t. the reflection-padded image, as the image receives it (mirrored pixels summed)."""
    x = torch.zeros(*g.shape[:2], g.shape[2] - 2 * pad, g.shape[3] - 2 * pad, dtype=g.dtype, requires_grad=True)
    return torch.autograd.grad(torch.nn.functional.pad(x, (pad,) * 4, mode="reflect"), x, g)[0]


_PEAK = """
import sys, torch, qsattn_fast as q
from qsattn_fast._memory import PeakMemory
backend, mode, side, C = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(int(sys.argv[5]))
x = (torch.randn(1, C, side, side) * C ** -0.5).requires_grad_()
t = torch.randn(1, C, side, side, requires_grad=True)
small = torch.randn(1, C, 8, 8)
if backend == "reference":          # the entropy alone: one N x N matrix and its softmax
    q.entropy(small, "global", backend=backend)
    with PeakMemory() as m:
        q.entropy(x.detach(), "global", backend=backend)
else:                               # the whole step, forward and backward
    q.qsattn(small, [small], k=8, mode=mode, backend=backend)
    with PeakMemory() as m:
        idx, (a, b) = q.qsattn(x, [x, t], k=256, mode=mode, backend=backend)
        (a.sum() + b.sum()).backward()
    assert idx.shape == (1, 256) and x.grad is not None
print(m.extra_bytes)
"""


def extra_peak(backend, mode, side, C, seed):
    """Extra peak bytes of one call in a fresh process (a long test session's freed-but-resident memory
    would hide a new allocation from the resident-set measure)."""
    out = subprocess.run([sys.executable, "-c", _PEAK, backend, mode, str(side), str(C), str(seed)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_no_path_holds_n_by_n(backend, mode, fresh_seed):
    """N = 9216 (a 96 x 96 map): one fp32 N x N matrix is 324 MiB. The whole QS-Attn step, forward and
    backward, each in a fresh process, must stay far below it (< 81 MiB extra peak; measured 10-23 MiB),
    while the reference entropy alone exceeds it."""
    side, C = 96, 32
    nn_bytes = (side * side) ** 2 * 4
    extra = extra_peak(backend, mode, side, C, fresh_seed)
    assert extra < nn_bytes / 4, f"{backend} {mode}: {extra / 2**20:.1f} MiB extra peak"
    if mode == "global" and backend == FAST[0]:
        ref = extra_peak("reference", "global", side, C, fresh_seed)
        assert ref > nn_bytes, f"the measure missed the reference's N x N ({ref} B)"
