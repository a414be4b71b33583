"""train/networks.py: CUT's state-dict layout, layer shapes, anti-aliasing filters and the losses.

``tests/support/data/cut_state_dict_keys.json`` was written by hand from reading the constructors of
``ResnetGenerator`` and ``NLayerDiscriminator`` in taesungp/contrastive-unpaired-translation
``models/networks.py`` (commit b3ac297) with CUT's default options (resnet_9blocks, ngf = ndf = 64,
instance norm, anti-aliased down/up-sampling, basic D): each layer list was enumerated by index
(e.g. 0 ReflectionPad2d, 1 Conv2d 3->64 7x7 with bias since instance norm, ..., 7 Downsample(128) with
buffer ``filt`` (128, 1, 3, 3)), not produced by running this package's code.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from qsattn_fast.train import networks as N

from support import ROOT

KEYS = json.load(open(ROOT / "tests" / "support" / "data" / "cut_state_dict_keys.json"))


def shapes(net):
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def test_generator_state_dict_equals_cuts():
    assert shapes(N.define_G()) == KEYS["netG"]


def test_discriminator_state_dict_equals_cuts():
    assert shapes(N.define_D()) == KEYS["netD"]


def test_generator_loads_a_cut_layout_state_dict():
    """A state_dict built from the key list alone (random values) loads strictly and is used."""
    sd = {k: torch.randn(s) for k, s in KEYS["netG"].items()}
    g = N.define_G()
    g.load_state_dict(sd)
    assert torch.equal(g.model[1].weight, sd["model.1.weight"])
    assert torch.equal(g.model[12].conv_block[5].bias, sd["model.12.conv_block.5.bias"])


def test_blur_filters():
    d = N.Downsample(5)
    expect = torch.tensor([1., 2., 1.])
    assert torch.allclose(d.filt[3, 0], torch.outer(expect, expect) / 16)
    u = N.Upsample(2)
    expect = torch.tensor([1., 3., 3., 1.])
    assert torch.allclose(u.filt[1, 0], torch.outer(expect, expect) / 64 * 4)


@pytest.mark.parametrize("h,w", [(9, 14), (16, 16)])
def test_down_up_sampling_shapes_and_constants(h, w):
    """Blur-downsampling keeps a constant map constant (the filter sums to 1, reflect padding) and halves
    the size (ceil); upsampling doubles it and keeps constants too (replicate padding, gain 4)."""
    x = torch.full((2, 3, h, w), 0.7)
    d = N.Downsample(3)(x)
    assert d.shape == (2, 3, math.ceil(h / 2), math.ceil(w / 2))
    assert torch.allclose(d, torch.full_like(d, 0.7), atol=1e-6)
    u = N.Upsample(3)(x)
    assert u.shape == (2, 3, 2 * h, 2 * w)
    assert torch.allclose(u, torch.full_like(u, 0.7), atol=1e-6)


def test_downsample_is_blur_then_subsample():
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    k = torch.tensor([1., 2., 1.], dtype=torch.float64)
    f = (torch.outer(k, k) / 16).expand(2, 1, 3, 3)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), f, groups=2)[:, :, ::2, ::2]
    assert torch.allclose(N.Downsample(2).double()(x), ref)


@pytest.mark.parametrize("netG,ngf,side", [("resnet_9blocks", 8, 36), ("resnet_6blocks", 4, 20)])
def test_generator_nce_features(netG, ngf, side):
    """nce_layers 0,4,8,12,16: padded input, the first two stride-1 convs, residual blocks 1 and 5."""
    g = N.define_G(ngf=ngf, netG=netG)
    x = torch.randn(2, 3, side, side)
    feats = g(x, [0, 4, 8, 12, 16], encode_only=True)
    assert [tuple(f.shape) for f in feats] == [(2, 3, side + 6, side + 6), (2, 2 * ngf, side, side),
                                               (2, 4 * ngf, side // 2, side // 2), (2, 4 * ngf, side // 4, side // 4),
                                               (2, 4 * ngf, side // 4, side // 4)]
    assert torch.equal(feats[0], F.pad(x, (3, 3, 3, 3), mode="reflect"))
    y = g(x)
    out, feats2 = g(x, [4])
    assert y.shape == x.shape and torch.equal(y, out) and y.abs().max() <= 1
    assert torch.equal(feats2[0], feats[1])


@pytest.mark.parametrize("no_aa", [False, True])
def test_no_antialias_variants(no_aa):
    g = N.define_G(ngf=4, netG="resnet_4blocks", no_antialias=no_aa, no_antialias_up=no_aa)
    d = N.define_D(ndf=4, no_antialias=no_aa)
    assert g(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    assert d(torch.randn(1, 3, 32, 32)).shape[:2] == (1, 1)
    assert any(k.endswith("filt") for k in g.state_dict()) != no_aa


def test_init_weights_xavier():
    g = N.define_G(ngf=8, init_gain=0.02)
    conv = g.model[4]
    fan_in, fan_out = 8 * 9, 16 * 9
    expect_std = 0.02 * math.sqrt(2.0 / (fan_in + fan_out))
    assert abs(conv.weight.std().item() / expect_std - 1) < 0.1
    assert torch.count_nonzero(conv.bias) == 0
    with pytest.raises(ValueError, match="init_type"):
        N.init_weights(g, "bogus")


@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "nonsaturating"])
def test_gan_losses(mode):
    pred = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    loss = N.GANLoss(mode)
    for real in (True, False):
        t = 1.0 if real else 0.0
        if mode == "lsgan":
            ref = ((pred - t) ** 2).mean()
        elif mode == "vanilla":
            p = torch.sigmoid(pred)
            ref = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
        else:
            ref = (torch.log1p(torch.exp(-pred)) if real else torch.log1p(torch.exp(pred))).flatten(1).mean(1)
        assert torch.allclose(loss(pred, real), ref)
    with pytest.raises(ValueError, match="gan_mode"):
        N.GANLoss("wgan")


@pytest.mark.parametrize("batch,P,C,all_neg", [(1, 7, 5, False), (3, 5, 9, False), (2, 6, 4, True)])
def test_patch_nce_loss_matches_a_loop(batch, P, C, all_neg):
    q = F.normalize(torch.randn(batch * P, C, dtype=torch.float64), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(batch * P, C, dtype=torch.float64), dim=1).requires_grad_(True)
    T = 0.07
    out = N.patch_nce_loss(q, k, 1 if all_neg else batch, T)
    group = batch * P if all_neg else P
    ref = []
    for i in range(batch * P):
        g0 = (i // group) * group
        logits = [q[i] @ k[i]] + [(q[i] @ k[j]) if j != i else torch.tensor(-10.0, dtype=torch.float64)
                                  for j in range(g0, g0 + group)]
        logits = torch.stack(logits) / T
        ref.append(torch.logsumexp(logits, 0) - logits[0])
    ref = torch.stack(ref)
    assert torch.allclose(out, ref)
    out.sum().backward()
    assert k.grad is None and q.grad is not None  # keys are detached, as CUT's


def test_torch_instance_norm_layout_bug_is_detected_and_our_norms_hold_either_way(record_property):
    """Reports whether the installed torch has the channels-last instance_norm gradient bug (docs/known-issues.md,
    "Known PyTorch issues"; present in 2.13.0 CPU), and checks that the trainer's norm layers give the
    finite-difference-correct input gradient for contiguous, channels-last and transposed incoming
    gradients at batch 1 and 2, whichever way torch behaves; forward values equal torch's own layer."""
    has_bug = N.instance_norm_grad_layout_bug()
    record_property("torch_instance_norm_layout_bug", has_bug)
    print(f"torch {torch.__version__}: instance_norm channels-last gradient bug {'present' if has_bug else 'absent'}")
    for norm, plain in ((N.get_norm_layer("instance")(6), torch.nn.InstanceNorm2d(6)),
                        (N.get_norm_layer("batch")(6).double(), None)):
        for batch in (1, 2):
            x = torch.randn(batch, 6, 5, 4, dtype=torch.float64, requires_grad=True)
            g = torch.randn(batch, 6, 5, 4, dtype=torch.float64)
            want = torch.autograd.grad((norm(x) * g).sum(), x)[0]
            eps = 1e-6
            for _ in range(3):  # spot-check ``want`` by central differences
                i = tuple(int(torch.randint(0, s, ())) for s in x.shape)
                xp, xm = x.detach().clone(), x.detach().clone()
                xp[i] += eps
                xm[i] -= eps
                with torch.no_grad():
                    fd = float(((norm(xp) - norm(xm)) * g).sum()) / (2 * eps)
                assert math.isclose(fd, float(want[i]), rel_tol=1e-5, abs_tol=1e-8)
            transposed = g.transpose(2, 3).contiguous().transpose(2, 3)
            for layout in (g.contiguous(memory_format=torch.channels_last), transposed):
                got = torch.autograd.grad(norm(x), x, layout)[0]
                assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), (type(norm).__name__, batch)
            if plain is not None:
                assert torch.equal(norm(x), plain(x))
    assert not N.get_norm_layer("instance")(6).state_dict() and \
        set(N.get_norm_layer("batch")(6).state_dict()) == set(torch.nn.BatchNorm2d(6).state_dict())
