"""One ``CUTModel.optimize()`` step against an independent float64 oracle (train/model.py, networks.py,
the sampler and every QS-Attn backend that runs here), and one ``CycleGANModel.optimize()`` step
(train/cycle_gan.py) against a float64 transcription of the CycleGAN objective on the same primitives.

The oracle is a functional transcription of CUT's step written here: its own convolutions, instance
norm (mean and variance by hand, so no ``F.instance_norm``), blur filters, activations, MLP heads, L2
norm, PatchNCE, LSGAN and QS-Attn (dense float64 softmax attention, global or 7x7 local), differentiated
by autograd in float64. It reads only the networks' hyper-parameters (kernel sizes, strides, layer
order) and the parameter values from the model, and takes as given the step's discrete draws (random
patch ids, selected queries, the flip), which the model records. The selected queries are checked
for validity against the oracle's own entropies, and the oracle's gradients once against central
finite differences. On torch 2.13.0 CPU the B=1 steps of cut, fastcut and qs on the torch and
reference backends failed this before the norm layers were made layout-safe (docs/known-issues.md, "Known PyTorch
issues")."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qsattn_fast import OP_MODES
from qsattn_fast.ops import split_mode
from qsattn_fast.train import networks, options
from qsattn_fast.train.cycle_gan import CycleGANModel
from qsattn_fast.train.data import SyntheticDataset
from qsattn_fast.train.models import create_model

from support.training import TINY, one_thread, pool_query  # noqa: F401 (fixture)

try:  # switches Triton's interpreter on before anything imports triton (CPU machines)
    from support import triton_env  # noqa: F401
    NO_TRITON = None
except pytest.skip.Exception as e:
    NO_TRITON = str(e)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# ---- the oracle ---------------------------------------------------------------------------------


def _binomial(taps):
    a = torch.tensor(taps, dtype=F64)
    f = a[:, None] * a[None, :]
    return f / f.sum()


def _inorm(x):
    mean = x.mean((2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def _layer(m, x, p, pre):
    """One module of G or D, computed from the parameter dict ``p`` with primitives of this file."""
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, p[pre + "weight"], p.get(pre + "bias"), m.stride, m.padding)
    if isinstance(m, nn.InstanceNorm2d):
        assert not m.affine and not m.track_running_stats
        return _inorm(x)
    if isinstance(m, (nn.ReflectionPad2d, nn.ReplicationPad2d)):
        return F.pad(x, m.padding, mode="reflect" if isinstance(m, nn.ReflectionPad2d) else "replicate")
    if isinstance(m, nn.ReLU):
        return torch.where(x > 0, x, 0.0)
    if isinstance(m, nn.LeakyReLU):
        return torch.where(x > 0, x, m.negative_slope * x)
    if isinstance(m, nn.Tanh):
        return torch.tanh(x)
    C = x.shape[1]
    if isinstance(m, networks.Downsample):  # reflect-pad 1, 3x3 binomial, stride 2
        filt = _binomial([1, 2, 1]).to(x)[None, None].expand(C, 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), filt, stride=2, groups=C)
    if isinstance(m, networks.Upsample):  # replicate-pad 1, 4x4 binomial x 4 transposed, stride 2, trimmed
        filt = (4 * _binomial([1, 3, 3, 1])).to(x)[None, None].expand(C, 1, 4, 4)
        y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), filt, stride=2, padding=2, groups=C)
        return y[:, :, 1:-1, 1:-1]
    if isinstance(m, networks.ResnetBlock):
        return x + _sequence(m.conv_block, x, p, pre + "conv_block.")
    raise TypeError(f"oracle: no transcription of {type(m).__name__}")


def _sequence(seq, x, p, pre, keep=()):
    feats = []
    for i, m in enumerate(seq):
        x = _layer(m, x, p, f"{pre}{i}.")
        if i in keep:
            feats.append(x)
    return (x, feats) if keep else x


def _mlp(x, p, i):
    pre = f"mlp_{i}."
    h = torch.where((y := x @ p[pre + "0.weight"].T + p[pre + "0.bias"]) > 0, y, 0.0)
    return h @ p[pre + "2.weight"].T + p[pre + "2.bias"]


def _l2(x):
    """x / (||x|| + 1e-7); the clamp (1e-150 on the norm, far below 1e-7) keeps the derivative of a zero
    row finite: there the true Jacobian is I / 1e-7."""
    return x / (torch.sqrt((x * x).sum(1, keepdim=True).clamp_min(1e-300)) + 1e-7)


def _window_gather(x, idx, window):
    """x (C, H, W) zero-padded; the window x window neighbourhoods of flat positions idx -> (C, k, w^2)."""
    C, H, W = x.shape
    r = window // 2
    xp = F.pad(x, (r, r, r, r))
    h, w = idx // W, idx % W
    offs = torch.arange(window)
    hh = (h[:, None, None] + offs[None, :, None]).expand(-1, window, window).reshape(len(idx), -1)
    ww = (w[:, None, None] + offs[None, None, :]).expand(-1, window, window).reshape(len(idx), -1)
    return xp[:, hh, ww]


def _entropies(logits):
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def _oracle_entropy(f, mode, window):
    """(C, H, W) -> (N,) textbook entropies of the global rows or the local windows, float64."""
    C, H, W = f.shape
    if mode == "global":
        fr = f.reshape(C, -1)
        return _entropies(fr.T @ fr)
    all_pos = torch.arange(H * W)
    return _entropies((f.reshape(C, -1)[:, :, None] * _window_gather(f, all_pos, window)).sum(0))


def _route(f, idx, values, mode, window):
    """The selected attention rows of source map f (C, H, W) applied to each value map -> [(k, C_v)]."""
    C = f.shape[0]
    fq = f.reshape(C, -1)[:, idx]  # (C, k)
    if mode == "local":
        a = torch.softmax((fq[:, :, None] * _window_gather(f, idx, window)).sum(0), -1)  # (k, w^2)
        return [(a[None] * _window_gather(v, idx, window)).sum(2).T for v in values]
    a = torch.softmax(fq.T @ f.reshape(C, -1), -1)  # (k, N)
    return [a @ v.reshape(v.shape[0], -1).T for v in values]


def _patch_nce(q, k, groups, T):
    qg, kg = q.view(groups, -1, q.shape[1]), k.view(groups, -1, k.shape[1])
    sim = qg @ kg.transpose(1, 2)  # (groups, P, P), positives on the diagonal
    eye = torch.eye(sim.shape[1], dtype=torch.bool)
    logits = torch.cat((sim[:, eye][..., None], sim.masked_fill(eye, -10.0)), 2).flatten(0, 1) / T
    return torch.logsumexp(logits, 1) - logits[:, 0]


class Oracle:
    """CUT's losses of one step as functions of parameter dicts (G, F, D), given the step's draws."""

    def __init__(self, model, draws):
        self.opt, self.model, self.draws = model.opt, model, draws

    def generator(self, pG, x, layers=()):
        return _sequence(self.model.netG.model, x, pG, "model.", keep=layers)

    def discriminator(self, pD, x):
        return _sequence(self.model.netD.model, x, pD, "model.")

    def nce(self, pG, pF, src, tgt, ids, keys):
        """PatchNCE of one call; ``keys`` collects the detached key patches of each layer, or, when
        it already holds them, supplies them (finite differences must hold PatchNCE's detached side
        fixed, as autograd does)."""
        opt, qs = self.opt, self.draws["qs_layers"]
        frozen = len(keys) > 0
        _, feat_q = self.generator(pG, tgt, opt.nce_layers_list)
        if self.draws["flipped"]:
            feat_q = [f.flip(3) for f in feat_q]
        _, feat_k = self.generator(pG, src, opt.nce_layers_list)
        total = 0.0
        for i, (fk, fq) in enumerate(zip(feat_k, feat_q)):
            B, C = fk.shape[:2]
            if i in qs:
                route_mode = split_mode(opt.qs_mode)[1]
                att = fk.detach() if opt.qs_detach_attention else fk  # the maps the attention is built from
                pooled = [_route(att[b], ids[i][b], [fk[b], fq[b]], route_mode, opt.qs_window) for b in range(B)]
                k, q = (torch.cat([p[j] for p in pooled]) for j in (0, 1))
            else:
                k, q = (f.reshape(B, C, -1)[:, :, ids[i]].transpose(1, 2).reshape(-1, C) for f in (fk, fq))
            k, q = _l2(_mlp(k, pF, i)).detach(), _l2(_mlp(q, pF, i))
            if frozen:
                k = keys[i]
            else:
                keys.append(k)
            groups = 1 if opt.nce_includes_all_negatives_from_minibatch else B
            total = total + _patch_nce(q, k, groups, opt.nce_T).mean() * opt.lambda_NCE
        return total / len(feat_q)

    def losses(self, pG, pF, pD, pD_after, real_A, real_B, keys=None):
        """D's loss with the pre-step D, G's with the post-step D (CUT's order: D steps first);
        ``out["keys"]``: the detached key patches per call (pass them back to hold them fixed)."""
        keys = keys or [[], []]
        opt, d = self.opt, self.draws
        real = torch.cat((real_A, real_B)) if opt.nce_idt else real_A
        fake = self.generator(pG, real.flip(3) if d["flipped"] else real)
        n = real_A.shape[0]
        fake_B = fake[:n]
        out = {"D_fake": (self.discriminator(pD, fake_B.detach()) ** 2).mean(),
               "D_real": ((self.discriminator(pD, real_B) - 1) ** 2).mean()}
        out["G_GAN"] = ((self.discriminator(pD_after, fake_B) - 1) ** 2).mean() * opt.lambda_GAN
        out["NCE"] = self.nce(pG, pF, real_A, fake_B, d["ids"][0], keys[0])
        nce = out["NCE"]
        if opt.nce_idt:
            out["NCE_Y"] = self.nce(pG, pF, real_B, fake[n:], d["ids"][1], keys[1])
            nce = (out["NCE"] + out["NCE_Y"]) * 0.5
        out["G"] = out["G_GAN"] + nce
        out["loss_D"] = (out["D_fake"] + out["D_real"]) * 0.5
        out["keys"] = keys
        return out


# ---- the step under test --------------------------------------------------------------------------


def _params(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _flip_generator(flip: bool) -> torch.Generator:
    """A generator whose first uniform draw gives the wanted flip decision (flip iff draw < 0.5)."""
    for seed in range(100):
        if (float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < 0.5) == flip:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("unreachable")


def run_step(argv, batch, dtype=F64, flip=None):
    """One optimize() step of a fresh model; returns the model, its pre-step parameters, the post-step
    D, the step's draws, its losses and gradients."""
    opt = options.parse(TINY + ["--batch_size", str(batch)] + argv)
    model = create_model(opt, "cpu")
    for net in model.nets.values():
        net.to(dtype)
    if flip is not None:
        model.gen = _flip_generator(flip)
    before = {name: _params(net) for name, net in model.nets.items()}
    ids = []
    paired = model.netF.paired

    def recording_paired(feats_src, feats_tgt, num_patches):
        out = paired(feats_src, feats_tgt, num_patches)
        ids.append([t.clone() for t in out[2]])
        return out

    model.netF.paired = recording_paired
    ds = SyntheticDataset(opt.seed, 8, opt.load_size, opt.crop_size)
    data = torch.utils.data.default_collate([ds[(i, 17 + 5 * i)] for i in range(batch)])
    data = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in data.items()}
    losses = {n: getattr(model, "loss_" + n).detach() for n in model.optimize(data)}  # unrounded
    grads = {name: {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
             for name, net in model.nets.items()}
    qs = model.netF.qs_positions(len(opt.nce_layers_list)) if opt.model == "qs" else set()
    draws = {"ids": ids, "flipped": model.flipped, "qs_layers": qs}
    return model, before, _params(model.netD), draws, losses, grads, data


def oracle_step(model, before, d_after, draws, data):
    """The oracle's losses and its float64 gradients w.r.t. G, F (G loss) and D (D loss)."""
    p = {name: {k: v.double().requires_grad_(True) for k, v in ps.items()} for name, ps in before.items()}
    pD_after = {k: v.double() for k, v in d_after.items()}
    oracle = Oracle(model, draws)
    out = oracle.losses(p["G"], p["F"], p["D"], pD_after, data["A"].double(), data["B"].double())
    gD = torch.autograd.grad(out["loss_D"], list(p["D"].values()))
    gGF = torch.autograd.grad(out["G"], list(p["G"].values()) + list(p["F"].values()))
    nG = len(p["G"])
    grads = {"D": dict(zip(p["D"], gD)), "G": dict(zip(p["G"], gGF[:nG])), "F": dict(zip(p["F"], gGF[nG:]))}
    return oracle, out, grads, p, pD_after


def assert_grads_match(got, want, tol):
    """Each net's gradient vector to ``tol`` relative, and each tensor's error against that net's norm
    (conv biases before an instance norm have a true gradient of 0: they are measured on that scale)."""
    for net in want:
        assert got[net].keys() == want[net].keys(), net
        norm = torch.cat([g.flatten() for g in want[net].values()]).norm()
        assert norm > 0, net
        for k, w in want[net].items():
            err = float((got[net][k].double() - w).norm() / norm)
            assert err < tol, f"net{net} {k}: gradient error {err:.2e} of the net's gradient norm"


def check_selection(model, draws, fk_by_call):
    """Each QS layer's selected queries are distinct and valid against the oracle's entropies."""
    opt = model.opt
    sel_mode = split_mode(opt.qs_mode)[0]
    k = opt.num_patches
    for ids, feats in zip(draws["ids"], fk_by_call):
        for i in draws["qs_layers"]:
            for b in range(feats[i].shape[0]):
                ent = _oracle_entropy(feats[i][b], sel_mode, opt.qs_window)
                idx = ids[i][b]
                assert idx.unique().numel() == min(k, ent.numel())
                kth = ent.sort().values[idx.numel() - 1]
                assert bool((ent[idx] <= kth + 1e-9 + 1e-6 * kth).all()), (i, b)


def _source_features(oracle, pG, data, opt):
    src = [data["A"].double()] + ([data["B"].double()] if opt.nce_idt else [])
    with torch.no_grad():
        return [oracle.generator(pG, s, opt.nce_layers_list)[1] for s in src]


def check_step(argv, batch, flip=None, dtype=F64, tol=1e-9):
    model, before, d_after, draws, losses, grads, data = run_step(argv, batch, dtype, flip)
    oracle, out, want, p, _ = oracle_step(model, before, d_after, draws, data)
    rtol = 1e-5 if dtype == torch.float32 else 1e-11
    for name, value in losses.items():
        assert math.isclose(float(value), float(out[name].detach()), rel_tol=rtol, abs_tol=rtol), name
    if flip is not None:
        assert draws["flipped"] == flip
    check_selection(model, draws, _source_features(oracle, p["G"], data, model.opt))
    assert_grads_match(grads, want, tol)


# ---- the tests ---------------------------------------------------------------------------------------
QS_BACKENDS = ["native", "torch", "reference"]


@pytest.mark.parametrize("batch", [1, 2])
def test_cut_step(batch):
    check_step(["--model", "cut"], batch)


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
def test_fastcut_step(batch, flip):
    check_step(["--model", "fastcut"], batch, flip=flip)


@pytest.mark.parametrize("backend", QS_BACKENDS)
@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
@pytest.mark.parametrize("batch", [1, 2])
def test_qs_step(batch, mode, backend):
    check_step(["--model", "qs", "--qs_mode", mode, "--qs_backend", backend], batch)


@pytest.mark.parametrize("mode", OP_MODES["route"])
def test_qs_step_with_detached_attention(mode):
    check_step(["--model", "qs", "--qs_mode", mode, "--qs_detach_attention"], 1)


@pytest.mark.parametrize("mode", OP_MODES["route"])
def test_qs_step_triton_interpreted(mode):
    if NO_TRITON:
        pytest.skip(NO_TRITON)
    check_step(["--model", "qs", "--qs_mode", mode, "--qs_backend", "triton"], 1)


@pytest.mark.parametrize("argv", [["--model", "cut"], ["--model", "qs", "--qs_backend", "torch"]],
                         ids=["cut", "qs-torch"])
def test_float32_step_matches_float64_oracle(argv):
    """The trainer's own precision: float32 gradients within float32 rounding of the float64 oracle."""
    check_step(argv, 1, dtype=torch.float32, tol=3e-2)


def test_oracle_against_finite_differences():
    """The oracle's float64 gradients equal central differences of its own losses on a few parameters
    of G (at several depths), F and D, in a QS step with an identity term, or one of the one-sided
    differences: where a ReLU input lies within the step's reach of 0 (CI drew one at 7e-9 in netF, so
    that G's weights had right and left derivatives -51.84 and -51.96), the central difference averages
    two slopes, and autograd's is the one on its side of the kink."""
    model, before, d_after, draws, _, _, data = run_step(["--model", "qs", "--qs_backend", "torch"], 1)
    oracle, out, want, p, pD_after = oracle_step(model, before, d_after, draws, data)
    A, B = data["A"].double(), data["B"].double()
    gen = torch.Generator().manual_seed(0)
    picks = [("G", "model.1.weight"), ("G", "model.12.conv_block.1.weight"), ("G", "model.16.conv_block.5.weight"),
             ("G", "model.23.weight"), ("F", "mlp_4.0.weight"), ("F", "mlp_0.2.bias"), ("D", "model.3.weight")]
    eps = 1e-9  # the L2 norm of tiny initial MLP outputs curves the loss sharply: 1e-6 is too coarse
    for net, name in picks:
        flat = p[net][name].detach().flatten()
        j = int(torch.randint(0, flat.numel(), (1,), generator=gen))
        which = "loss_D" if net == "D" else "G"
        vals = []
        for delta in (eps, 0.0, -eps):
            q = {n: {k: v.detach().clone() for k, v in ps.items()} for n, ps in p.items()}
            q[net][name].view(-1)[j] += delta
            with torch.no_grad():
                vals.append(float(oracle.losses(q["G"], q["F"], q["D"], pD_after, A, B, out["keys"])[which]))
        central, right, left = (vals[0] - vals[2]) / (2 * eps), (vals[0] - vals[1]) / eps, (vals[1] - vals[2]) / eps
        g = float(want[net][name].flatten()[j])
        close = functools.partial(math.isclose, g, rel_tol=1e-4, abs_tol=1e-5)
        assert close(central) or close(left) or close(right), (net, name, j, central, left, right, g)


# ---- CycleGAN -------------------------------------------------------------------------------------


def cycle_gan_oracle(model, p, A, B, pools, gen):
    """CycleGAN's losses from the parameter dicts ``p`` {G_A, G_B, D_A, D_B} (the pre-step values: G's
    losses use the D of before the G step, D's losses the fakes of before it), LSGAN and mean L1:
    G = LS(D_A(G_A(A)), 1) + LS(D_B(G_B(B)), 1) + lA |G_B(G_A(A)) - A| + lB |G_A(G_B(B)) - B|
        + li (lB |G_A(B) - B| + lA |G_B(A) - A|);  D_A = (LS(D_A(B), 1) + LS(D_A(pool_B(G_A(A))), 0)) / 2,
    D_B likewise. ``pools`` {"A": [...], "B": [...]}: the pools' images before the step (updated)."""
    opt = model.opt

    def net(name, x):
        return _sequence(model.nets[name].model, x, p[name], "model.")

    def ls(x, t):
        return ((x - t) ** 2).mean()

    def l1(x, y):
        return (x - y).abs().mean()

    fake_B, fake_A = net("G_A", A), net("G_B", B)
    out = {"G_A": ls(net("D_A", fake_B), 1), "G_B": ls(net("D_B", fake_A), 1),
           "cycle_A": l1(net("G_B", fake_B), A) * opt.lambda_A, "cycle_B": l1(net("G_A", fake_A), B) * opt.lambda_B}
    if opt.lambda_identity > 0:
        out["idt_A"] = l1(net("G_A", B), B) * opt.lambda_B * opt.lambda_identity
        out["idt_B"] = l1(net("G_B", A), A) * opt.lambda_A * opt.lambda_identity
    out["G"] = sum(out.values())
    pooled_B, nB = pool_query(pools["B"], fake_B.detach(), opt.pool_size, gen)  # D_A's pool is queried first
    pooled_A, nA = pool_query(pools["A"], fake_A.detach(), opt.pool_size, gen)
    out["D_A"] = (ls(net("D_A", B), 1) + ls(net("D_A", pooled_B), 0)) * 0.5
    out["D_B"] = (ls(net("D_B", A), 1) + ls(net("D_B", pooled_A), 0)) * 0.5
    out["from_pool"] = nA + nB
    return out


def cycle_gan_step(argv, batch, prefill=False, dtype=F64):
    """One CycleGANModel step (``prefill``: the pools start full of random images) next to the oracle's;
    returns the options, the model's losses and gradients, the oracle's and its float64 gradients."""
    opt = options.parse(TINY + ["--model", "cycle_gan", "--batch_size", str(batch)] + argv)
    model = CycleGANModel(opt, "cpu")
    for net in model.nets.values():
        net.to(dtype)
    model.gen.manual_seed(2)
    if prefill:
        for pool in (model.pool_A, model.pool_B):
            pool.images = [torch.rand(3, opt.crop_size, opt.crop_size, dtype=dtype) * 2 - 1
                           for _ in range(opt.pool_size)]
    pools = {k: [x.double() for x in pool.images] for k, pool in (("A", model.pool_A), ("B", model.pool_B))}
    gen = torch.Generator().manual_seed(0)
    gen.set_state(model.gen.get_state())
    p = {name: {k: v.detach().double().clone().requires_grad_(True) for k, v in net.named_parameters()}
         for name, net in model.nets.items()}
    ds = SyntheticDataset(opt.seed, 8, opt.load_size, opt.crop_size)
    data = torch.utils.data.default_collate([ds[(i, 17 + 5 * i)] for i in range(batch)])
    losses = {n: getattr(model, "loss_" + n).detach() for n in model.optimize({k: data[k].to(dtype) for k in "AB"})}
    grads = {name: {k: q.grad.clone() for k, q in net.named_parameters()} for name, net in model.nets.items()}
    src, tgt = "AB" if opt.direction == "AtoB" else "BA"  # BtoA: the data's B is the source domain
    out = cycle_gan_oracle(model, p, data[src].double(), data[tgt].double(), pools, gen)
    gG = torch.autograd.grad(out["G"], [*p["G_A"].values(), *p["G_B"].values()])
    gD = torch.autograd.grad(out["D_A"] + out["D_B"], [*p["D_A"].values(), *p["D_B"].values()])
    want = {name: dict(zip(p[name], g))
            for name, g in (("G_A", gG), ("G_B", gG[len(p["G_A"]):]), ("D_A", gD), ("D_B", gD[len(p["D_A"]):]))}
    return opt, losses, grads, out, want


@pytest.mark.parametrize("batch,argv,prefill", [
    (1, [], False), (2, ["--pool_size", "2"], True), (2, ["--lambda_identity", "0", "--direction", "BtoA"], False),
    (1, ["--pool_size", "0", "--lambda_A", "3", "--lambda_B", "7", "--lambda_identity", "0.3"], False)],
    ids=["defaults", "full-pool", "no-identity-BtoA", "no-pool-weights"])
def test_cycle_gan_step(batch, argv, prefill):
    """Losses to 1e-11 and each net's gradient to 1e-9 of the float64 oracle; a full pool of 2 with a
    batch of 2 returns some pooled images in this step (the oracle's replay of the draws says so)."""
    opt, losses, grads, out, want = cycle_gan_step(argv, batch, prefill)
    assert set(losses) == {"D_A", "G_A", "cycle_A", "D_B", "G_B", "cycle_B"} | (
        {"idt_A", "idt_B"} if opt.lambda_identity > 0 else set())
    for name, value in losses.items():
        assert math.isclose(float(value), float(out[name].detach()), rel_tol=1e-11, abs_tol=1e-11), name
    assert out["from_pool"] > 0 if prefill else out["from_pool"] == 0
    assert_grads_match(grads, want, 1e-9)


def test_cycle_gan_float32_step_matches_float64_oracle():
    """The trainer's own precision: float32 gradients within float32 rounding of the float64 oracle."""
    _, losses, grads, out, want = cycle_gan_step([], 1, dtype=torch.float32)
    for name, value in losses.items():
        assert math.isclose(float(value), float(out[name].detach()), rel_tol=1e-5, abs_tol=1e-5), name
    assert_grads_match(grads, want, 3e-2)
