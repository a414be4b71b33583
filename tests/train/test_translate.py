"""train/translate.py: qsattn-translate round trip on checkpoints of ours and of CUT's layout, and
--direction with CycleGAN's pair of generators."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from qsattn_fast.train import networks, trainer, translate
from qsattn_fast.train.data import to_image, to_tensor

from support.training import one_thread, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def write(path, size, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_round_trip_from_a_trained_checkpoint(tmp_path):
    """Train one step, translate a folder (mixed sizes, batch 2) and a single file: one output per
    input, same name and size; an output equals the generator applied to the input directly."""
    assert trainer.main(tiny(tmp_path, "--max_steps", "1")) == 0
    ckpt_path = str(tmp_path / "run" / "latest_net_G.pth")
    inp = tmp_path / "in"
    inp.mkdir()
    write(inp / "a.png", (32, 24), 0)
    write(inp / "b.png", (32, 24), 1)
    write(inp / "c.png", (21, 30), 2)
    single = tmp_path / "single.png"
    write(single, (16, 16), 3)
    out = tmp_path / "out"
    assert translate.main(["--checkpoint", ckpt_path, "--input", str(inp), str(single), "--output", str(out),
                           "--batch_size", "2"]) == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png", "single.png"]
    for name, size in [("a.png", (32, 24)), ("c.png", (21, 30)), ("single.png", (16, 16))]:
        assert Image.open(out / name).size == size
    g = networks.define_G(ngf=8, netG="resnet_6blocks")
    g.load_state_dict(torch.load(ckpt_path, weights_only=True))
    with torch.no_grad():
        expect = to_image(g.eval()(to_tensor(Image.open(inp / "b.png").convert("RGB"))[None])[0])
    got = np.asarray(Image.open(out / "b.png"), dtype=np.int16)
    assert np.abs(got - np.asarray(expect, dtype=np.int16)).max() <= 1  # batch of 2 vs 1: rounding only


@pytest.mark.parametrize("no_aa", [False, True])
def test_cut_layout_checkpoint_with_module_prefix(tmp_path, no_aa):
    """A generator saved as CUT's DataParallel code may save it (``module.`` keys), any anti-aliasing
    setting and block count: the architecture is read off the keys and the weights are used."""
    g = networks.define_G(ngf=4, netG="resnet_4blocks", no_antialias=no_aa, no_antialias_up=no_aa)
    for p in g.parameters():
        p.data.normal_(0, 0.1)
    path = tmp_path / "latest_net_G.pth"
    torch.save({"module." + k: v for k, v in g.state_dict().items()}, path)
    net = translate.generator_from_state_dict(translate.load_state_dict_file(str(path)))
    x = torch.rand(1, 3, 12, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x), g.eval()(x))
    assert len([m for m in net.model if isinstance(m, networks.ResnetBlock)]) == 4


def _cli(argv, capsys):
    rc = translate.main(argv)
    return rc, capsys.readouterr()


def test_every_bad_path_and_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    g = networks.define_G(ngf=4, netG="resnet_4blocks")
    ck = tmp_path / "g.pth"
    torch.save(g.state_dict(), ck)
    good = tmp_path / "good.png"
    write(good, (8, 8), 0)
    truncated = tmp_path / "trunc_net_G.pth"
    truncated.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 2])
    text = tmp_path / "text_net_G.pth"
    text.write_text("not a checkpoint")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other_net_G.pth")
    torch.save(networks.define_D(ndf=4).state_dict(), tmp_path / "d_net_G.pth")   # another model's keys
    diverged = g.state_dict()
    diverged["model.1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(diverged, tmp_path / "nan_net_G.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {"missing.png": ["--checkpoint", str(ck), "--input", str(tmp_path / "missing.png")],
             "nothing.pth": ["--checkpoint", str(tmp_path / "nothing.pth"), "--input", str(good)],
             "holds no images": ["--checkpoint", str(ck), "--input", str(empty)],
             "trunc_net_G.pth": ["--checkpoint", str(truncated), "--input", str(good)],
             "text_net_G.pth": ["--checkpoint", str(text), "--input", str(good)],
             "model.1.weight": ["--checkpoint", str(tmp_path / "other_net_G.pth"), "--input", str(good)],
             "d_net_G.pth": ["--checkpoint", str(tmp_path / "d_net_G.pth"), "--input", str(good)],
             "non-finite weights (model.1.weight: 1 of": ["--checkpoint", str(tmp_path / "nan_net_G.pth"),
                                                          "--input", str(good)],
             "neither": ["--checkpoint", str(empty), "--input", str(good)],
             "batch_size": ["--checkpoint", str(ck), "--input", str(good), "--batch_size", "0"],
             "CUDA": ["--checkpoint", str(ck), "--input", str(good), "--gpu_ids", "0"] if not torch.cuda.is_available()
             else ["--checkpoint", str(ck), "--input", str(good), "--batch_size", "-1"]}
    for i, (needle, argv) in enumerate(cases.items()):
        rc, io = _cli(argv + ["--output", str(tmp_path / f"out{i}")], capsys)
        assert rc == 2 and "Traceback" not in io.err and len(io.err.strip().splitlines()) == 1, (needle, io.err)
        assert io.err.startswith("qsattn-translate: error: ") and (needle in io.err or needle == "CUDA"), io.err
        assert not (tmp_path / f"out{i}").exists(), needle                      # nothing written
    with pytest.raises(ValueError, match="trunc_net_G.pth"):                   # --debug: the exception itself
        translate.main(cases["trunc_net_G.pth"] + ["--output", str(tmp_path / "o"), "--debug"])


def test_unreadable_inputs_are_skipped_and_counted(tmp_path, capsys):
    """Four good images and a corrupt one: the four are written, the bad one named in a warning, exit 1;
    an RGBA and a palette input are converted with a notice."""
    g = networks.define_G(ngf=4, netG="resnet_4blocks")
    ck = tmp_path / "g.pth"
    torch.save(g.state_dict(), ck)
    inp = tmp_path / "imgs"
    inp.mkdir()
    for k in range(4):
        write(inp / f"{k}.png", (12, 8), k)
    (inp / "x.png").write_text("this is text, not a PNG")
    rgba = np.random.default_rng(5).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(inp / "alpha.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(inp / "palette.png")
    rc, io = _cli(["--checkpoint", str(ck), "--input", str(inp), "--output", str(tmp_path / "out")], capsys)
    assert rc == 1 and "Traceback" not in io.err
    assert sorted(os.listdir(tmp_path / "out")) == ["0.png", "1.png", "2.png", "3.png", "alpha.png", "palette.png"]
    assert "skipping cannot read image" in io.err and "x.png" in io.err and "1 inputs could not be read" in io.out
    assert "alpha" in io.err and "(RGBA)" in io.err and "(P)" in io.err


@pytest.mark.parametrize("flags,generator", [
    (["--normG", "none"], "G"), (["--normG", "instance"], "G"), (["--normG", "batch"], "G"),
    (["--normG", "none", "--no_antialias", "--no_antialias_up"], "G"), (["--no_antialias"], "G"),
    (["--model", "cycle_gan", "--normG", "none"], "G_A"), (["--model", "cycle_gan"], "G_B")])
def test_round_trip_of_every_generator_the_trainer_writes(tmp_path, capsys, flags, generator):
    """Train one step with the flags; qsattn-translate on the experiment folder (opt.json read; the EMA
    weights of the run's translator, G or G_A) and on the bare raw file (the architecture inferred, opt.json
    moved away) both equal their generator applied directly."""
    assert trainer.main(tiny(tmp_path, "--max_steps", "1", *flags)) == 0
    run = tmp_path / "run"
    opt = json.load(open(run / "opt.json"))
    write(tmp_path / "x.png", (16, 12), 1)
    x = to_tensor(Image.open(tmp_path / "x.png").convert("RGB"))[None]
    folder_file = f"latest_net_{generator}_ema.pth" if generator != "G_B" else f"latest_net_{generator}.pth"
    for k, (source, file) in enumerate(((str(run), folder_file),
                                        (str(run / f"latest_net_{generator}.pth"), f"latest_net_{generator}.pth"))):
        g = networks.define_G(opt["input_nc"], opt["output_nc"], opt["ngf"], opt["netG"], opt["normG"],
                              no_antialias=opt["no_antialias"], no_antialias_up=opt["no_antialias_up"])
        g.load_state_dict(torch.load(run / file, weights_only=True))
        with torch.no_grad():
            expect = np.asarray(to_image(g.eval()(x)[0]))
        if k == 1:
            os.rename(run / "opt.json", tmp_path / "opt.json")
        out = tmp_path / f"out{k}"
        direction = ["--direction", "BtoA"] if generator == "G_B" else []
        rc, io = _cli(["--checkpoint", source, "--input", str(tmp_path / "x.png"), "--output", str(out), *direction],
                      capsys)
        assert rc == 0, io.err
        assert np.array_equal(np.asarray(Image.open(out / "x.png")), expect), source


def test_one_device_helper_reads_gpu_ids_and_device_names(monkeypatch):
    from qsattn_fast.train.device import pick_device
    for spec in ("-1", " -1 ", "cpu", "-1,0", ""):
        assert pick_device(spec) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    for spec in ("0", "1,2", "cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device(spec)
    with pytest.raises(ValueError, match="expected -1, GPU ids"):
        pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [pick_device("auto", r) for r in (0, 1, 2)] == [torch.device("cuda", i) for i in (0, 1, 0)]
    assert [pick_device("1,2", r) for r in (0, 1, 2)] == [torch.device("cuda", i) for i in (1, 2, 1)]
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_direction_picks_cycle_gans_generator(tmp_path):
    """A CycleGAN experiment folder: --direction AtoB (the default) translates with latest_net_G_A.pth,
    BtoA with latest_net_G_B.pth (--epoch picks the file's prefix; AtoB takes G_A's EMA weights,
    latest_net_G_A_ema.pth, where they are: only the translator has them); a file is used as given, and a
    direction that its name contradicts is refused, as is BtoA for CUT's one-way G."""
    assert trainer.main(tiny(tmp_path, "--model", "cycle_gan", "--n_epochs_decay", "0", name="cyc")) == 0  # 1 epoch
    assert trainer.main(tiny(tmp_path, "--max_steps", "1", name="cut")) == 0
    cyc, cut = tmp_path / "cyc", tmp_path / "cut"
    write(tmp_path / "x.png", (32, 32), 4)
    x = to_tensor(Image.open(tmp_path / "x.png").convert("RGB"))[None]
    for direction, name in ((None, "G_A_ema"), ("AtoB", "G_A_ema"), ("BtoA", "G_B")):   # G_A's EMA, if any
        out = tmp_path / f"out_{direction}"
        flags = ["--direction", direction] if direction else []
        assert translate.main(["--checkpoint", str(cyc), "--input", str(tmp_path / "x.png"), "--output", str(out),
                               *flags]) == 0
        g = networks.define_G(ngf=8, netG="resnet_6blocks")
        g.load_state_dict(torch.load(cyc / f"latest_net_{name}.pth", weights_only=True))
        with torch.no_grad():
            assert np.array_equal(np.asarray(Image.open(out / "x.png")), np.asarray(to_image(g.eval()(x)[0]))), name
    resolve = translate.resolve_checkpoint
    assert resolve(str(cyc), "BtoA", epoch=1) == str(cyc / "1_net_G_B.pth")
    assert resolve(str(cyc), "AtoB", epoch=1) == str(cyc / "1_net_G_A_ema.pth")
    assert resolve(str(cyc / "latest_net_G_B.pth"), "BtoA") == str(cyc / "latest_net_G_B.pth")
    assert resolve(str(cut), None) == resolve(str(cut), "AtoB") == str(cut / "latest_net_G_ema.pth")
    assert resolve(str(cut), None, ema=False) == str(cut / "latest_net_G.pth")
    with pytest.raises(ValueError, match="G_A, not the --direction BtoA generator"):
        resolve(str(cyc / "latest_net_G_A.pth"), "BtoA")
    with pytest.raises(ValueError, match="generator for A to B"):
        resolve(str(cut / "latest_net_G.pth"), "BtoA")
    with pytest.raises(ValueError, match="A to B only"):
        resolve(str(cut), "BtoA")
    with pytest.raises(FileNotFoundError, match="7_net_G_A.pth nor 7_net_G.pth"):
        resolve(str(cyc), None, epoch=7)


