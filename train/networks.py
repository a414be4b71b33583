"""CUT's networks and losses: ResNet generator, PatchGAN discriminator, GAN and PatchNCE losses.

The module layout (``nn.Sequential`` named ``model``, the anti-aliasing filters as buffers ``filt``)
gives the same ``state_dict`` keys and shapes as CUT's ``models/networks.py``, so generator and
discriminator checkpoints move both ways (``tests/support/data/cut_state_dict_keys.json`` lists them).

Generator (``resnet_<n>blocks``, 256x256 input, ngf 64): index 0 reflection pad (3x262x262), 1-3 conv7
+ norm + ReLU, 4-7 conv3 + norm + ReLU + blur-downsample (128x128x128 after 7; 4 is 128x256x256),
8-11 the same to 256 channels at 64x64, 12.. the residual blocks, then two blur-upsample + conv3 + norm
+ ReLU stages, reflection pad, conv7, tanh. ``nce_layers`` index this sequence: 0,4,8,12,16 are the
padded input, the first two stride-1 convs and the outputs of residual blocks 1 and 5.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from qsattn_fast.sampler import init_weights

_BINOMIAL = {1: [1.], 2: [1., 1.], 3: [1., 2., 1.], 4: [1., 3., 3., 1.], 5: [1., 4., 6., 4., 1.],
             6: [1., 5., 10., 10., 5., 1.], 7: [1., 6., 15., 20., 15., 6., 1.]}
_PADS = {"reflect": nn.ReflectionPad2d, "refl": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d,
         "repl": nn.ReplicationPad2d, "zero": nn.ZeroPad2d}


def blur_filter(size: int) -> torch.Tensor:
    """(size, size) binomial filter a a^T / sum, a = row ``size`` of Pascal's triangle."""
    a = torch.tensor(_BINOMIAL[size], dtype=torch.float64)
    f = a[:, None] * a[None, :]
    return (f / f.sum()).float()


class Downsample(nn.Module):
    """Anti-aliased stride-2 downsampling: pad, then a depthwise conv with the binomial filter
    (buffer ``filt`` (C, 1, k, k)). (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels, pad_type="reflect", filt_size=3, stride=2):
        super().__init__()
        self.stride = stride
        lo, hi = (filt_size - 1) // 2, filt_size // 2
        self.pad = _PADS[pad_type]((lo, hi, lo, hi))
        self.register_buffer("filt", blur_filter(filt_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(self.pad(x), self.filt, stride=self.stride, groups=x.shape[1])


class Upsample(nn.Module):
    """Anti-aliased x2 upsampling: replicate-pad 1, transposed depthwise conv with the 4-tap binomial
    filter times 4 (buffer ``filt`` (C, 1, 4, 4)), trimmed to (B, C, 2H, 2W)."""

    def __init__(self, channels, pad_type="repl", filt_size=4, stride=2):
        super().__init__()
        self.stride, self.filt_size = stride, filt_size
        self.pad = _PADS[pad_type]((1, 1, 1, 1))
        self.register_buffer("filt", (blur_filter(filt_size) * stride ** 2)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        pad = 1 + (self.filt_size - 1) // 2
        y = F.conv_transpose2d(self.pad(x), self.filt, stride=self.stride, padding=pad, groups=x.shape[1])
        y = y[:, :, 1:, 1:]
        return y if self.filt_size % 2 == 1 else y[:, :, :-1, :-1]


def _contiguous(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


class _ContiguousGradNorm:
    """Mixin for normalisation layers: the gradient that reaches the layer's backward is made
    contiguous (a no-op when it already is). On torch 2.13.0 CPU ``F.instance_norm`` returns a wrong
    input gradient at batch 1 when the incoming gradient has channels-last strides, which the patch
    sampler's transposed views produce (docs/known-issues.md); a contiguous gradient is
    correct on every version. Forward values, parameters and buffers are those of the torch layer."""

    def forward(self, x):
        y = super().forward(x)
        if y.requires_grad:
            y.register_hook(_contiguous)
        return y


class InstanceNorm2d(_ContiguousGradNorm, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` with a layout-safe backward (see :class:`_ContiguousGradNorm`)."""


