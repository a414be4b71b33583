"""train/translate.py: qsattn-translate round trip on checkpoints of ours and of CUT's layout, and
--direction with CycleGAN's pair of generators."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from qsattn_fast.train import networks, trainer, translate
from qsattn_fast.train.data import to_image, to_tensor
from train_tiny import one_thread, tiny  # noqa: F401 (fixture)

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


def test_errors_name_the_input(tmp_path):
    g = networks.define_G(ngf=4, netG="resnet_4blocks")
    ck = tmp_path / "g.pth"
    torch.save(g.state_dict(), ck)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        translate.main(["--checkpoint", str(ck), "--input", str(tmp_path / "missing.png"), "--output", str(tmp_path)])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        translate.main(["--checkpoint", str(ck), "--input", str(bad), "--output", str(tmp_path / "o")])
    torch.save({"weight": torch.zeros(2)}, tmp_path / "d.pth")
    with pytest.raises(ValueError, match="model.1.weight"):
        translate.main(["--checkpoint", str(tmp_path / "d.pth"), "--input", str(bad), "--output", str(tmp_path)])


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
    assert pick_device("auto") == torch.device("cuda")
    assert [pick_device("1,2", r) for r in (0, 1, 2)] == [torch.device("cuda", i) for i in (1, 2, 1)]
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_direction_picks_cycle_gans_generator(tmp_path):
    """A CycleGAN experiment folder: --direction AtoB (the default) translates with latest_net_G_A.pth,
    BtoA with latest_net_G_B.pth (--epoch picks the file's prefix); a file is used as given, and a
    direction that its name contradicts is refused, as is BtoA for CUT's one-way G."""
    assert trainer.main(tiny(tmp_path, "--model", "cycle_gan", "--n_epochs_decay", "0", name="cyc")) == 0  # 1 epoch
    assert trainer.main(tiny(tmp_path, "--max_steps", "1", name="cut")) == 0
    cyc, cut = tmp_path / "cyc", tmp_path / "cut"
    write(tmp_path / "x.png", (32, 32), 4)
    x = to_tensor(Image.open(tmp_path / "x.png").convert("RGB"))[None]
    for direction, name in ((None, "G_A"), ("AtoB", "G_A"), ("BtoA", "G_B")):
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
    assert resolve(str(cyc / "latest_net_G_B.pth"), "BtoA") == str(cyc / "latest_net_G_B.pth")
    assert resolve(str(cut), None) == resolve(str(cut), "AtoB") == str(cut / "latest_net_G.pth")
    with pytest.raises(ValueError, match="G_A, not the --direction BtoA generator"):
        resolve(str(cyc / "latest_net_G_A.pth"), "BtoA")
    with pytest.raises(ValueError, match="generator for A to B"):
        resolve(str(cut / "latest_net_G.pth"), "BtoA")
    with pytest.raises(ValueError, match="A to B only"):
        resolve(str(cut), "BtoA")
    with pytest.raises(FileNotFoundError, match="7_net_G_A.pth nor 7_net_G.pth"):
        resolve(str(cyc), None, epoch=7)
