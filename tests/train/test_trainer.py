"""train/trainer.py, model.py, options.py: CUT's defaults, QS-Attn backends agreeing on a training step,
exact resume, the demo path, stop signals, non-finite losses, saves cut short or failing, and two-process
gloo runs under torchrun."""
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from qsattn_fast import OP_MODES
from qsattn_fast.train import checkpoint as ckpt, options, trainer
from qsattn_fast.train.data import SyntheticDataset
from qsattn_fast.train.model import GANModel, QSAttnModel, lr_factor
from qsattn_fast.train.models import MODELS, create_model

from support import ROOT
from support.numerics import rel_err
from support.training import TINY, one_thread, read_log, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SUPPORT = str(ROOT / "tests" / "support")


def test_option_choices_come_from_the_modules_that_check_them():
    """qsattn-train's choice lists are the tuples the networks, data, model and init code check against."""
    from qsattn_fast.sampler import INIT_TYPES
    from qsattn_fast.train import data, model, networks
    acts = {a.dest: a for a in options.build_parser()._actions}
    assert list(acts["netG"].choices) == list(networks.GENERATOR_BLOCKS)
    assert acts["netD"].choices == networks.DISCRIMINATORS
    assert acts["normG"].choices == acts["normD"].choices == networks.NORMS
    assert acts["gan_mode"].choices == networks.GANLoss.MODES and acts["init_type"].choices == INIT_TYPES
    assert acts["preprocess"].choices == data.PREPROCESS and acts["dataset_mode"].choices == data.DATASET_MODES
    assert acts["lr_policy"].choices == model.LR_POLICIES and acts["nonfinite"].choices == model.NONFINITE_POLICIES


def test_cut_defaults_and_model_defaults():
    opt = options.parse(["--dataroot", "x"])
    assert (opt.model, opt.load_size, opt.crop_size, opt.n_epochs, opt.n_epochs_decay, opt.lr, opt.beta1,
            opt.beta2, opt.num_patches, opt.netF_nc, opt.nce_T, opt.nce_layers, opt.gan_mode, opt.ngf, opt.ndf,
            opt.netG, opt.normG, opt.init_type, opt.init_gain, opt.batch_size, opt.gpu_ids) == \
        ("cut", 286, 256, 200, 200, 0.0002, 0.5, 0.999, 256, 256, 0.07, "0,4,8,12,16", "lsgan", 64, 64,
         "resnet_9blocks", "instance", "xavier", 0.02, 1, "auto")
    assert opt.nce_idt is True and opt.lambda_NCE == 1.0 and opt.flip_equivariance is False
    fast = options.parse(["--dataroot", "x", "--model", "fastcut"])
    assert (fast.nce_idt, fast.lambda_NCE, fast.flip_equivariance, fast.n_epochs, fast.n_epochs_decay) == \
        (False, 10.0, True, 150, 50)
    assert options.parse(["--dataroot", "x", "--CUT_mode", "FastCUT"]).model == "fastcut"
    qs = options.parse(["--dataroot", "x", "--model", "qs", "--QS_mode", "local", "--nce_idt", "false"])
    assert (qs.qs_mode, qs.nce_idt, qs.qs_backend) == ("local", False, "auto")
    with pytest.raises(SystemExit):
        options.parse(["--dataroot", "x", "--qs_layers", "3"])
    with pytest.raises(SystemExit):
        options.parse([])  # no --dataroot


def test_qs_layers_map_to_sampler_positions():
    base = ["--dataroot", "x", "--model", "qs"]

    def positions(argv):
        opt = options.parse(argv)
        return MODELS[opt.model].qs_layer_positions(opt)
    assert positions(base) is None  # the sampler's default: the last two
    assert positions(base + ["--qs_layers", "8,16"]) == (2, 4)
    assert positions(["--dataroot", "x", "--model", "cut", "--qs_layers", "16"]) == ()
    assert positions(base + ["--qs_layers", "all"]) == (0, 1, 2, 3, 4)
    assert positions(base + ["--qs_layers", "all", "--nce_layers", "4,16"]) == (0, 1)
    for bad in (["--qs_layers", "al"], ["--nce_layers", "0,x"]):
        with pytest.raises(SystemExit):
            options.parse(base + bad)
    with pytest.raises(ValueError, match="bf16"):
        trainer.Trainer(options.parse(TINY + ["--bf16"]))


def test_linear_lr_schedule_is_cuts():
    opt = options.parse(["--dataroot", "x", "--n_epochs", "3", "--n_epochs_decay", "4"])
    assert [lr_factor(opt, e) for e in range(1, 8)] == [1, 1, 1, 0.8, 0.6, 0.4, 0.19999999999999996]


def _one_step(opt, seed=3):
    torch.manual_seed(seed)
    model = create_model(opt, "cpu")
    ds = SyntheticDataset(opt.seed, 4, opt.load_size, opt.crop_size)
    batch = torch.utils.data.default_collate([ds[(0, 11)], ds[(1, 12)]])
    losses = model.optimize(batch)
    grads = {k: p.grad.clone() for k, p in model.netG.named_parameters()}
    return losses, model.last_patch_ids, grads