class BatchNorm2d(_ContiguousGradNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a layout-safe backward (see :class:`_ContiguousGradNorm`)."""


def instance_norm_grad_layout_bug(device="cpu") -> bool:
    """Whether the installed torch has the bug above on ``device``: ``F.instance_norm``'s input
    gradient at batch 1 differs between a contiguous and a channels-last incoming gradient of the same
    values (float64, so rounding cannot account for it)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64, generator=gen).to(device).requires_grad_(True)
    g = torch.randn(1, 8, 5, 5, dtype=torch.float64, generator=gen).to(device)
    a, b = (torch.autograd.grad(F.instance_norm(x), x, gg)[0]
            for gg in (g, g.contiguous(memory_format=torch.channels_last)))
    return not torch.allclose(a, b, rtol=1e-10, atol=1e-10)


#: ``--normG`` / ``--normD`` and ``--netD`` choices.
NORMS = ("instance", "batch", "none")
DISCRIMINATORS = ("basic", "n_layers")


def get_norm_layer(norm: str):
    """``instance`` (no affine, no running stats, as CUT), ``batch`` or ``none``; the norms are
    torch's with a layout-safe backward (:class:`_ContiguousGradNorm`)."""
    if norm == "instance":
        return functools.partial(InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "batch":
        return functools.partial(BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {norm!r}")


def _uses_bias(norm_layer) -> bool:
    return isinstance(norm_layer, functools.partial) and norm_layer.func is InstanceNorm2d


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, (dropout), pad, conv3, norm](x); submodule ``conv_block``."""

    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        if padding_type not in ("reflect", "replicate", "zero"):
            raise ValueError(f"padding_type: expected reflect, replicate or zero, got {padding_type!r}")
        p = 1 if padding_type == "zero" else 0
        pad = [] if p else [_PADS[padding_type](1)]
        block = pad + [nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        block += [nn.Dropout(0.5)] if use_dropout else []
        block += pad + [nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CUT's ResNet generator (see the module docstring for the layer indices).

    ``forward(x)`` -> (B, output_nc, H, W) in [-1, 1]; ``forward(x, layers, encode_only=True)`` -> the
    list of outputs of the listed layer indices, stopping after the last one;
    ``forward(x, layers)`` -> (output, features). H and W must be multiples of 4.
    """

    def __init__(self, input_nc=3, output_nc=3, ngf=64, norm_layer=BatchNorm2d, use_dropout=False,
                 n_blocks=9, padding_type="reflect", no_antialias=False, no_antialias_up=False):
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias),
                 norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2 ** i
            if no_antialias:
                model += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias), norm_layer(2 * c), nn.ReLU(True)]
            else:
                model += [nn.Conv2d(c, 2 * c, 3, stride=1, padding=1, bias=use_bias), norm_layer(2 * c),
                          nn.ReLU(True), Downsample(2 * c)]
        model += [ResnetBlock(ngf * 4, padding_type, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            if no_antialias_up:
                model += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=use_bias),
                          norm_layer(c // 2), nn.ReLU(True)]
            else:
                model += [Upsample(c), nn.Conv2d(c, c // 2, 3, stride=1, padding=1, bias=use_bias),
                          norm_layer(c // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x, layers=(), encode_only=False):
        if not layers:
            return self.model(x)
        layers = list(layers)
        if -1 in layers:
            layers.append(len(self.model))
        feats = []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in layers:
                feats.append(x)
            if encode_only and i == layers[-1]:
                return feats
        return x, feats


class NLayerDiscriminator(nn.Module):
    """CUT's PatchGAN: conv4 + LeakyReLU(0.2) + blur-downsample, then ``n_layers - 1`` stages of conv4 +
    norm + LeakyReLU + blur-downsample doubling the width up to 8 * ndf, a stride-1 stage and a conv4
    to one channel. (B, input_nc, H, W) -> (B, 1, H', W') logits."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3, norm_layer=BatchNorm2d, no_antialias=False):
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        stride = 2 if no_antialias else 1
        seq = [nn.Conv2d(input_nc, ndf, 4, stride=stride, padding=1), nn.LeakyReLU(0.2, True)]
        seq += [] if no_antialias else [Downsample(ndf)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                    norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
            seq += [] if no_antialias else [Downsample(ndf * mult)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias), norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


GENERATOR_BLOCKS = {"resnet_9blocks": 9, "resnet_6blocks": 6, "resnet_4blocks": 4}


def define_G(input_nc=3, output_nc=3, ngf=64, netG="resnet_9blocks", norm="instance", use_dropout=False,
             init_type="xavier", init_gain=0.02, no_antialias=False, no_antialias_up=False) -> ResnetGenerator:
    """The generator of CUT's ``define_G`` for the ResNet architectures, initialised."""
    if netG not in GENERATOR_BLOCKS:
        raise ValueError(f"netG: expected one of {', '.join(GENERATOR_BLOCKS)}, got {netG!r}")
    net = ResnetGenerator(input_nc, output_nc, ngf, get_norm_layer(norm), use_dropout, GENERATOR_BLOCKS[netG],
                          no_antialias=no_antialias, no_antialias_up=no_antialias_up)
    return init_weights(net, init_type, init_gain)


def define_D(input_nc=3, ndf=64, netD="basic", n_layers_D=3, norm="instance", init_type="xavier", init_gain=0.02,
             no_antialias=False) -> NLayerDiscriminator:
    """CUT's ``define_D`` for ``basic`` (3 layers) and ``n_layers`` (``n_layers_D``), initialised."""
    if netD not in DISCRIMINATORS:
        raise ValueError(f"netD: expected one of {', '.join(DISCRIMINATORS)}, got {netD!r}")
    net = NLayerDiscriminator(input_nc, ndf, 3 if netD == "basic" else n_layers_D, get_norm_layer(norm),
                              no_antialias=no_antialias)
    return init_weights(net, init_type, init_gain)


class GANLoss(nn.Module):
    """GAN objective on discriminator logits. ``lsgan``: mean (pred - t)^2 with t = 1 (real) or 0;
    ``vanilla``: BCE with logits against t; ``nonsaturating``: per-image mean softplus(-pred) for
    real, softplus(pred) for fake (shape (B,)). Callers take ``.mean()`` as CUT does."""

    MODES = ("lsgan", "vanilla", "nonsaturating")

    def __init__(self, gan_mode="lsgan"):
        super().__init__()
        if gan_mode not in self.MODES:
            raise ValueError(f"gan_mode: expected one of {', '.join(self.MODES)}, got {gan_mode!r}")
        self.gan_mode = gan_mode

    def forward(self, pred, target_is_real: bool):
        if self.gan_mode == "nonsaturating":
            return F.softplus(-pred if target_is_real else pred).flatten(1).mean(1)
        target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
        if self.gan_mode == "lsgan":
            return F.mse_loss(pred, target)
        return F.binary_cross_entropy_with_logits(pred, target)


def patch_nce_loss(feat_q, feat_k, batch: int, nce_T=0.07):
    """CUT's PatchNCE loss per query patch.

    feat_q, feat_k (batch * P, C): L2-normalised query (translated image) and key (source) patches, in
    batch-major order. Logits: the positive q_i . k_i and, as negatives, q_i . k_j for the other
    patches j of the same image (``batch`` groups; pass 1 to take negatives from the whole minibatch,
    CUT's ``nce_includes_all_negatives_from_minibatch``); the diagonal is masked with -10; all / nce_T.
    Returns the cross-entropy with target 0, shape (batch * P,). Keys are detached.
    """
    n, dim = feat_q.shape
    feat_k = feat_k.detach()
    l_pos = (feat_q * feat_k).sum(1, keepdim=True)
    q, k = feat_q.view(batch, -1, dim), feat_k.view(batch, -1, dim)
    l_neg = torch.bmm(q, k.transpose(2, 1))
    eye = torch.eye(q.shape[1], device=q.device, dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(eye, -10.0).view(n, -1)
    logits = torch.cat((l_pos, l_neg), dim=1) / nce_T
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device), reduction="none")
