"""train/cycle_gan.py in the trainer (``--model cycle_gan``): CUT's defaults for the model, the image
pool (seeded, against the specification's transcription in test_step_oracle), bit-exact resume
through a full pool, CUT's checkpoint names, keys and shapes in both directions, and a run that trains,
evaluates and draws both directions. The step's losses and gradients: tests/train/test_step_oracle.py."""
import json
import os

import pytest
import torch
from PIL import Image

from qsattn_fast.train import checkpoint, networks, options, trainer
from qsattn_fast.train.cycle_gan import CycleGANModel, ImagePool

from support import ROOT
from support.training import TINY, one_thread, pool_query, read_log, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = json.load(open(ROOT / "tests" / "support" / "data" / "cut_state_dict_keys.json"))


def test_cycle_gan_defaults_are_cuts():
    """CUT's cycle_gan_model adds lambda_A 10, lambda_B 10, lambda_identity 0.5 and changes no base default
    (its set_defaults(no_dropout=True) is commented out; no_dropout is already True in CUT's base
    options); pool_size 50 and the schedule come from CUT's train options."""
    opt = options.parse(["--dataroot", "x", "--model", "cycle_gan"])
    assert (opt.lambda_A, opt.lambda_B, opt.lambda_identity, opt.pool_size, opt.no_dropout, opt.gan_mode) == \
        (10.0, 10.0, 0.5, 50, True, "lsgan")
    assert (opt.n_epochs, opt.n_epochs_decay, opt.lr, opt.beta1, opt.beta2, opt.lr_policy, opt.lr_decay_iters,
            opt.epoch_count) == (200, 200, 0.0002, 0.5, 0.999, "linear", 50, 1)
    assert (opt.netG, opt.netD, opt.n_layers_D, opt.normG, opt.normD, opt.ngf, opt.ndf, opt.init_type, opt.init_gain,
            opt.no_antialias, opt.no_antialias_up, opt.input_nc, opt.output_nc) == \
        ("resnet_9blocks", "basic", 3, "instance", "instance", 64, 64, "xavier", 0.02, False, False, 3, 3)
    assert (opt.load_size, opt.crop_size, opt.batch_size, opt.preprocess, opt.direction, opt.no_flip,
            opt.save_epoch_freq, opt.save_latest_freq, opt.display_freq, opt.print_freq) == \
        (286, 256, 1, "resize_and_crop", "AtoB", False, 5, 5000, 400, 100)
    for bad in (["--pool_size", "-1"], ["--lambda_identity", "-0.5"], ["--input_nc", "1"]):
        with pytest.raises(SystemExit):
            options.parse(["--dataroot", "x", "--model", "cycle_gan", *bad])
    assert options.parse(["--dataroot", "x", "--model", "cycle_gan", "--input_nc", "1", "--lambda_identity", "0"])


def test_image_pool_follows_its_specification():
    """Seeded: the same outputs, stored images and generator state as the transcription for batches of
    1-3 through filling and full phases (both branches taken); the state round trip continues the
    same; size 0 hands the batch back detached; the pool keeps copies, not views of the caller's tensor."""
    gen, ref_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    pool, stored = ImagePool(3, gen), []
    taken = 0
    for step in range(12):
        x = torch.randn(1 + step % 3, 2, 4, 4, requires_grad=True)
        got = pool.query(x)
        want, n = pool_query(stored, x.detach(), 3, ref_gen)
        taken += n
        assert not got.requires_grad and torch.equal(got, want), step
        assert len(pool.images) == len(stored) and all(torch.equal(a, b) for a, b in zip(pool.images, stored))
        assert torch.equal(gen.get_state(), ref_gen.get_state())
    assert 0 < taken < 18  # 21 images, 3 fill the pool: both branches occurred
    x = torch.randn(1, 2, 4, 4)
    x_ref, fresh = x.clone(), ImagePool(2, gen)
    fresh.query(x)
    x.add_(1)  # the caller's tensor changes later: what the pool keeps must not
    assert torch.equal(fresh.images[0], x_ref[0])
    restored = ImagePool(3, torch.Generator())
    restored.load_state(pool.state(), "cpu")
    restored.gen.set_state(gen.get_state())
    y = torch.randn(3, 2, 4, 4)
    assert torch.equal(restored.query(y), pool.query(y))
    with pytest.raises(ValueError, match="more than --pool_size 2"):
        ImagePool(2, gen).load_state(torch.zeros(3, 2, 4, 4), "cpu")
    z = torch.randn(2, 2, 4, 4, requires_grad=True)
    none = ImagePool(0, gen)
    assert torch.equal(none.query(z), z) and not none.query(z).requires_grad and none.state().numel() == 0