@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_reference_and_torch_backends_give_the_same_step(tmp_path, mode):
    """One training step (batch 2) with --qs_backend reference and torch from the same seed: equal losses
    (1e-4 relative), the same selected queries on the QS layers, the same generator gradients."""
    runs = {}
    for backend in ("reference", "torch"):
        opt = options.parse(tiny(tmp_path, "--model", "qs", "--qs_mode", mode, "--qs_backend", backend))
        runs[backend] = _one_step(opt)
    (l_ref, ids_ref, g_ref), (l_t, ids_t, g_t) = runs["reference"], runs["torch"]
    assert l_ref.keys() == l_t.keys() and "NCE_Y" in l_ref
    for k in l_ref:
        assert torch.allclose(l_t[k], l_ref[k], rtol=1e-4, atol=1e-6), k
    assert len(ids_ref) == 5
    for i in (3, 4):  # the QS layers: (B, k) selected queries per image
        assert ids_ref[i].shape == (2, 16) and torch.equal(ids_ref[i], ids_t[i])
    for i in (0, 1, 2):  # random layers: shared ids from the same seed
        assert torch.equal(ids_ref[i], ids_t[i])
    # conv biases before an instance norm have a zero true gradient: compare those in the whole vector
    for k in [k for k in g_ref if k.endswith("weight")]:
        assert rel_err(g_t[k], g_ref[k]) < 1e-3, k
    assert rel_err(torch.cat([g.flatten() for g in g_t.values()]),
                   torch.cat([g.flatten() for g in g_ref.values()])) < 1e-3


def test_cut_model_uses_random_patches_everywhere(tmp_path):
    opt = options.parse(tiny(tmp_path, "--model", "cut"))
    losses, ids, _ = _one_step(opt)
    assert all(t.dim() == 1 and t.numel() == 16 for t in ids)
    assert all(torch.isfinite(v) for v in losses.values())


def test_resume_is_exact(tmp_path):
    """5 uninterrupted steps vs 3 steps + --continue_train to 5: steps 4 and 5 log the same losses
    bit for bit (crossing an epoch boundary: 4 steps per epoch, the LR decays in epoch 2)."""
    extra = ["--model", "qs", "--qs_backend", "torch", "--flip_equivariance", "--seed", "5"]
    assert trainer.main(tiny(tmp_path, *extra, "--max_steps", "5", name="full")) == 0
    assert trainer.main(tiny(tmp_path, *extra, "--max_steps", "3", name="cut")) == 0
    state = torch.load(tmp_path / "cut" / "latest_state.pth", weights_only=True)
    assert (state["epoch"], state["epoch_iter"], state["step"]) == (1, 3, 3)
    assert trainer.main(tiny(tmp_path, *extra, "--max_steps", "5", "--continue_train", name="cut")) == 0
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    full = read_log(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5] and full[4]["lr"] < full[3]["lr"]


