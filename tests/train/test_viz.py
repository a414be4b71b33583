"""train/viz.py: the sample grid's layout, the matplotlib loss curves, QS-Attn's selection figure and the
qsattn-viz command."""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import qsattn_fast as qs
from qsattn_fast import OP_MODES
from qsattn_fast.ops import split_mode
from qsattn_fast.train.data import to_image
from qsattn_fast.train.networks import define_G
from qsattn_fast.train.viz import loss_families, main, plot_losses, plot_selection, save_grid, selection_maps, smooth


def test_grid_places_each_image(tmp_path):
    cols = [torch.rand(3, 3, 10, 7) * 2 - 1 for _ in range(4)]
    path = tmp_path / "g.png"
    save_grid(cols, str(path), pad=2, min_tile=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 12 + 2, 4 * 9 + 2, 3)
    for j in range(4):
        for i in range(3):
            tile = grid[2 + i * 12: 2 + i * 12 + 10, 2 + j * 9: 2 + j * 9 + 7]
            assert np.array_equal(tile, np.asarray(to_image(cols[j][i])))
    assert (grid[0] == 255).all()  # white gap


def test_grid_upscales_tiles_and_labels_columns(tmp_path):
    """Tiles of 48 px become 144 px (x3, nearest: each pixel a 3x3 block); the header row holds text."""
    cols = [torch.rand(2, 3, 48, 48) * 2 - 1 for _ in range(3)]
    path = tmp_path / "g.png"
    save_grid(cols, str(path), labels=["real A", "fake B", "real B"], pad=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (20 + 2 * 146 + 2, 3 * 146 + 2, 3)
    tile = grid[22 + 146: 22 + 146 + 144, 2 + 146: 2 + 146 + 144]              # row 1, column 1
    assert np.array_equal(tile[::3, ::3], np.asarray(to_image(cols[1][1])))
    assert np.array_equal(tile[1::3, 2::3], tile[::3, ::3])
    header = grid[:20, 2:146]
    assert (header < 128).any() and (header == 255).mean() > 0.5              # dark text on white


def test_loss_families_group_by_prefix():
    names = ["NCE_Y", "G_GAN", "D_real", "G", "NCE", "D_fake", "cycle_B", "cycle_A"]
    assert loss_families(names) == {"D": ["D_fake", "D_real"], "G": ["G", "G_GAN"], "NCE": ["NCE", "NCE_Y"],
                                    "cycle": ["cycle_A", "cycle_B"]}


def test_smooth_is_a_debiased_moving_average():
    v = torch.randn(40).tolist()
    w = float(torch.rand(()) * 0.9)
    want = [sum(w ** (t - i) * (1 - w) * v[i] for i in range(t + 1)) / (1 - w ** (t + 1)) for t in range(len(v))]
    assert np.allclose(smooth(v, w), want)
    assert smooth([2.5] * 5, 0.8) == pytest.approx([2.5] * 5)   # debiased: a constant stays put from the start


def test_loss_plot_one_panel_per_family(tmp_path):
    """Three families (D, G, NCE) side by side: a 12 x 3 inch figure at 100 dpi; no records draws a note."""
    records = [{"step": s, "losses": {"G": 3.0 - 0.1 * s, "G_GAN": 1.0, "D_real": 0.5 + 0.01 * s, "NCE": 2.0}}
               for s in range(1, 30)]
    plot_losses(records, str(tmp_path / "p.png"))
    img = Image.open(tmp_path / "p.png")
    assert img.size == (1200, 300)
    assert np.asarray(img.convert("L")).std() > 10                          # something drawn
    plot_losses([], str(tmp_path / "empty.png"))
    assert Image.open(tmp_path / "empty.png").size == (400, 300)


def test_loss_plot_leaves_non_finite_losses_out(tmp_path):
    """A record with NaN and infinite losses (a step skipped under --nonfinite skip) draws the picture of
    the records without it: it does not poison the smoothed curves after it."""
    records = [{"step": s, "losses": {"G": float(v), "D_real": float(v) / 2}} for s, v in enumerate(torch.rand(30), 1)]
    bad = {"step": 31, "losses": {"G": math.nan, "D_real": math.inf}}
    plot_losses(records[:10] + [bad] + records[10:], str(tmp_path / "with.png"))
    plot_losses(records, str(tmp_path / "without.png"))
    pictures = [np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("with", "without")]
    assert np.array_equal(*pictures)


@pytest.mark.parametrize("mode", OP_MODES["qsattn"])
def test_selection_maps_are_the_apis_selection(mode, tmp_path):
    """Per layer: the entropies of the API on the encoder's features, the k lowest rows picked; the figure
    marks exactly those k positions (at their centres in image pixels) and has a heat map per entropy."""
    net = define_G(ngf=8, netG="resnet_6blocks", norm="instance").eval()
    x = torch.rand(1, 3, 36, 28) * 2 - 1
    layers, k = [4, 8], 9
    maps = selection_maps(net, x, layers, mode, k, window=5, backend="torch")
    feats = net(x, layers, encode_only=True)
    sel = split_mode(mode)[0]
    for layer, f in zip(layers, feats):
        m = maps[layer]
        assert m["shape"] == tuple(f.shape[2:]) and m["selected_by"] == sel
        assert set(m["entropy"]) == ({"local", "global"} if mode == "local_global" else {sel})
        want = qs.entropy(f, sel, 5, backend="reference")[0]
        assert torch.allclose(m["entropy"][sel].double(), want.double(), rtol=1e-4, atol=1e-6)
        assert torch.equal(m["picked"], qs.select(m["entropy"][sel][None], k)[0])
    fig = plot_selection(x[0], maps, str(tmp_path / "s.png"), title="test")
    assert Image.open(tmp_path / "s.png").size == (int(4.2 * 100 * (1 + len(maps[4]["entropy"]))), 2 * 360)
    image_panels = [ax for ax in fig.axes if ax.get_title().startswith("layer") and "queries" in ax.get_title()]
    assert len(image_panels) == 2
    for ax, layer in zip(image_panels, layers):
        h, w = maps[layer]["shape"]
        marked = ax.collections[0].get_offsets()
        idx = maps[layer]["picked"].numpy()
        assert len(marked) == k
        assert np.allclose(marked, np.stack([(idx % w + 0.5) * 28 / w, (idx // w + 0.5) * 36 / h], 1))
        assert f"N = {h}x{w} = {h * w}" in ax.get_title() and f"k = {k}" in ax.get_title()


def _checkpoint(tmp_path, opt=None):
    """A tiny generator's checkpoint folder (with the run's opt.json when ``opt`` is given) and an image."""
    run = tmp_path / "run"
    run.mkdir()
    net = define_G(ngf=8, netG="resnet_6blocks", norm="none")
    torch.save(net.state_dict(), run / "latest_net_G.pth")
    if opt is not None:
        with open(run / "opt.json", "w") as f:
            json.dump(opt, f)
    Image.fromarray((np.random.rand(40, 30, 3) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    return run


def test_qsattn_viz_command_with_a_runs_options(tmp_path, capsys):
    """The run's opt.json names the QS layers, mode, window and k; one PNG per image, one row per layer."""
    opt = dict(input_nc=3, output_nc=3, ngf=8, netG="resnet_6blocks", normG="none", no_antialias=False,
               no_antialias_up=False, nce_layers_list=[0, 4, 8], qs_layers_list=[4, 8], qs_mode="local_global",
               qs_window=3, num_patches=7)
    run = _checkpoint(tmp_path, opt)
    out = tmp_path / "out"
    assert main([str(tmp_path / "img.png"), "--checkpoint", str(run), "--size", "32", "--output", str(out),
                 "--gpu_ids", "-1"]) == 0
    png = out / "img_selection.png"
    assert Image.open(png).size == (int(4.2 * 100 * 3), 2 * 360)          # image + local + global; 2 layers
    assert str(png) in capsys.readouterr().out


def test_qsattn_viz_command_without_options_and_its_errors(tmp_path, capsys):
    """A bare CUT file: CUT's layers, the last two QS; bad arguments and files are one line, exit 2."""
    run = _checkpoint(tmp_path)
    out = tmp_path / "out"
    argv = [str(tmp_path / "img.png"), "--size", "32", "--output", str(out), "--gpu_ids", "-1"]
    assert main(argv + ["--checkpoint", str(run / "latest_net_G.pth"), "--k", "5"]) == 0
    assert Image.open(out / "img_selection.png").size == (int(4.2 * 100 * 2), 2 * 360)
    capsys.readouterr()
    assert main(argv + ["--checkpoint", str(tmp_path / "missing")]) == 2
    assert main(argv + ["--checkpoint", str(run), "--layers", "4,99"]) == 2
    diverged = torch.load(run / "latest_net_G.pth", weights_only=True)
    diverged["model.1.weight"][0, 1, 2, 3] = -float("inf")
    torch.save(diverged, run / "inf_net_G.pth")
    assert main(argv + ["--checkpoint", str(run / "inf_net_G.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("qsattn-viz: error: ") for e in err) and "99" in err[1]
    assert "inf_net_G.pth holds non-finite weights" in err[2]
    for bad in (["--size", "30"], ["--layers", "a,b"], ["--k", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--checkpoint", str(run)] + bad)
        assert e.value.code == 2
    assert not os.path.exists(out / "missing_selection.png")