def test_resume_is_exact(tmp_path):
    """5 uninterrupted steps vs 3 + --continue_train to 5, with a pool of 2 that is full from step 2
    on: steps 4 and 5 log the same losses bit for bit (the pools' images and generator are in the
    resume state), and all four nets end equal."""
    extra = ["--model", "cycle_gan", "--pool_size", "2", "--seed", "5"]
    assert trainer.main(tiny(tmp_path, *extra, "--max_steps", "5", name="full")) == 0
    assert trainer.main(tiny(tmp_path, *extra, "--max_steps", "3", name="cut")) == 0
    state = torch.load(tmp_path / "cut" / "latest_state.pth", weights_only=True)
    assert (state["step"], state["pool_A"].shape, state["pool_B"].shape) == (3, (2, 3, 32, 32), (2, 3, 32, 32))
    assert trainer.main(tiny(tmp_path, *extra, "--max_steps", "5", "--continue_train", name="cut")) == 0
    full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(full, resumed):
        assert a["losses"] == b["losses"] and a["lr"] == b["lr"], a["step"]
    assert full[4]["lr"] < full[3]["lr"]
    for name in ("G_A", "G_B", "D_A", "D_B"):
        a, b = (torch.load(tmp_path / run / f"latest_net_{name}.pth", weights_only=True) for run in ("full", "cut"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def _shapes(sd):
    return {k: list(v.shape) for k, v in sd.items()}


def test_checkpoints_are_cuts_both_ways(tmp_path):
    """With CUT's network defaults, the four files have CUT's names and exactly the keys and shapes of
    CUT's generator / discriminator (tests/support/data); files written from that key list alone (as CUT's
    save_networks would) load into --continue_train with the values used."""
    net_flags = ["--ngf", "64", "--ndf", "64", "--netG", "resnet_9blocks"]
    t = trainer.Trainer(options.parse(tiny(tmp_path, "--model", "cycle_gan", *net_flags)))
    t.save("latest")
    files = KEYS["cycle_gan"]["files"]
    assert {f for f in os.listdir(tmp_path / "run") if "_net_" in f} == set(files) | {"latest_net_G_A_ema.pth"}
    cut_dir = tmp_path / "cut_run"
    cut_dir.mkdir()
    written = {}
    for f, which in files.items():
        assert _shapes(checkpoint.load_state_dict_file(str(tmp_path / "run" / f))) == KEYS[which], f
        written[f] = {k: torch.randn(s) for k, s in KEYS[which].items()}
        torch.save(written[f], cut_dir / f)
    resumed = trainer.Trainer(options.parse(tiny(tmp_path, "--model", "cycle_gan", *net_flags, "--continue_train",
                                                 "--pretrained_name", "cut_run", name="run2")))
    for f in files:
        net = resumed.model.nets[f[len("latest_net_"):-len(".pth")]]
        assert all(torch.equal(v, written[f][k]) for k, v in net.state_dict().items()), f


def test_trains_evaluates_and_draws_both_directions(tmp_path):
    """Two tiny epochs with --eval_freq 1: CUT's loss names are logged, the test split is evaluated
    twice with G_A (best_net_G_A.pth, no best_net_G.pth), and sample grids have eight columns (real A |
    fake B | rec A | idt B | real B | fake A | rec B | idt A); without the identity loss, six columns and
    no idt losses."""
    argv = tiny(tmp_path, "--model", "cycle_gan", "--eval_freq", "1", "--eval_num_test", "3",
                "--eval_metrics", "synthetic,swd", "--display_freq", "4")
    assert trainer.main(argv) == 0
    run = tmp_path / "run"
    log = read_log(run)
    assert len(log) == 8 and list(log[0]["losses"]) == list(CycleGANModel.LOSS_NAMES)
    evals = [json.loads(line) for line in open(run / trainer.EVAL_LOG)]
    assert [e["epoch"] for e in evals] == [1, 2] and {"swd", "background_error"} <= set(evals[-1]["metrics"])
    names = set(os.listdir(run))
    assert "best_net_G_A.pth" in names and "best_net_G.pth" not in names
    best = torch.load(run / "best_net_G_A.pth", weights_only=True)
    assert _shapes(best) == _shapes(torch.load(run / "latest_net_G_A.pth", weights_only=True))
    assert Image.open(run / "samples" / "epoch002_step0000008.png").size == (8 * 130 + 2, 20 + 130 + 2)
    argv = tiny(tmp_path, "--model", "cycle_gan", "--lambda_identity", "0", "--max_steps", "1", "--display_freq", "1",
                name="no_idt")
    assert trainer.main(argv) == 0
    assert list(read_log(tmp_path / "no_idt")[0]["losses"]) == ["D_A", "G_A", "cycle_A", "D_B", "G_B", "cycle_B"]
    assert Image.open(tmp_path / "no_idt" / "samples" / "epoch001_step0000001.png").size == (6 * 130 + 2, 20 + 130 + 2)


def test_model_builds_cuts_networks():
    """G_A: input_nc -> output_nc, G_B: output_nc -> input_nc, D_A on output_nc, D_B on input_nc channels;
    no dropout by default; one Adam over both Gs and one over both Ds."""
    opt = options.parse(TINY + ["--model", "cycle_gan", "--input_nc", "1", "--lambda_identity", "0"])
    m = CycleGANModel(opt, "cpu")
    assert (m.netG_A.model[1].in_channels, m.netG_B.model[1].in_channels) == (1, 3)
    assert (m.netD_A.model[0].in_channels, m.netD_B.model[0].in_channels) == (3, 1)
    assert not any(isinstance(x, torch.nn.Dropout) for net in m.nets.values() for x in net.modules())
    n_g = len(list(m.netG_A.parameters())) + len(list(m.netG_B.parameters()))
    assert len(m.optimizers["G"].param_groups[0]["params"]) == n_g and set(m.optimizers) == {"G", "D"}
    assert isinstance(m.netD_A, networks.NLayerDiscriminator)
