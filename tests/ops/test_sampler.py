"""QSPatchSampler: CUT's PatchSampleF contract on random layers, QS-Attn on the chosen layers."""
import pytest
import torch

import qsattn_fast as q
from qsattn_fast import OP_MODES
from qsattn_fast.ops import split_mode
from qsattn_fast.sampler import QSPatchSampler, l2_normalize

from support.numerics import features, rel_err
from support.official import OFFICIAL, OFFICIAL_IDS, official_example

SHAPES = [(3, 9, 10), (8, 7, 7), (12, 5, 6), (12, 4, 5), (12, 4, 5)]   # CUT's 5 layers in miniature


def layer_feats(B, requires_grad=False, dtype=torch.float32):
    return [features(B, C, H, W, dtype, requires_grad=requires_grad) for C, H, W in SHAPES]


def head(sampler, i, x):
    return l2_normalize(getattr(sampler, f"mlp_{i}")(x))


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_qs_and_random_layers(B, mode):
    feats = layer_feats(B)
    s = QSPatchSampler(nc=16, mode=mode, backend="torch")
    pooled, ids, state = s(feats, 8)
    assert set(state) == {3, 4} and [p.shape for p in pooled] == [(B * 8, 16)] * 5
    for i in (0, 1, 2):                                   # random positions shared across the batch
        pid = ids[i]
        assert pid.shape == (8,) and pid.unique().numel() == 8
        exp = head(s, i, feats[i].flatten(2).transpose(1, 2)[:, pid].flatten(0, 1))
        assert rel_err(pooled[i], exp) < 1e-6
    for i in (3, 4):                                      # QS layers: per-image selection, routed rows
        idx, (routed,) = q.qsattn(feats[i], [feats[i]], k=8, mode=mode, backend="reference")
        assert torch.equal(ids[i], idx)
        assert rel_err(pooled[i], head(s, i, routed.flatten(0, 1))) < 1e-5


def test_target_call_routes_with_the_source_attention_and_grads_reach_the_source():
    src, tgt = layer_feats(2, requires_grad=True), layer_feats(2)
    s = QSPatchSampler(nc=8, backend="torch")
    _, ids, state = s(src, 6)
    pooled_tgt, ids_tgt, _ = s(tgt, 6, ids, state)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids_tgt))
    for i in (3, 4):
        (routed,) = q.route(src[i], ids[i], [tgt[i]], backend="reference")
        assert rel_err(pooled_tgt[i], head(s, i, routed.flatten(0, 1))) < 1e-5
    sum(p.sum() for p in pooled_tgt).backward()
    assert src[4].grad is not None and src[4].grad.abs().sum() > 0     # through the attention rows
    assert src[0].grad is None                                          # random layers: no attention


def test_paired_equals_two_calls():
    src, tgt = layer_feats(2), layer_feats(2)
    s = QSPatchSampler(nc=8, mode="local_global", backend="torch")
    s.create_mlp(src)
    torch.manual_seed(7)
    a_src, a_tgt, a_ids = s.paired(src, tgt, 5)
    torch.manual_seed(7)
    b_src, b_ids, state = s(src, 5)
    b_tgt, _, _ = s(tgt, 5, b_ids, state)
    for x, y in zip(a_src + a_tgt + a_ids, b_src + b_tgt + b_ids):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6) if x.is_floating_point() else torch.equal(x, y)


def test_reference_and_torch_backends_agree_in_the_sampler():
    feats = layer_feats(2, dtype=torch.float64)
    ref = QSPatchSampler(nc=8, backend="reference")
    ref.create_mlp(feats)
    ref.double()
    fast = QSPatchSampler(nc=8, backend="torch")
    fast.create_mlp(feats)
    fast.load_state_dict(ref.state_dict())
    fast.double()
    torch.manual_seed(3)
    p_ref, ids_ref, _ = ref(feats, 7)
    torch.manual_seed(3)
    p_fast, ids_fast, _ = fast(feats, 7)
    assert all(torch.equal(a, b) for a, b in zip(ids_ref, ids_fast))
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(p_fast, p_ref))


def test_parameter_names_match_cut_and_options():
    feats = layer_feats(1)
    s = QSPatchSampler(nc=32)
    s(feats, 4)
    keys = {f"mlp_{i}.{j}.{p}" for i in range(5) for j in (0, 2) for p in ("weight", "bias")}
    assert set(s.state_dict()) == keys
    assert s.mlp_1[0].weight.shape == (32, 8) and s.mlp_1[2].weight.shape == (32, 32)
    assert all(not m[0].bias.any() for m in (s.mlp_0, s.mlp_4))

    plain = QSPatchSampler(use_mlp=False, qs_layers=())                 # plain CUT, no heads
    pooled, ids, state = plain(feats, 4)
    assert state == {} and pooled[4].shape == (4, 12) and all(isinstance(i, torch.Tensor) for i in ids)
    assert torch.allclose(pooled[4].norm(dim=1), torch.ones(4), atol=1e-5)

    only_last = QSPatchSampler(use_mlp=False, qs_layers=[-1], backend="torch")
    assert set(only_last(feats, 4)[2]) == {4}
    with pytest.raises(ValueError, match="qs_layers"):
        QSPatchSampler(qs_layers=[5])(feats, 4)


