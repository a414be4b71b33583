"""CycleGAN (``--model cycle_gan``), the QS-Attn paper's first baseline, as CUT's ``cycle_gan_model``.

Networks: G_A: A -> B and G_B: B -> A (CUT's generator), D_A judging B images (real_B vs G_A(A)) and
D_B judging A images (real_A vs G_B(B)) (CUT's discriminator). One step on (real_A, real_B):

forward: fake_B = G_A(A), rec_A = G_B(fake_B), fake_A = G_B(B), rec_B = G_A(fake_A).
G step (D_A, D_B frozen), one Adam over G_A and G_B:
  loss_G = GAN(D_A(fake_B), real) + GAN(D_B(fake_A), real) + lambda_A |rec_A - A|_1 + lambda_B |rec_B - B|_1
         + lambda_identity (lambda_B |G_A(B) - B|_1 + lambda_A |G_B(A) - A|_1)      (|.|_1: mean abs),
  the identity terms only when lambda_identity > 0.
D step, one Adam over D_A and D_B, with the pre-G-step fakes through the image pools:
  loss_D_A = (GAN(D_A(B), real) + GAN(D_A(pool_B(fake_B)), fake)) / 2, loss_D_B likewise with A, pool_A(fake_A).

Losses logged: D_A, G_A, cycle_A, idt_A, D_B, G_B, cycle_B, idt_B (CUT's names; the idt ones only
with lambda_identity > 0). Checkpoints: ``<which>_net_{G_A,G_B,D_A,D_B}.pth`` with the generator's and
the discriminator's state-dict keys, as CUT writes them. Differences from CUT: the pools draw from the
model's ``torch.Generator`` instead of Python's ``random``, and the pools' images and that generator's
state are in the resume state (so ``--continue_train`` is exact); Adam's beta2 is ``--beta2``
(default 0.999, which CUT's cycle_gan_model fixes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import networks
from .model import GANModel


class ImagePool:
    """CycleGAN's buffer of past generated images (``--pool_size``), drawing from ``gen``.

    ``query(images)`` (B, C, H, W) -> (B, C, H, W), detached, image by image in batch order: while
    fewer than ``size`` are stored, the image is stored and returned; once full, u = rand(gen): if
    u > 0.5, j = randint(size, gen), stored image j is returned and the new image takes its place, else
    the new image is returned. ``size`` 0: the input itself."""

    def __init__(self, size: int, gen: torch.Generator):
        self.size, self.gen, self.images = size, gen, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand((), generator=self.gen)) > 0.5:
                j = int(torch.randint(self.size, (), generator=self.gen))
                out.append(self.images[j])
                self.images[j] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> torch.Tensor:
        """The stored images, (n, C, H, W) on the CPU (n = 0: an empty tensor)."""
        return torch.stack(self.images).cpu() if self.images else torch.empty(0)

    def load_state(self, images: torch.Tensor, device) -> None:
        if len(images) > self.size:
            raise ValueError(f"resume state: {len(images)} pooled images, more than --pool_size {self.size}")
        self.images = list(images.to(device))


class CycleGANModel(GANModel):
    """Networks G_A, G_B, D_A, D_B with Adam optimisers "G" (G_A and G_B) and "D" (D_A and D_B) on
    ``device``; ``world`` > 1 averages gradients over the default process group. ``gen`` draws the
    pools' choices. Sets no option defaults of its own: the base ones (no_dropout, lsgan, 200 + 200
    epochs) are CycleGAN's."""

    NAME = "cycle_gan"
    TRANSLATOR = "G_A"
    LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")

    def __init__(self, opt, device, world=1, rank=0):
        super().__init__(opt, device, world, rank)
        g = (opt.ngf, opt.netG, opt.normG, not opt.no_dropout, opt.init_type, opt.init_gain, opt.no_antialias,
             opt.no_antialias_up)
        d = (opt.ndf, opt.netD, opt.n_layers_D, opt.normD, opt.init_type, opt.init_gain, opt.no_antialias)
        self.netG_A = networks.define_G(opt.input_nc, opt.output_nc, *g).to(device)
        self.netG_B = networks.define_G(opt.output_nc, opt.input_nc, *g).to(device)
        self.netD_A = networks.define_D(opt.output_nc, *d).to(device)
        self.netD_B = networks.define_D(opt.input_nc, *d).to(device)
        adam = dict(lr=opt.lr, betas=(opt.beta1, opt.beta2))
        self.optimizers = {"G": torch.optim.Adam([*self.netG_A.parameters(), *self.netG_B.parameters()], **adam),
                           "D": torch.optim.Adam([*self.netD_A.parameters(), *self.netD_B.parameters()], **adam)}
        self.pool_A, self.pool_B = ImagePool(opt.pool_size, self.gen), ImagePool(opt.pool_size, self.gen)
        self._ready()

    @property
    def nets(self):
        return {"G_A": self.netG_A, "G_B": self.netG_B, "D_A": self.netD_A, "D_B": self.netD_B}

    def forward(self):
        self.fake_B = self.netG_A(self.real_A)
        self.rec_A = self.netG_B(self.fake_B)
        self.fake_A = self.netG_B(self.real_B)
        self.rec_B = self.netG_A(self.fake_A)

    def compute_G_loss(self):
        """GAN + cycle (+ identity) losses of G_A and G_B (the module docstring's loss_G)."""
        opt = self.opt
        self.loss_G_A = self.gan(self.netD_A, self.fake_B, True)
        self.loss_G_B = self.gan(self.netD_B, self.fake_A, True)
        self.loss_cycle_A = F.l1_loss(self.rec_A, self.real_A) * opt.lambda_A
        self.loss_cycle_B = F.l1_loss(self.rec_B, self.real_B) * opt.lambda_B
        loss = self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B
        if opt.lambda_identity > 0:
            self.idt_A, self.idt_B = self.netG_A(self.real_B), self.netG_B(self.real_A)
            self.loss_idt_A = F.l1_loss(self.idt_A, self.real_B) * opt.lambda_B * opt.lambda_identity
            self.loss_idt_B = F.l1_loss(self.idt_B, self.real_A) * opt.lambda_A * opt.lambda_identity
            loss = loss + self.loss_idt_A + self.loss_idt_B
        return loss

    def compute_D_loss(self):
        """loss_D_A + loss_D_B, each (GAN(D(real), real) + GAN(D(pooled fake), fake)) / 2 with the fakes
        of the last :meth:`forward` through the pools (pool_B first, then pool_A)."""
        self.loss_D_A = self._half_d_loss(self.netD_A, self.real_B, self.pool_B.query(self.fake_B))
        self.loss_D_B = self._half_d_loss(self.netD_B, self.real_A, self.pool_A.query(self.fake_A))
        return self.loss_D_A + self.loss_D_B

    def _half_d_loss(self, net_d, real, pooled_fake):
        return (self.gan(net_d, real, True) + self.gan(net_d, pooled_fake, False)) * 0.5

    def optimize(self, batch) -> dict:
        """One G step (G_A, G_B), then one D step (D_A, D_B) on ``batch``, CUT's order; returns the
        losses (detached 0-d tensors)."""
        self.set_input(batch)
        with self.autocast:
            self.forward()
        nets_d = (self.netD_A, self.netD_B)
        for net in nets_d:
            net.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast:
            loss_G = self.compute_G_loss()
        loss_G.backward()
        self._average_grads(self.netG_A, self.netG_B)
        self._update("G")
        for net in nets_d:
            net.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        with self.autocast:
            loss_D = self.compute_D_loss()
        loss_D.backward()
        self._average_grads(*nets_d)
        self._update("D")
        return self._losses()

    def loss_names(self):
        """Without the identity losses (lambda_identity 0), idt_A and idt_B are left out."""
        return self.LOSS_NAMES if self.opt.lambda_identity > 0 else tuple(n for n in self.LOSS_NAMES if "idt" not in n)

    def state_for_resume(self) -> dict:
        """The pools' generator and images."""
        return {"pool_rng": self.gen.get_state(), "pool_A": self.pool_A.state(), "pool_B": self.pool_B.state()}

    def load_state_for_resume(self, state: dict) -> None:
        self.gen.set_state(state["pool_rng"])
        self.pool_A.load_state(state["pool_A"], self.device)
        self.pool_B.load_state(state["pool_B"], self.device)

    def visuals(self):
        """{name: (B, C, H, W)}, both directions of the last step: real A, fake B, rec A[, idt B], real B,
        fake A, rec B[, idt A] (CUT's visual names; idt B = G_B(A), idt A = G_A(B))."""
        idt = self.opt.lambda_identity > 0
        return ({"real A": self.real_A, "fake B": self.fake_B, "rec A": self.rec_A}
                | ({"idt B": self.idt_B} if idt else {})
                | {"real B": self.real_B, "fake A": self.fake_A, "rec B": self.rec_B}
                | ({"idt A": self.idt_A} if idt else {}))