def _assert_same_run(full, resumed):
    """Two experiment folders hold the same run bit for bit: every logged step's losses, learning rate
    and epoch, and the latest networks, the EMA generator's too."""
    a, b = read_log(full), read_log(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert (x["losses"], x["lr"], x["epoch"]) == (y["losses"], y["lr"], y["epoch"]), x["step"]
    for name in ("G", "F", "D", "G_ema"):
        na, nb = (ckpt.load_state_dict_file(ckpt.net_path(str(d), "latest", name)) for d in (full, resumed))
        assert na.keys() == nb.keys() and all(torch.equal(na[k], nb[k]) for k in na), name


def test_continue_from_weights_without_state(tmp_path):
    """A CUT checkpoint folder (nets only, no resume state) is loaded and training starts at --epoch_count."""
    assert trainer.main(tiny(tmp_path, "--max_steps", "1", name="a")) == 0
    os.remove(tmp_path / "a" / "latest_state.pth")
    t = trainer.Trainer(options.parse(tiny(tmp_path, "--continue_train", "--epoch_count", "2", name="a")))
    saved = torch.load(tmp_path / "a" / "latest_net_G.pth", weights_only=True)
    assert t.epoch == 2 and all(torch.equal(v, saved[k]) for k, v in t.model.netG.state_dict().items())


def test_ema_is_the_warmed_up_average_of_g(tmp_path):
    """The EMA generator follows G as ema <- d ema + (1 - d) G with d = min(ema_decay, (1 + t) / (10 + t))
    at update t (checked against that recursion on G's own weights after every step), and evaluation
    would use it; --ema_decay 0 keeps none and writes no file."""
    t = trainer.Trainer(options.parse(tiny(tmp_path, "--ema_decay", "0.5", "--max_steps", "4")))
    model, expect = t.model, {k: v.clone() for k, v in t.model.netG.state_dict().items()}
    optimize = model.optimize

    def step_and_average(batch):
        losses = optimize(batch)
        d = min(0.5, (1 + model.ema_updates) / (10 + model.ema_updates))
        for k, v in model.netG.state_dict().items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        return losses

    model.optimize = step_and_average
    assert t.run() == 0 and model.ema_updates == 4 and model.translator() is model.ema
    ema = model.ema.state_dict()
    assert all(torch.allclose(ema[k], expect[k], rtol=0, atol=1e-6) for k in ema)
    saved = ckpt.load_state_dict_file(ckpt.net_path(str(tmp_path / "run"), "latest", "G_ema"))
    assert all(torch.equal(saved[k], ema[k].cpu()) for k in ema)
    off = trainer.Trainer(options.parse(tiny(tmp_path, "--ema_decay", "0", "--max_steps", "1", name="off")))
    assert off.run() == 0 and off.model.ema is None and off.model.translator() is off.model.netG
    assert not os.path.exists(tmp_path / "off" / "latest_net_G_ema.pth")


def test_continuing_a_checkpoint_without_ema_weights_starts_them_from_g(tmp_path, capsys):
    """CUT's checkpoints (no _ema file): the EMA generator starts from the loaded G, and says so."""
    assert trainer.main(tiny(tmp_path, "--max_steps", "1", "--ema_decay", "0", name="a")) == 0
    t = trainer.Trainer(options.parse(tiny(tmp_path, "--continue_train", name="a")))
    saved = torch.load(tmp_path / "a" / "latest_net_G.pth", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in t.model.ema.state_dict().items())
    assert "the EMA generator starts from the loaded G" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        options.parse(tiny(tmp_path, "--ema_decay", "1"))


def test_demo_path_tiny(tmp_path, capsys):
    """--demo with tiny overrides runs to the end, leaves checkpoints, sample grids and the loss plot, evaluates
    the held-out pairs after the last epoch (the demo's eval_freq) and prints the two synthetic measures with
    the grid of test translations."""
    argv = ["--demo", "--checkpoints_dir", str(tmp_path), "--synthetic_size", "3", "--load_size", "36",
            "--crop_size", "32", "--ngf", "8", "--ndf", "8", "--num_patches", "16", "--netF_nc", "16",
            "--n_epochs", "1", "--n_epochs_decay", "1", "--display_freq", "2", "--save_epoch_freq", "1",
            "--eval_num_test", "5"]
    opt = options.parse(argv)
    assert (opt.model, opt.normG, opt.eval_freq, opt.eval_metrics) == ("qs", "none", 10, "synthetic,swd")
    assert trainer.main(argv) == 0
    run = tmp_path / "demo"
    names = set(os.listdir(run))
    for which in ("latest", "1", "2"):
        assert {f"{which}_net_G.pth", f"{which}_net_F.pth", f"{which}_net_D.pth", f"{which}_state.pth"} <= names
    assert {"loss_log.jsonl", "loss_plot.png", "opt.json", "eval_log.jsonl"} <= names
    samples = sorted(os.listdir(run / "samples"))
    assert len(samples) == 5  # steps 2, 4, 6 of 6, and the selection and test translations after the last epoch
    grid = Image.open(run / "samples" / samples[-3])
    assert grid.size == (4 * 130 + 2, 20 + 130 + 2)  # real A | fake B | real B | idt B: 32 px x 4, 2-px gaps, header
    assert samples[-1] == "test_epoch002.png"
    assert Image.open(run / "samples" / samples[-1]).size == (3 * 130 + 2, 20 + 5 * 130 + 2)  # 5 items, 3 columns
    assert samples[-2] == "selection_epoch002.png"   # image | global entropy, for layers 12 and 16
    assert Image.open(run / "samples" / samples[-2]).size == (2 * 420, 2 * 360)
    assert Image.open(run / "loss_plot.png").size == (1200, 300)   # D, G and NCE losses
    assert json.load(open(run / "opt.json"))["model"] == "qs"
    out = capsys.readouterr().out
    assert "done" in out and "held-out test split (5 synthetic pairs, 32x32) after epoch 2" in out
    assert "shape_iou" in out and "background_error" in out and str(run / "samples" / "test_epoch002.png") in out
    assert "demo target >= 0.85" in out   # the demo's hook in the trainer's summary


def test_a_stop_signal_saves_and_exits_128_plus_its_number(tmp_path):
    t = trainer.Trainer(options.parse(tiny(tmp_path)))
    t._on_signal(signal.SIGTERM, None)
    assert t.run() == 143
    assert t.step == 1 and os.path.exists(tmp_path / "run" / "latest_net_G.pth")
    state = torch.load(tmp_path / "run" / "latest_state.pth", weights_only=True)
    assert state["step"] == 1


def _started(cmd, log, env=None):
    """``cmd`` started in a session of its own, once ``log`` (a loss log) holds two steps."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_real_stop_signal_saves_and_the_resumed_run_is_exact(tmp_path, sig):
    """SIGINT, SIGTERM or SIGUSR1 sent to a running qsattn-train and its data-loading worker (the process
    group, as a terminal or SLURM signals): it finishes the step, saves latest_* and exits 128 + the
    signal's number (the worker ignores it); --continue_train then ends bit-identical to a run never
    stopped (without the worker: the data do not depend on it)."""
    argv = ["--n_epochs", "1000", "--torch_threads", "1"]
    proc = _started([sys.executable, "-m", "qsattn_fast.train.trainer",
                     *tiny(tmp_path, *argv, "--num_threads", "1", name="cut")], tmp_path / "cut" / trainer.LOG_NAME)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert err.count(f"{sig.name}, saving after this step") == 1 and f"stopped by {sig.name}" in err
    assert "Traceback" not in err
    step = torch.load(tmp_path / "cut" / "latest_state.pth", weights_only=True)["step"]
    assert step >= 2 and step == read_log(tmp_path / "cut")[-1]["step"]
    end = ["--max_steps", str(step + 2)]
    assert trainer.main(tiny(tmp_path, *argv, *end, "--continue_train", name="cut")) == 0
    assert trainer.main(tiny(tmp_path, *argv, *end, name="full")) == 0
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("second,after", [(signal.SIGINT, 0.0), (signal.SIGUSR1, trainer.REPEAT_S)])
def test_a_second_stop_signal_aborts_at_once(tmp_path, monkeypatch, capsys, second, after):
    """The first signal asks for a stop after the step; the same one again at once is the same request
    (a scheduler's and torchrun's copies); a second one (another signal, or the same later) restores its
    default action and raises it: the process ends as killed by that signal, nothing saved."""
    t = trainer.Trainer(options.parse(tiny(tmp_path)))
    raised, handlers, now = [], {}, [100.0]
    monkeypatch.setattr(trainer.signal, "raise_signal", raised.append)
    monkeypatch.setattr(trainer.signal, "signal", handlers.__setitem__)
    monkeypatch.setattr(trainer.time, "monotonic", lambda: now[0])
    t._on_signal(signal.SIGUSR1, None)
    now[0] += trainer.REPEAT_S / 2
    t._on_signal(signal.SIGUSR1, None)
    assert t.stop_signal == signal.SIGUSR1 and raised == [] and handlers == {}
    now[0] += after
    t._on_signal(second, None)
    assert raised == [second] and handlers == {second: signal.SIG_DFL}
    assert f"{second.name} again, aborting without saving" in capsys.readouterr().err
    assert not (tmp_path / "run" / "latest_state.pth").exists()


class _Crash(BaseException):
    """A process killed in the middle of a save: no except clause runs."""


def _crash_after(monkeypatch, n):
    """Crash a save after its n-th file written or renamed (os.replace, patched everywhere)."""
    done = []

    def counted(act):
        def f(*args):
            act(*args)
            done.append(args)
            if len(done) == n:
                raise _Crash
        return f
    monkeypatch.setattr(ckpt, "_write", counted(ckpt._write))
    monkeypatch.setattr(ckpt.os, "replace", counted(os.replace))


def _snapshot(t):
    """Every network's and optimiser's tensors of Trainer ``t``, by name."""
    nets = {f"{n}.{k}": v for n, net in t.model.checkpoint_nets.items() for k, v in net.state_dict().items()}
    return nets | {f"{n}.{i}.{k}": v for n, o in t.model.optimizers.items()
                   for i, st in o.state_dict()["state"].items() for k, v in st.items()}


def test_a_save_cut_short_anywhere_resumes_from_one_whole_checkpoint(tmp_path, monkeypatch):
    """The save of step 2 cut short after each of its files (D, F, G, G_ema, state), its commit and each of
    the moves in turn: --continue_train resumes step 1's checkpoint (before the commit) or step 2's
    (after), whole: every network and optimiser tensor equals that step's; nothing of the cut save is
    left."""
    resume = ["--max_steps", "2", "--continue_train"]
    assert trainer.main(tiny(tmp_path, "--max_steps", "1", name="base")) == 0
    shutil.copytree(tmp_path / "base", tmp_path / "whole")
    assert trainer.main(tiny(tmp_path, *resume, name="whole")) == 0
    expect = {step: _snapshot(trainer.Trainer(options.parse(tiny(tmp_path, "--continue_train", name=run))))
              for step, run in ((1, "base"), (2, "whole"))}
    files = len([f for f in os.listdir(tmp_path / "base") if f.startswith("latest_")])
    assert files == 5
    for n in range(1, 2 * files + 2):
        run = f"cut{n}"
        shutil.copytree(tmp_path / "base", tmp_path / run)
        with monkeypatch.context() as m:
            _crash_after(m, n)
            with pytest.raises(_Crash):
                trainer.main(tiny(tmp_path, *resume, name=run))
        t = trainer.Trainer(options.parse(tiny(tmp_path, "--continue_train", name=run)))
        assert t.step == (1 if n <= files else 2), n
        got, want = _snapshot(t), expect[t.step]
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), n
        assert not [e for e in os.listdir(tmp_path / run) if e.startswith(".")], n


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    assert trainer.main(tiny(tmp_path, "--max_steps", "1")) == 0

    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt, "_write", full)
    assert trainer.main(tiny(tmp_path, "--max_steps", "2", "--continue_train")) == 2
    _one_line_error(capsys, "cannot write latest", os.strerror(errno.ENOSPC), "intact")
    monkeypatch.undo()
    assert trainer.Trainer(options.parse(tiny(tmp_path, "--continue_train"))).step == 1


def _poison(monkeypatch, step):
    """A NaN in real A from this process's training step ``step`` (counted from 1) on that step only."""
    set_input, seen = GANModel.set_input, []

    def poisoned(self, batch):
        set_input(self, batch)
        seen.append(1)
        if len(seen) == step:
            self.real_A = self.real_A * math.nan
    monkeypatch.setattr(GANModel, "set_input", poisoned)


def _assert_finite_files(run):
    """No .pth file in the folder ``run`` holds a non-finite tensor; returns their names."""
    names = sorted(p.name for p in run.glob("*.pth"))
    for name in names:
        assert ckpt.first_nonfinite(torch.load(run / name, weights_only=True)) is None, name
    return names


@pytest.mark.parametrize("freqs,kept", [(["--save_latest_freq", "1", "--print_freq", "2"], "latest_* (step 2)"),
                                        (["--print_freq", "1000"], "no checkpoint was written")])
def test_nonfinite_stop_names_the_first_bad_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                     freqs, kept):
    """A NaN entering step 3: exit 3 with one line naming step 3 and its non-finite losses, whether the
    next boundary is that step's save or the epoch's end at step 4; nothing saved after step 2."""
    _poison(monkeypatch, 3)
    assert trainer.main(tiny(tmp_path, *freqs)) == trainer.EXIT_NONFINITE
    assert "D_real" not in _one_line_error(capsys, "non-finite loss at step 3 (", "D_fake nan", kept)
    assert _assert_finite_files(tmp_path / "run") == (["latest_net_D.pth", "latest_net_F.pth", "latest_net_G.pth",
                                                        "latest_net_G_ema.pth", "latest_state.pth"]
                                                       if "step 2" in kept else [])
    if "step 2" in kept:
        assert torch.load(tmp_path / "run" / "latest_state.pth", weights_only=True)["step"] == 2