def test_a_folder_translates_with_the_ema_weights_unless_no_ema(tmp_path):
    """A run's folder holds latest_net_G.pth (raw) and latest_net_G_ema.pth, which differ: translate uses
    the EMA weights, --no_ema the raw ones; a file path is used as given."""
    assert trainer.main(tiny(tmp_path, "--max_steps", "2")) == 0
    run = tmp_path / "run"
    inp = tmp_path / "in"
    inp.mkdir()
    write(inp / "a.png", (20, 16), 0)
    outputs = {}
    for flags in ([], ["--no_ema"]):
        out = tmp_path / ("raw" if flags else "ema")
        assert translate.main(["--checkpoint", str(run), "--input", str(inp), "--output", str(out), *flags]) == 0
        outputs[out.name] = np.asarray(Image.open(out / "a.png"), dtype=np.int16)
    for name in ("raw", "ema"):
        g = networks.define_G(ngf=8, netG="resnet_6blocks")
        file = "latest_net_G.pth" if name == "raw" else "latest_net_G_ema.pth"
        g.load_state_dict(torch.load(run / file, weights_only=True))
        with torch.no_grad():
            expect = np.asarray(to_image(g.eval()(to_tensor(Image.open(inp / "a.png").convert("RGB"))[None])[0]))
        assert np.abs(outputs[name] - expect.astype(np.int16)).max() <= 1, name
    assert np.abs(outputs["raw"] - outputs["ema"]).max() > 1
    assert translate.resolve_checkpoint(str(run / "latest_net_G.pth")) == str(run / "latest_net_G.pth")
    assert translate.resolve_checkpoint(str(run), ema=False) == str(run / "latest_net_G.pth")
