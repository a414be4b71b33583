"""benchmarks/flop_model.py against torch's FLOP counter on independent compositions: the reference
entropies and a dense global and local routing written here;
backward adds the logits that the kernels recompute (2 B k m C) to what autograd multiplies. The floor
model's exponentials against the softmax elements of the same compositions."""
import importlib.util

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import qsattn_fast as q
from qsattn_fast import OP_MODES, ops

from support import ROOT

_PATH = str(ROOT / "benchmarks" / "flop_model.py")
_spec = importlib.util.spec_from_file_location("flop_model", _PATH)
fm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fm)


def counted(fn):
    with FlopCounterMode(display=False) as fc:
        out = fn()
    return out, fc.get_total_flops()


def dense_global_route(x, idx, values):
    """softmax(F[idx] F^T) V for every value map, as dense products."""
    f = x.flatten(2).transpose(1, 2)                                           # (B, N, C)
    p = torch.softmax(torch.gather(f, 1, idx[..., None].expand(-1, -1, f.shape[2])) @ f.transpose(1, 2), -1)
    return [p @ v.flatten(2).transpose(1, 2) for v in values]


def dense_local_route(x, idx, values, window):
    """Each selected position's softmax over its zero-padded window x window neighbourhood, applied to
    the same neighbourhood of every value map, as dense products over the unfolded windows."""
    B, C, H, W = x.shape

    def windows(m):                                                            # (B, k, window^2, C_m)
        u = torch.nn.functional.unfold(m, window, padding=window // 2).view(B, m.shape[1], window * window, H * W)
        return u.gather(3, idx[:, None, None].expand(-1, m.shape[1], window * window, -1)).permute(0, 3, 2, 1)

    q = torch.gather(x.flatten(2).transpose(1, 2), 1, idx[..., None].expand(-1, -1, C))
    p = torch.softmax(torch.einsum("bkpc,bkc->bkp", windows(x), q), -1)
    return [torch.einsum("bkp,bkpc->bkc", p, windows(v)) for v in values]


@pytest.mark.parametrize("B,C,H,W,k,window", [(1, 3, 5, 7, 6, 3), (2, 5, 6, 7, 9, 7)])
def test_flop_model_counts_the_products_of_the_math(B, C, H, W, k, window):
    N = H * W
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, 2, H, W, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(N)[:k] for _ in range(B)])
    cv = C + 2
    for mode in OP_MODES["entropy"]:
        _, n = counted(lambda: q.entropy(x, mode, window, backend="reference"))  # noqa: B023 (called at once)
        assert n == fm.entropy_flops(mode, C, N, B, window)
        route = ((lambda: dense_local_route(x, idx, [x, t], window)) if mode == "local"
                 else (lambda: dense_global_route(x, idx, [x, t])))
        outs, fwd = counted(route)
        _, bwd = counted(lambda: sum(o.sum() for o in outs).backward())  # noqa: B023 (called at once)
        m = N if mode == "global" else window * window
        assert fwd == fm.route_flops(mode, C, N, k, cv, B, window)
        assert fwd + bwd + 2 * B * k * m * C == fm.route_flops(mode, C, N, k, cv, B, window, backward=True)
    assert fm.qsattn_flops("local_global", C, N, k, cv, B, window) == (
        fm.entropy_flops("local", C, N, B, window) + fm.route_flops("global", C, N, k, cv, B, window))
    with pytest.raises(ValueError, match="mode"):
        fm.entropy_flops("local_global", C, N)


class SoftmaxElements(TorchDispatchMode):
    """Counts the elements entering softmax: the exponentials of a composition."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._softmax.default, torch.ops.aten._log_softmax.default):
            self.n += args[0].numel()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_floor_counts_the_exponentials_and_half_the_global_logits(mode):
    B, C, H, W, k, window = 2, 3, 5, 7, 6, 3
    N, cv = H * W, C + 2
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    idx = torch.stack([torch.randperm(N)[:k] for _ in range(B)])
    select_mode, route_mode = {"global": ("global", "global"), "local": ("local", "local"),
                               "local_global": ("local", "global")}[mode]     # as the paper defines the modes
    assert ops.split_mode(mode) == (select_mode, route_mode)
    with SoftmaxElements() as sm:
        q.entropy(x, select_mode, window, backend="reference")
        if route_mode == "local":
            dense_local_route(x, idx, [x], window)
        else:
            dense_global_route(x, idx, [x])
    products, exps = fm.qsattn_floor(mode, C, N, k, cv, B, window)
    products_bwd, exps_bwd = fm.qsattn_floor(mode, C, N, k, cv, B, window, backward=True)
    m = N if route_mode == "global" else window * window
    assert exps == sm.n and exps_bwd == exps + B * k * m        # the backward recomputes the routed rows
    entropy = fm.entropy_flops(select_mode, C, N, B, window)
    formed = (entropy + 2 * B * N * C) // 2 if select_mode == "global" else entropy   # S_ij, i <= j only
    assert products == formed + fm.route_flops(route_mode, C, N, k, cv, B, window)
    assert products_bwd == formed + fm.route_flops(route_mode, C, N, k, cv, B, window, backward=True)