def test_nonfinite_skip_skips_those_updates_and_counts_them(tmp_path, monkeypatch):
    """--nonfinite skip, a NaN entering step 3 of 8: no optimiser steps on it (Adam counts 7, and so does
    the EMA generator), the run ends normally, the log counts the skipped step from step 3 on, every
    checkpoint is finite."""
    _poison(monkeypatch, 3)
    assert trainer.main(tiny(tmp_path, "--nonfinite", "skip")) == 0
    log = read_log(tmp_path / "run")
    assert [r["skipped"] for r in log] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert [math.isnan(r["losses"]["G"]) for r in log] == [False, False, True] + [False] * 5
    state = torch.load(tmp_path / "run" / "latest_state.pth", weights_only=True)
    assert {float(s["step"]) for o in state["optimizers"].values() for s in o["state"].values()} == {7.0}
    assert state["ema_updates"] == 7
    assert len(_assert_finite_files(tmp_path / "run")) == 10   # latest and epoch 2: D, F, G, G_ema, state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_nonfinite_watch_adds_no_host_sync_per_step_on_a_gpu(tmp_path):
    """--nonfinite stop on a GPU: noting a step's losses (finite or not) and deciding whether to stop
    synchronise nothing; the flag is read at the next boundary."""
    t = trainer.Trainer(options.parse(tiny(tmp_path, "--gpu_ids", "0")))
    losses = t.model.optimize(torch.utils.data.default_collate([t.dataset[(0, 11)]]))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t.step in (1, 2):
            t._watch(losses if t.step == 1 else {k: v * math.nan for k, v in losses.items()}, False)
            assert t._stop_code() is None
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ckpt.NonFiniteError, match="non-finite loss at step 2"):
        t._guard()


