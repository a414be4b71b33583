"""The CUT / FastCUT / QS-Attn model: networks, losses and one optimisation step (CUT's ``cut_model``).

One step on a batch (real_A, real_B), as CUT's ``optimize_parameters``:
fake = G(cat(real_A, real_B)) (the second half is idt_B, with ``nce_idt``; the input is flipped with
probability 1/2 under ``flip_equivariance``); D step on (D(fake_B.detach()), D(real_B)):
loss_D = (GAN(fake, False) + GAN(real, True)) / 2; G step: loss_G = lambda_GAN * GAN(D(fake_B), True) +
NCE, NCE = mean over layers of lambda_NCE * PatchNCE(pool(G_enc(fake_B)), pool(G_enc(real_A))),
averaged with the identity term NCE(idt_B, real_B) when ``nce_idt``. Pooling is
:class:`qsattn_fast.QSPatchSampler` (netF): random patches on every layer for cut/fastcut, QS-Attn
on the QS layers for qs (selection and routing with the source attention, both pooled in one pass;
``--qs_detach_attention`` builds that attention from detached source features).

Several processes (torchrun): gradients are averaged over the process group after each backward
(all-reduce), which is what DistributedDataParallel computes, and works with the several forward
passes of G and D per step. Parameters are broadcast from rank 0 at start.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os

import torch
import torch.distributed as dist
from torch import nn

from qsattn_fast import QSPatchSampler

from . import diagnostics, networks

#: ``--lr_policy`` choices (CUT's schedules).
LR_POLICIES = ("linear", "step", "cosine")
#: ``--nonfinite`` choices: what a step with a non-finite loss (or gradient) does.
NONFINITE_POLICIES = ("stop", "skip")


def lr_factor(opt, epoch: int) -> float:
    """Learning-rate multiplier while training epoch ``epoch`` (1-based), CUT's schedules: linear
    1 - max(0, epoch - n_epochs) / (n_epochs_decay + 1); step 0.1^floor((epoch - epoch_count) /
    lr_decay_iters); cosine (1 + cos(pi (epoch - epoch_count) / n_epochs)) / 2."""
    c = epoch - opt.epoch_count
    if opt.lr_policy == "linear":
        return 1.0 - max(0, epoch - opt.n_epochs) / float(opt.n_epochs_decay + 1)
    if opt.lr_policy == "step":
        return 0.1 ** (c // opt.lr_decay_iters)
    return (1 + math.cos(math.pi * c / opt.n_epochs)) / 2


class GANModel:
    """What the models share: the options, ``device``, bfloat16 autocast, a per-process
    ``torch.Generator`` for the step's own random draws (in the resume state), the GAN loss
    (:meth:`gan`), learning rates, inputs and gradient averaging over ``world`` processes, and the
    interface the trainer calls (:meth:`optimize`, :meth:`state_for_resume`, ...). Subclasses build
    ``nets`` ({name: module}, the checkpoint file names) and ``optimizers`` ({"G": ..., "D": ...}), then
    call :meth:`_ready`; their steps update through :meth:`_update`. ``TRANSLATOR``: the net that maps
    the source domain to the target (evaluation, best_net_*). With ``--ema_decay`` > 0, ``ema`` is an
    exponential moving average of its weights (saved as ``<which>_net_<TRANSLATOR>_ema.pth``), and
    :meth:`translator` (what evaluation, grids and the best checkpoint use) is the EMA net.
    ``LOSS_NAMES``: every loss the model can log, ``loss_<name>`` attributes set by the step, in CUT's
    order. ``NAME``: the model's ``--model`` name (:data:`.models.MODELS` looks it up), ``DEFAULTS``: the
    option defaults it sets over the base ones (CUT's ``modify_commandline_options``). Hooks the trainer
    calls: :meth:`epoch_diagnostics` after each epoch, :meth:`evaluation_pictures` after each evaluation."""

    NAME = ""
    DEFAULTS: dict = {}
    TRANSLATOR = "G"
    LOSS_NAMES: tuple[str, ...] = ()
    #: The file under the run's folder that :meth:`epoch_diagnostics`' records go to (None: none).
    DIAGNOSTICS_LOG: str | None = None

    def __init__(self, opt, device, world=1, rank=0):
        if opt.model != self.NAME:
            raise ValueError(f"{type(self).__name__} is --model {self.NAME}, not {opt.model} "
                             "(models.create_model picks the class)")
        self.opt, self.device, self.world, self.rank = opt, torch.device(device), world, rank
        self.gen = torch.Generator()
        self.reseed(0)
        self.skipped_updates = 0   # optimiser updates skipped under --nonfinite skip
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if opt.bf16 else contextlib.nullcontext()
        self.criterionGAN = networks.GANLoss(opt.gan_mode)

    def gan(self, net_d, x, real: bool):
        """``--gan_mode``'s loss of discriminator ``net_d`` on ``x`` against the label ``real``."""
        return self.criterionGAN(net_d(x), real).mean()

    def reseed(self, step: int) -> None:
        """Seed ``gen`` from (seed, rank, step): a fresh process at step 0, or a rank > 0 on resume
        (only rank 0's state is saved)."""
        self.gen.manual_seed(self.opt.seed * 7919 + self.rank + 1_000_003 * step)

    def _ready(self):
        """Rank 0's parameters and buffers to every process, then the EMA net: a copy of the translator
        (so the same on every process, and after identical updates it stays so)."""
        if self.world > 1:
            for net in self.nets.values():
                for t in list(net.parameters()) + list(net.buffers()):
                    dist.broadcast(t.data, 0)
        self.ema_updates = 0
        self.ema = copy.deepcopy(self.nets[self.TRANSLATOR]).requires_grad_(False) if self.opt.ema_decay > 0 else None

    @property
    def ema_name(self) -> str:
        """The EMA net's name in checkpoints: ``<TRANSLATOR>_ema``."""
        return self.TRANSLATOR + "_ema"

    @property
    def checkpoint_nets(self) -> dict:
        """{name: module} of every file of a checkpoint: ``nets`` and the EMA net, if any."""
        return self.nets | ({self.ema_name: self.ema} if self.ema is not None else {})

    def translator(self) -> nn.Module:
        """The net that translates for evaluation, sample grids and the best checkpoint: the EMA net if
        there is one, else ``nets[TRANSLATOR]``."""
        return self.ema if self.ema is not None else self.nets[self.TRANSLATOR]

    def _ema_step(self):
        """ema <- d ema + (1 - d) w for the translator's parameters w, d = min(ema_decay, (1 + t) / (10 + t))
        at the t-th update (the warm-up lets a short run's average forget its random start); buffers
        are copied."""
        self.ema_updates += 1
        t = self.ema_updates
        decay = min(self.opt.ema_decay, (1 + t) / (10 + t))
        net = self.nets[self.TRANSLATOR]
        w0, e0 = next(net.parameters()), next(self.ema.parameters())
        if (e0.dtype, e0.device) != (w0.dtype, w0.device):   # the translator was cast or moved after __init__
            self.ema.to(device=w0.device, dtype=w0.dtype)
        with torch.no_grad():
            for e, w in zip(self.ema.parameters(), net.parameters()):
                e.lerp_(w, 1 - decay)
            for e, b in zip(self.ema.buffers(), net.buffers()):
                e.copy_(b)

    def set_lr(self, epoch: int) -> float:
        lr = self.opt.lr * lr_factor(self.opt, epoch)
        for o in self.optimizers.values():
            for group in o.param_groups:
                group["lr"] = lr
        return lr

    def set_input(self, batch):
        a, b = ("A", "B") if self.opt.direction == "AtoB" else ("B", "A")
        self.real_A = batch[a].to(self.device, non_blocking=True)
        self.real_B = batch[b].to(self.device, non_blocking=True)

    def _average_grads(self, *nets):
        if self.world == 1:
            return
        grads = [p.grad for net in nets for p in net.parameters() if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(f)

    def _update(self, *names):
        """Step the optimisers ``names`` (those the model has) after a backward. Under ``--nonfinite skip``
        none is stepped when their gradients are not all finite (AMP's GradScaler's rule; one host read
        per update) and ``skipped_updates`` counts it; gradients are averaged over the processes first,
        so every process decides alike."""
        optimizers = [self.optimizers[k] for k in names if k in self.optimizers]
        if self.opt.nonfinite == "skip":
            grads = [p.grad for o in optimizers for group in o.param_groups for p in group["params"]
                     if p.grad is not None]
            if not bool(torch.stack(torch._foreach_norm(grads, math.inf)).isfinite().all()):
                self.skipped_updates += 1
                return
        for o in optimizers:
            o.step()
        if self.ema is not None and "G" in names:
            self._ema_step()

    def loss_names(self) -> tuple[str, ...]:
        """The ``LOSS_NAMES`` this run computes (all of them unless a subclass leaves some out)."""
        return self.LOSS_NAMES

    def _losses(self) -> dict:
        """The last step's losses of :meth:`loss_names`, detached float32 0-d tensors."""
        return {n: getattr(self, "loss_" + n).detach().float() for n in self.loss_names()}

    def forward(self):
        """The generators' outputs (``fake_B``, ...) on the inputs of :meth:`set_input`."""
        raise NotImplementedError

    def compute_D_loss(self):
        """The discriminators' loss on the last :meth:`forward` (sets its ``loss_*`` parts)."""
        raise NotImplementedError

    def compute_G_loss(self):
        """The generators' loss on the last :meth:`forward` (sets its ``loss_*`` parts)."""
        raise NotImplementedError

    def optimize(self, batch) -> dict:
        """One training step on ``batch`` (D and G updates in CUT's order for the model); returns
        {name: loss} for :meth:`loss_names` (detached 0-d tensors)."""
        raise NotImplementedError

    def visuals(self) -> dict:
        """{column name: (B, C, H, W)} of the last step, for the sample grids."""
        raise NotImplementedError

    def state_for_resume(self) -> dict:
        """The model's part of the resume state beyond nets and optimisers (rank 0's): its random
        generator and anything else the next steps draw from, so that resuming is exact."""
        raise NotImplementedError

    def load_state_for_resume(self, state: dict) -> None:
        """Restore what :meth:`state_for_resume` returned (``state`` may hold other keys too)."""
        raise NotImplementedError

    def epoch_diagnostics(self) -> dict:
        """After an epoch (rank 0): a JSON-able record about the last batch for :data:`DIAGNOSTICS_LOG`."""
        return {}

    def evaluation_pictures(self, image: torch.Tensor, epoch: int, folder: str) -> list[tuple[str, str]]:
        """After an evaluation (rank 0): the model's own pictures of held-out ``image`` (1, C, H, W) in
        [-1, 1], written as PNGs into ``folder``; returns [(TensorBoard tag, path)]."""
        return []


class CUTModel(GANModel):
    """CUT: networks netG, netD, netF with their Adam optimisers on ``device``; ``world`` > 1 averages
    gradients over the default process group. ``gen`` draws the flips of flip equivariance. netF pools
    random patches on every NCE layer (QS-Attn on :meth:`qs_layer_positions`, none here)."""

    NAME = "cut"
    DEFAULTS = dict(nce_idt=True, lambda_NCE=1.0)
    LOSS_NAMES = ("G_GAN", "D_real", "D_fake", "G", "NCE", "NCE_Y")

    @classmethod
    def qs_layer_positions(cls, opt):
        """The sampler's ``qs_layers``: positions in the NCE layer list (None: the last two)."""
        return ()

    def __init__(self, opt, device, world=1, rank=0):
        super().__init__(opt, device, world, rank)
        self.netG = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.normG, not opt.no_dropout,
                                      opt.init_type, opt.init_gain, opt.no_antialias, opt.no_antialias_up).to(device)
        self.netD = networks.define_D(opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.normD, opt.init_type,
                                      opt.init_gain, opt.no_antialias).to(device)
        self.netF = QSPatchSampler(use_mlp=opt.netF == "mlp_sample", nc=opt.netF_nc,
                                   qs_layers=self.qs_layer_positions(opt),
                                   mode=opt.qs_mode, window=opt.qs_window, backend=opt.qs_backend,
                                   precision=opt.qs_precision, variant=opt.qs_variant, init_type=opt.init_type,
                                   init_gain=opt.init_gain, check_finite=False,
                                   detach_attention=opt.qs_detach_attention)
        with torch.no_grad():  # CUT's data-dependent init: netF's heads from the encoder's feature shapes
            probe = torch.zeros(1, opt.input_nc, opt.crop_size, opt.crop_size, device=device)
            self.netF.create_mlp(self.netG(probe, opt.nce_layers_list, encode_only=True))
        adam = dict(lr=opt.lr, betas=(opt.beta1, opt.beta2))
        self.optimizers = {"G": torch.optim.Adam(self.netG.parameters(), **adam),
                           "D": torch.optim.Adam(self.netD.parameters(), **adam)}
        if opt.netF == "mlp_sample":
            self.optimizers["F"] = torch.optim.Adam(self.netF.parameters(), **adam)
        self.last_patch_ids = None
        self.source_needs_grad = False   # no gradient reaches the source features (PatchNCE detaches keys)
        self._ready()

    @property
    def nets(self):
        return {"G": self.netG, "F": self.netF, "D": self.netD}

    def forward(self):
        opt = self.opt
        real = torch.cat((self.real_A, self.real_B)) if opt.nce_idt else self.real_A
        self.flipped = opt.flip_equivariance and bool(torch.rand((), generator=self.gen) < 0.5)
        if self.flipped:
            real = real.flip(3)
        fake = self.netG(real)
        n = self.real_A.shape[0]
        self.fake_B = fake[:n]
        self.idt_B = fake[n:] if opt.nce_idt else None

    def nce_loss(self, src, tgt):
        """Mean over NCE layers of lambda_NCE * PatchNCE between tgt's and src's pooled features."""
        opt = self.opt
        feat_q = self.netG(tgt, opt.nce_layers_list, encode_only=True)
        if self.flipped:
            feat_q = [f.flip(3) for f in feat_q]
        # PatchNCE detaches the keys (the pooled source): a gradient reaches the source features only through
        # QS-Attn's attention rows, so otherwise their encoder pass builds no graph and is never backpropagated
        with contextlib.nullcontext() if self.source_needs_grad else torch.no_grad():
            feat_k = self.netG(src, opt.nce_layers_list, encode_only=True)
        pool_k, pool_q, self.last_patch_ids = self.netF.paired(feat_k, feat_q, opt.num_patches)
        groups = 1 if opt.nce_includes_all_negatives_from_minibatch else src.shape[0]
        total = sum(networks.patch_nce_loss(q, k, groups, opt.nce_T).mean() * opt.lambda_NCE
                    for q, k in zip(pool_q, pool_k))
        return total / len(feat_q)

    def compute_D_loss(self):
        """(GAN(D(fake_B), fake) + GAN(D(real_B), real)) / 2, fake_B detached."""
        self.loss_D_fake = self.gan(self.netD, self.fake_B.detach(), False)
        self.loss_D_real = self.gan(self.netD, self.real_B, True)
        return (self.loss_D_fake + self.loss_D_real) * 0.5

    def compute_G_loss(self):
        """lambda_GAN * GAN(D(fake_B), real) + NCE (averaged with the identity NCE under ``nce_idt``)."""
        opt = self.opt
        zero = torch.zeros((), device=self.device)
        self.loss_G_GAN = self.gan(self.netD, self.fake_B, True) * opt.lambda_GAN \
            if opt.lambda_GAN > 0 else zero
        self.loss_NCE = self.nce_loss(self.real_A, self.fake_B) if opt.lambda_NCE > 0 else zero
        nce_both = self.loss_NCE
        if opt.nce_idt and opt.lambda_NCE > 0:
            self.loss_NCE_Y = self.nce_loss(self.real_B, self.idt_B)
            nce_both = (self.loss_NCE + self.loss_NCE_Y) * 0.5
        return self.loss_G_GAN + nce_both

    def optimize(self, batch) -> dict:
        """One D step and one G+F step on ``batch``; returns the losses (detached 0-d tensors)."""
        self.set_input(batch)
        with self.autocast:
            self.forward()
        self.netD.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.autocast:
            loss_D = self.compute_D_loss()
        loss_D.backward()
        self._average_grads(self.netD)
        self._update("D")
        self.netD.requires_grad_(False)
        for k in ("G", "F"):
            if k in self.optimizers:
                self.optimizers[k].zero_grad(set_to_none=True)
        with self.autocast:
            self.loss_G = self.compute_G_loss()
        self.loss_G.backward()
        self._average_grads(self.netG, self.netF)
        self._update("G", "F")
        return self._losses()

    def loss_names(self):
        """Without the identity NCE (``nce_idt`` off or lambda_NCE 0), NCE_Y is left out."""
        return self.LOSS_NAMES if self.opt.nce_idt and self.opt.lambda_NCE > 0 else self.LOSS_NAMES[:-1]

    def state_for_resume(self) -> dict:
        """The flips' generator."""
        return {"flip_rng": self.gen.get_state()}

    def load_state_for_resume(self, state: dict) -> None:
        self.gen.set_state(state["flip_rng"])

    def visuals(self):
        """{name: (B, 3, H, W)} of the last step: real A, fake B, real B[, idt B]."""
        out = {"real A": self.real_A, "fake B": self.fake_B, "real B": self.real_B}
        return out | ({"idt B": self.idt_B} if self.idt_B is not None else {})


class FastCUTModel(CUTModel):
    """FastCUT: CUT without the identity NCE, with lambda_NCE 10, flip equivariance and 150 + 50 epochs."""

    NAME = "fastcut"
    DEFAULTS = dict(nce_idt=False, lambda_NCE=10.0, flip_equivariance=True, n_epochs=150, n_epochs_decay=50)


class QSAttnModel(CUTModel):
    """CUT (its defaults) with QS-Attn on ``--qs_layers`` (selection and routing by the source features' attention):
    the source features get gradients through the attention rows unless ``--qs_detach_attention``.
    Logs the selection's ties after each epoch (``selection_log.jsonl``, :mod:`.diagnostics`) and draws
    the selection on a test image after each evaluation (:func:`.viz.plot_selection`)."""

    NAME = "qs"
    DIAGNOSTICS_LOG = "selection_log.jsonl"

    def __init__(self, opt, device, world=1, rank=0):
        super().__init__(opt, device, world, rank)
        self.source_needs_grad = not opt.qs_detach_attention

    @classmethod
    def qs_layer_positions(cls, opt):
        if not opt.qs_layers_list:
            return None
        return tuple(opt.nce_layers_list.index(i) for i in opt.qs_layers_list)

    def epoch_diagnostics(self) -> dict:
        """{"layers": :func:`.diagnostics.selection_stats`} of the last batch."""
        return {"layers": diagnostics.selection_stats(self)}

    @torch.no_grad()
    def evaluation_pictures(self, image, epoch, folder):
        """selection_epochNNN.png: the selection (the paper's Figure 2) per QS layer, through the
        translator's encoder (the EMA net's) in eval mode."""
        from .viz import plot_selection, selection_maps
        opt, net = self.opt, self.translator()
        layers = [opt.nce_layers_list[i] for i in sorted(self.netF.qs_positions(len(opt.nce_layers_list)))]
        was = net.training
        net.eval()
        try:
            maps = selection_maps(net, image, layers, opt.qs_mode, opt.num_patches, opt.qs_window, opt.qs_backend)
        finally:
            net.train(was)
        path = os.path.join(folder, f"selection_epoch{epoch:03d}.png")
        plot_selection(image[0], maps, path,
                       title=f"epoch {epoch}: QS-Attn's selection ({opt.qs_mode}) on test image 0")
        return [("selection", path)]