def test_num_patches_clipped_to_n_and_zero_returns_maps():
    feats = layer_feats(2)
    s = QSPatchSampler(nc=8, backend="torch")
    pooled, ids, _ = s(feats, 1000)                      # more than any layer's N: every position
    assert pooled[4].shape == (2 * 20, 8) and ids[4].shape == (2, 20) and ids[0].shape == (90,)
    maps, ids0, state = s(feats, 0)
    assert [m.shape for m in maps] == [(2, 8, H, W) for _, H, W in SHAPES] and state == {}


def test_state_from_another_configuration_is_rejected():
    feats = layer_feats(1)
    s = QSPatchSampler(nc=8, backend="torch")
    _, ids, state = s(feats, 4)
    with pytest.raises(ValueError, match="state"):
        s(feats, 4, ids, {4: state[4]})


@pytest.mark.parametrize("mode", ["local", "local_global"])
def test_official_variant_sampler_reproduces_released_patch_sampler(mode):
    """Source and target calls of the released PatchSampleF (use_mlp=False, QS-Attn on layer 3) on the
    fixed example of support/official.py."""
    src, tgt = official_example()
    pad = [features(2, 2, 3, 4, torch.float64) for _ in range(3)]
    s = QSPatchSampler(use_mlp=False, qs_layers=[3], mode=mode, backend="reference", variant="official")
    pooled_src, ids, state = s(pad + [src], 3)
    pooled_tgt, _, _ = s(pad + [tgt], 3, ids, state)
    assert ids[3].tolist() == OFFICIAL_IDS
    assert rel_err(pooled_src[3], torch.tensor(OFFICIAL[mode][0], dtype=torch.float64)) < 1e-12
    assert rel_err(pooled_tgt[3], torch.tensor(OFFICIAL[mode][1], dtype=torch.float64)) < 1e-12


@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_detach_attention_keeps_only_the_value_gradients(mode):
    """detach_attention: the same pooled features; the attention is built from the detached source, so the
    pooled target reaches the source maps no more, and the pooled source reaches them as a value only."""
    src, tgt = layer_feats(2, requires_grad=True), layer_feats(2, requires_grad=True)
    runs = []
    for detach in (False, True):
        s = QSPatchSampler(nc=8, mode=mode, backend="torch", detach_attention=detach)
        s.create_mlp(src)
        if detach:
            s.load_state_dict(runs[0][0].state_dict())
        torch.manual_seed(5)
        pool_src, pool_tgt, ids = s.paired(src, tgt, 6)
        via_tgt = torch.autograd.grad(sum(p.sum() for p in pool_tgt), src + tgt, allow_unused=True, retain_graph=True)
        via_src = torch.autograd.grad(sum(p.sum() for p in pool_src), src, allow_unused=True)
        runs.append((s, pool_src + pool_tgt, ids, via_tgt, via_src))
    (_, pooled, ids, via_tgt, via_src), (s_d, pooled_d, ids_d, via_tgt_d, via_src_d) = runs
    assert all(torch.equal(a, b) for a, b in zip(ids, ids_d))
    assert all(torch.equal(a, b) for a, b in zip(pooled, pooled_d))
    assert all(torch.equal(a, b) for a, b in zip(via_tgt[5:], via_tgt_d[5:]))      # the target's own gradient
    assert via_tgt[4].abs().sum() > 0                                           # through the attention rows
    assert all(g is None or not g.any() for g in via_tgt_d[:5])                 # detached: none
    route_mode = split_mode(mode)[1]
    for i in (3, 4):  # the source as a value only: routed by attention rows that carry no gradient
        value = src[i].detach().requires_grad_()
        (routed,) = q.route(src[i].detach(), ids[i], [value], mode=route_mode, backend="torch")
        head(s_d, i, routed.flatten(0, 1)).sum().backward()
        assert rel_err(via_src_d[i], value.grad) < 1e-5 and rel_err(via_src[i], value.grad) > 1e-3


def test_l2_normalize_has_the_true_gradient_at_a_zero_row():
    """A zero row (a patch of dead features) gets the Jacobian I / 1e-7, not CUT's NaN; other rows are
    CUT's Normalize(2), values and gradients."""
    x = torch.randn(4, 6, dtype=torch.float64)
    x[2] = 0
    x.requires_grad_()
    w = torch.randn(4, 6, dtype=torch.float64)
    (g,) = torch.autograd.grad((l2_normalize(x) * w).sum(), x)
    assert torch.isfinite(g).all() and rel_err(g[2], w[2] / 1e-7) < 1e-12
    cut = lambda v: v / (v.pow(2).sum(1, keepdim=True).pow(0.5) + 1e-7)   # noqa: E731 (CUT's Normalize)
    rows = [0, 1, 3]
    (g_cut,) = torch.autograd.grad((cut(x[rows]) * w[rows]).sum(), x)
    assert rel_err(l2_normalize(x)[rows], cut(x[rows])) < 1e-15 and rel_err(g[rows], g_cut[rows]) < 1e-12
    (g_nan,) = torch.autograd.grad((cut(x) * w).sum(), x)
    assert torch.isnan(g_nan[2]).all()                                    # what CUT's form gives