@pytest.mark.parametrize("mode,needle", [("stop", "non-finite loss at step 1 ("), ("skip", "3 steps in a row")])
def test_a_diverging_run_exits_3_with_one_line_and_no_non_finite_file(tmp_path, capsys, mode, needle):
    """--lr 1e25 diverges at once: stop ends at the first step, skip after --nonfinite_patience skipped
    steps in a row; one line, and no checkpoint holds a non-finite tensor."""
    argv = tiny(tmp_path, "--lr", "1e25", "--save_latest_freq", "1", "--nonfinite", mode, "--nonfinite_patience", "3")
    assert trainer.main(argv) == trainer.EXIT_NONFINITE
    _one_line_error(capsys, needle)
    _assert_finite_files(tmp_path / "run")


def test_cpu_run_never_touches_cuda(tmp_path, monkeypatch):
    def boom(name):
        def f(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} called with --gpu_ids -1")
        return f
    for name in ("is_available", "_lazy_init", "get_rng_state", "set_device", "synchronize", "device_count"):
        monkeypatch.setattr(torch.cuda, name, boom(name))
    assert trainer.main(tiny(tmp_path, "--model", "qs", "--max_steps", "2", "--save_latest_freq", "1")) == 0
    assert trainer.main(tiny(tmp_path, "--model", "qs", "--max_steps", "3", "--continue_train")) == 0


def test_bad_dataroot_and_cuda_request(tmp_path, capsys):
    """The library raises; qsattn-train turns it into exit code 2 and the message."""
    (tmp_path / "trainA").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "trainA" / "a.png")
    with pytest.raises(FileNotFoundError, match="trainB"):
        trainer.Trainer(options.parse(tiny(tmp_path, "--dataset_mode", "unaligned", "--dataroot", str(tmp_path))))
    assert trainer.main(tiny(tmp_path, "--dataset_mode", "unaligned", "--dataroot", str(tmp_path))) == 2
    assert "trainB" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert trainer.main(tiny(tmp_path, "--gpu_ids", "0")) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert trainer.training_device("-1").type == "cpu"


def test_gpu_ids_auto_takes_the_cpu_without_cuda_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a for a in tiny(tmp_path, "--max_steps", "1") if a not in ("--gpu_ids", "-1")]
    assert options.parse(argv).gpu_ids == "auto" and trainer.main(argv) == 0
    assert "qsattn-train: training on cpu (CPU; --gpu_ids auto)" in capsys.readouterr().err


def _folders(root, n=3, size=40):
    """<root>/trainA and trainB with n random PNGs each."""
    rng = np.random.default_rng(0)
    for d in ("trainA", "trainB"):
        (root / d).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / d / f"{i}.png")
    return root


def _one_line_error(capsys, *needles):
    """The one error line on stderr, which holds every needle (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err and all(n in lines[0] for n in needles), err
    return lines[0]


def test_every_usage_and_path_error_is_one_line_and_exit_2(tmp_path, capsys):
    """No folder is created before the options and the data are validated."""
    data = _folders(tmp_path / "data")
    cases = [(["--dataset_mode", "unaligned", "--dataroot", str(tmp_path / "none")], "not a folder"),
             (["--dataset_mode", "unaligned"], "--dataroot is required"),
             (["--netG", "unet"], "invalid choice"), (["--batch_size", "0"], "--batch_size"),
             (["--dataset_mode", "unaligned", "--dataroot", str(data), "--eval_freq", "1"], "testA"),
             (["--eval_freq", "1", "--eval_metrics", "lpips"], "lpips"),
             (["--continue_train"], "checkpoint")]
    for argv, needle in cases:
        try:
            rc = trainer.main(tiny(tmp_path / "ck", *argv))
        except SystemExit as e:   # argparse's usage errors
            rc = e.code
        assert rc == 2, argv
        _one_line_error(capsys, needle)
        assert not (tmp_path / "ck").exists(), argv


def test_a_corrupt_training_image_is_refused_at_start_or_skipped(tmp_path, capsys):
    data = _folders(tmp_path / "data")
    (data / "trainA" / "x.png").write_text("text, not an image")
    argv = tiny(tmp_path / "ck", "--dataset_mode", "unaligned", "--dataroot", str(data), "--max_steps", "2")
    assert trainer.main(argv) == 2
    _one_line_error(capsys, "x.png", "--skip_bad_images", "1 of 4 images")
    assert not (tmp_path / "ck").exists()
    assert trainer.main(argv + ["--skip_bad_images"]) == 0
    err = capsys.readouterr().err
    assert "skipping 1 unreadable images" in err and "x.png" in err
    assert (tmp_path / "ck" / "run" / "latest_net_G.pth").exists()


def test_an_image_failing_mid_run_saves_the_steps_done(tmp_path, capsys):
    """A JPEG truncated after its header passes the start's verification and fails when decoded: the
    run stops with one line and exit 2, and the finished steps are saved as latest (resumable)."""
    data = _folders(tmp_path / "data", n=2)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (data / "trainA" / "z.jpg").write_bytes(raw[: len(raw) // 3])
    argv = tiny(tmp_path / "ck", "--dataset_mode", "unaligned", "--dataroot", str(data), "--serial_batches",
                "--n_epochs_decay", "0")
    assert trainer.main(argv) == 2
    _one_line_error(capsys, "z.jpg", "--continue_train", "after step 2")
    state = torch.load(tmp_path / "ck" / "run" / "latest_state.pth", weights_only=True)
    assert state["step"] == 2 and state["epoch_iter"] == 2


def test_failed_construction_leaves_the_process_group(tmp_path, monkeypatch, capsys):
    """A rank whose Trainer fails after joining the process group (here: a bad dataroot) leaves it
    before exiting with 2, as a finished run does."""
    group = []
    monkeypatch.setattr(trainer.dist, "is_initialized", lambda: bool(group))
    monkeypatch.setattr(trainer.dist, "init_process_group", lambda backend: group.append(backend))
    monkeypatch.setattr(trainer.dist, "destroy_process_group", group.clear)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert trainer.main(tiny(tmp_path, "--dataset_mode", "unaligned", "--dataroot", str(tmp_path / "none"))) == 2
    assert "not a folder" in capsys.readouterr().err
    assert group == []


def _torchrun(tmp_path, *argv):
    """``python -m torch.distributed.run`` of tests/support/ddp_worker.py on 2 processes with the tiny
    ``argv``: (command, environment, the worker's output folder)."""
    out = tmp_path / "ranks"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(SUPPORT, "ddp_worker.py"), str(out), *tiny(tmp_path, *argv)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SUPPORT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return cmd, env, out


@pytest.mark.parametrize("model,loss", [("qs", "NCE"), ("cycle_gan", "cycle_A")])
def test_two_process_gloo_ddp(tmp_path, model, loss):
    """torchrun --nproc_per_node 2 (as ``python -m torch.distributed.run``): both processes end with
    identical weights (averaged gradients, broadcast start) that moved from the start, and identical EMA
    weights, which differ from both; rank 0 wrote the checkpoints and the log, whose losses are the mean
    of the two ranks' own."""
    cmd, env, out = _torchrun(tmp_path, "--model", model, "--qs_backend", "torch", "--max_steps", "2")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    g0, g1 = (torch.load(out / f"G{r}.pth", weights_only=True) for r in (0, 1))
    start = torch.load(out / "G_start0.pth", weights_only=True)
    assert all(torch.equal(g0[k], g1[k]) for k in g0)
    assert any(not torch.equal(g0[k], start[k]) for k in g0)
    e0, e1 = (torch.load(out / f"G_ema{r}.pth", weights_only=True) for r in (0, 1))
    assert all(torch.equal(e0[k], e1[k]) for k in e0)
    assert any(not torch.equal(e0[k], g0[k]) for k in g0) and any(not torch.equal(e0[k], start[k]) for k in g0)
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2] and log[-1]["images"] == 4
    own = [json.loads((out / f"losses{r}.json").read_text()) for r in (0, 1)]
    assert own[0][0][loss] != own[1][0][loss]  # the ranks saw different data
    for rec, l0, l1 in zip(log, *own):
        assert rec["losses"].keys() == l0.keys()
        assert all(rec["losses"][k] == pytest.approx((l0[k] + l1[k]) / 2, rel=1e-6) for k in l0), rec["step"]
    assert os.path.exists(tmp_path / "run" / ("latest_net_G_A.pth" if model == "cycle_gan" else "latest_net_G.pth"))


def test_ddp_processes_stop_at_the_same_step_when_one_gets_a_signal(tmp_path):
    """SIGUSR1 to rank 1 alone of a two-process run: both ranks stop after the same step and exit 138;
    rank 0 saved that step."""
    cmd, env, out = _torchrun(tmp_path, "--n_epochs", "1000")
    proc = _started(cmd, tmp_path / "run" / trainer.LOG_NAME, env)
    os.kill(int((out / "pid1").read_text()), signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    ends = [json.loads((out / f"end{r}.json").read_text()) for r in (0, 1)]
    assert ends[0] == ends[1] and ends[0]["code"] == 138, err[-3000:]
    state = torch.load(tmp_path / "run" / "latest_state.pth", weights_only=True)
    assert state["step"] == ends[0]["step"] >= 2


def test_max_dataset_size_caps_the_synthetic_set():
    assert len(trainer.make_dataset(options.parse(TINY + ["--max_dataset_size", "3"]))) == 3
    assert len(trainer.make_dataset(options.parse(TINY + ["--max_dataset_size", "9"]))) == 4  # --synthetic_size 4
    with pytest.raises(SystemExit):
        options.parse(TINY + ["--max_dataset_size", "0"])


def test_synthetic_task_reaches_training_evaluation_and_opt_json(tmp_path):
    from qsattn_fast.train.evaluation import TestSetEvaluator
    recolour, stripes = (options.parse(tiny(tmp_path, "--eval_metrics", "synthetic", "--eval_num_test", "3",
                                            "--synthetic_task", t, "--name", t)) for t in ("recolour", "stripes"))
    assert trainer.make_dataset(recolour).task == "recolour" and trainer.make_dataset(stripes).task == "stripes"
    assert options.parse(TINY).synthetic_task == "recolour" and options.parse(["--demo"]).synthetic_task == "recolour"
    ev = {o.synthetic_task: TestSetEvaluator(o, torch.device("cpu")) for o in (recolour, stripes)}
    assert not torch.equal(ev["recolour"].sources, ev["stripes"].sources)
    identity = {t: e.run(torch.nn.Identity()) for t, e in ev.items()}
    assert identity["stripes"]["stripe_energy"] < 1e-6 and "conformity" not in identity["stripes"]
    assert identity["recolour"]["conformity"] == identity["recolour"]["shape_iou"] == 0
    trainer.Trainer(stripes)
    assert json.load(open(tmp_path / "stripes" / "opt.json"))["synthetic_task"] == "stripes"
    with pytest.raises(SystemExit):
        options.parse(TINY + ["--synthetic_task", "zebras"])


def test_synthetic_period_scale_reaches_training_and_evaluation():
    from qsattn_fast.train.evaluation import TestSetEvaluator
    fine, coarse = (options.parse(TINY + ["--eval_metrics", "synthetic", "--eval_num_test", "3", "--synthetic_task",
                                          "stripes", "--synthetic_period_scale", s]) for s in ("1", "2.5"))
    assert trainer.make_dataset(coarse).period_scale == 2.5 and trainer.make_dataset(fine).period_scale == 1
    ev_fine, ev_coarse = (TestSetEvaluator(o, torch.device("cpu")) for o in (fine, coarse))
    assert torch.equal(ev_fine.sources, ev_coarse.sources) and torch.equal(ev_fine.mask, ev_coarse.mask)
    assert not all(torch.equal(f, c) for f, c in zip(ev_fine.real, ev_coarse.real))
    with pytest.raises(SystemExit):
        options.parse(TINY + ["--synthetic_period_scale", "-1"])


def test_qs_detach_attention_changes_only_the_gradient(tmp_path):
    """--qs_detach_attention: the same losses and selections, the QS ops get source maps that need no gradient
    (the source is encoded without a graph), and netG's gradient changes (the source encoder gets none through
    the attention rows; at initialisation the rows are peaked, nearly one-hot, so that share is small: about
    3e-6 of the gradient here)."""
    from unittest import mock

    from qsattn_fast import sampler
    assert options.parse(TINY).qs_detach_attention is False
    runs = []
    for flag in ("false", "true"):
        opt = options.parse(tiny(tmp_path, "--model", "qs", "--qs_detach_attention", flag))
        with mock.patch.object(sampler, "qsattn", wraps=sampler.qsattn) as spy:
            runs.append(_one_step(opt) + ([(c.args[0].requires_grad, c.args[1][0].requires_grad)
                                           for c in spy.call_args_list],))
    (losses, ids, grads, needs_grad), (losses_d, ids_d, grads_d, needs_grad_d) = runs
    # (attention source, source value) of 2 QS layers x (NCE, identity NCE)
    assert needs_grad == [(True, True)] * 4 and needs_grad_d == [(False, False)] * 4
    assert losses.keys() == losses_d.keys() and all(torch.equal(losses[k], losses_d[k]) for k in losses)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids_d))
    flat = [torch.cat([g.flatten() for g in gs.values()]) for gs in (grads, grads_d)]
    assert not torch.equal(flat[1], flat[0])


def test_both_models_implement_the_interface_the_base_class_declares():
    """GANModel declares what the trainer calls; every model (CUT and its variants, CycleGAN) implements
    each with its signature, and is looked up by its own name."""
    import inspect
    declared = ("forward", "compute_D_loss", "compute_G_loss", "optimize", "visuals", "state_for_resume",
                "load_state_for_resume")
    assert set(MODELS) == {"cut", "fastcut", "qs", "cycle_gan"}
    for key, cls in MODELS.items():
        assert cls.LOSS_NAMES and cls.NAME == key
        for name in declared:
            assert getattr(cls, name) is not getattr(GANModel, name), (cls.__name__, name)
            assert inspect.signature(getattr(cls, name)).parameters.keys() == \
                inspect.signature(getattr(GANModel, name)).parameters.keys(), (cls.__name__, name)


def test_cpu_threads_is_an_alias_of_torch_threads(tmp_path):
    """--torch_threads sets torch's intra-op threads; --cpu_threads, its old name, still does; an experiment
    folder whose opt.json has the old key resumes and translates (opt.json is read for the generator's and
    QS-Attn's settings only, and rewritten with the new key on resume)."""
    from qsattn_fast.train.translate import load_generator
    from qsattn_fast.train.viz import run_selection_options
    assert options.parse(TINY + ["--cpu_threads", "3"]).torch_threads == 3
    assert options.parse(TINY + ["--torch_threads", "2"]).torch_threads == 2 and options.parse(TINY).torch_threads == 0
    assert not hasattr(options.parse(TINY), "cpu_threads") and options.parse(TINY).num_threads == 0
    assert trainer.main(tiny(tmp_path, "--model", "qs", "--max_steps", "1")) == 0
    path = tmp_path / "run" / "opt.json"
    old = json.load(open(path))
    old["cpu_threads"] = old.pop("torch_threads")
    json.dump(old, open(path, "w"))
    assert load_generator(str(tmp_path / "run")).training is False
    assert run_selection_options(str(tmp_path / "run"))["qs_layers"] == [12, 16]
    resumed = tiny(tmp_path, "--model", "qs", "--max_steps", "2", "--continue_train", "--cpu_threads", "1")
    assert trainer.main(resumed) == 0
    new = json.load(open(path))
    assert new["torch_threads"] == 1 and "cpu_threads" not in new and read_log(tmp_path / "run")[-1]["step"] == 2


def test_tiny_args_are_valid():
    assert options.parse(TINY).crop_size == 32


def test_qs_run_logs_selection_statistics(tmp_path):
    """--model qs writes one selection record per epoch, per QS layer (12, 16), with fractions in [0, 1]
    and ordered entropy percentiles; cut writes none."""
    assert trainer.main(tiny(tmp_path, "--model", "qs", "--qs_backend", "torch")) == 0
    with open(tmp_path / "run" / QSAttnModel.DIAGNOSTICS_LOG) as f:
        recs = [json.loads(line) for line in f]
    assert [r["epoch"] for r in recs] == [1, 2] and recs[-1]["step"] == 8
    for r in recs:
        assert set(r["layers"]) == {"12", "16"}
        for s in r["layers"].values():
            assert all(0 <= s[k] <= 1 for k in ("textbook_zero_rows", "selected_textbook_zero", "selected_zero"))
            e = s["selected_entropy"]
            assert 0 <= e["p5"] <= e["p50"] <= e["p95"] <= e["max"]
    assert trainer.main(tiny(tmp_path, "--model", "cut", name="cut")) == 0
    assert not (tmp_path / "cut" / QSAttnModel.DIAGNOSTICS_LOG).exists()


def test_a_log_file_gets_one_line_per_logged_step_not_progress_bars(tmp_path, capsys):
    """stderr is not a terminal under pytest: no carriage-return redraws; one line per --print_freq images
    (and the first step) with the epoch, the step and the losses; the per-step JSONL is unchanged."""
    assert trainer.main(tiny(tmp_path, "--print_freq", "2")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[3] for line in lines] == ["1", "2", "4", "6", "8"]      # steps 1, then every 2 images
    assert lines[0].startswith("epoch 1/2 step 1 (1/4)") and "G_GAN" in lines[0] and "NCE" in lines[0]
    assert len(read_log(tmp_path / "run")) == 5


def test_tensorboard_logs_losses_evaluations_and_pictures(tmp_path):
    """--tensorboard (qs, an evaluation after the last epoch): every logged loss and the learning rate per
    step, the evaluation's numbers, the sample grid, the test grid and the selection picture."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    argv = tiny(tmp_path, "--model", "qs", "--tensorboard", "--eval_freq", "2", "--eval_num_test", "3",
                "--eval_metrics", "synthetic", "--display_freq", "4")
    assert trainer.main(argv) == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    logged = read_log(tmp_path / "run")
    assert {f"loss/{k}" for k in logged[0]["losses"]} | {"lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/G_GAN")] == [r["step"] for r in logged]
    assert np.allclose([e.value for e in acc.Scalars("loss/NCE")], [r["losses"]["NCE"] for r in logged])
    assert {"eval/shape_iou", "eval/background_error"} <= set(tags["scalars"])
    assert {"samples", "test translations", "selection"} <= set(tags["images"])
    assert (tmp_path / "run" / "samples" / "selection_epoch002.png").exists()


def test_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    assert trainer.main(tiny(tmp_path, "--tensorboard")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "qsattn-train: error: --tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "run" / "opt.json").exists()
