"""qsattn-eval end to end (train/eval_cli.py, its library train/evaluation.py) and the trainer's --eval_freq,
on small synthetic sets and a randomly initialised Inception (no download)."""
import json
import shutil

import pytest
import torch

from qsattn_fast.train import eval_cli as cli, evaluation as E, trainer
from qsattn_fast.train.data import list_images
from qsattn_fast.train.translate import generator_from_state_dict

from support.training import one_thread, tiny  # noqa: F401 (fixture)


@pytest.fixture
def split(tmp_path):
    cli.main(["--write_synthetic", str(tmp_path / "syn"), "--num_test", "6", "--size", "32"])
    return tmp_path / "syn"


def _run(argv, capsys):
    rc = cli.main(argv + ["--quiet"])
    return rc, capsys.readouterr()


def test_synthetic_measures_tell_identity_from_the_target(split, tmp_path, capsys):
    out = {}
    for name in ("testA", "testB"):
        rc, _ = _run(["--dataset_mode", "synthetic", "--fake", str(split / name), "--json",
                      str(tmp_path / f"{name}.json")], capsys)
        assert rc == 0
        out[name] = json.load(open(tmp_path / f"{name}.json"))["metrics"]
    for k in ("conformity", "shape_iou"):
        assert out["testA"][k] == 0 and out["testB"][k] == 1      # identity: nothing moved; the target itself
    assert out["testA"]["background_error"] == out["testB"]["background_error"] == 0
    assert out["testA"]["detail_error"] == out["testB"]["detail_error"] == 0
    assert out["testB"]["swd"] == 0 < out["testA"]["swd"]
    assert set(out["testA"]["swd_levels"]) == {"32", "16"}
    res = E.evaluate(None, str(split / "testA"), dataset_mode="synthetic", progress=False)   # the Python API
    assert res["metrics"]["swd"] == pytest.approx(out["testA"]["swd"]) and res["settings"]["n_fake"] == 6


def test_synthetic_task_and_period_scale_reach_the_split_and_its_measures(tmp_path, capsys):
    coarse = tmp_path / "coarse"
    cli.main(["--write_synthetic", str(coarse), "--num_test", "4", "--size", "32", "--synthetic_task", "stripes",
              "--synthetic_period_scale", "2"])
    same = E.evaluate(None, str(coarse / "testB"), dataset_mode="synthetic", synthetic_task="stripes",
                      synthetic_period_scale=2.0, progress=False)
    other = E.evaluate(None, str(coarse / "testB"), dataset_mode="synthetic", synthetic_task="stripes",
                       progress=False)  # fine stripes
    assert set(same["metrics"]) >= {"stripe_energy", "background_error"} and "conformity" not in same["metrics"]
    assert same["metrics"]["stripe_energy"] == pytest.approx(1.0) and same["metrics"]["background_error"] == 0
    assert same["settings"]["synthetic_period_scale"] == 2.0 and same["settings"]["synthetic_task"] == "stripes"
    assert same["metrics"]["swd"] == 0 < other["metrics"]["swd"]   # the real set is regenerated with the scale
    with pytest.raises(SystemExit):
        cli.main(["--write_synthetic", str(tmp_path / "bad"), "--synthetic_period_scale", "0"])
    assert "synthetic_period_scale" in capsys.readouterr().err


def test_no_progress_bars_when_stderr_is_not_a_terminal(split, capsys):
    """Redirected to a log (as under pytest), qsattn-eval writes its numbers, not carriage-return redraws."""
    rc = cli.main(["--real", str(split / "testB"), "--fake", str(split / "testA"), "--metrics", "swd"])
    io = capsys.readouterr()
    assert rc == 0 and "swd" in io.out and "\r" not in io.err and "img/s" not in io.err


def test_fid_kid_swd_of_two_folders(split, tmp_path, capsys, random_inception_weights):
    shutil.copytree(split / "testB", tmp_path / "copyB")
    common = ["--inception-weights", random_inception_weights, "--kid_subsets", "4", "--batch_size", "4"]
    rc, io = _run(["--real", str(split / "testB"), "--fake", str(tmp_path / "copyB"), *common,
                   "--json", str(tmp_path / "same.json")], capsys)
    assert rc == 0 and "fid" in io.out and "kid" in io.out
    same = json.load(open(tmp_path / "same.json"))
    assert same["metrics"]["fid"] == pytest.approx(0, abs=1e-6) and same["metrics"]["swd"] == 0
    assert same["settings"]["n_real"] == 6 and same["settings"]["swd_size"] == 32
    assert random_inception_weights in same["settings"]["inception"]
    rc, _ = _run(["--real", str(split / "testB"), "--fake", str(split / "testA"), *common,
                  "--json", str(tmp_path / "diff.json")], capsys)
    diff = json.load(open(tmp_path / "diff.json"))["metrics"]
    assert rc == 0 and diff["fid"] > 1e-6 and diff["swd"] > 0 and diff["kid_subset_size"] == 6
    # the Python path on in-memory uint8 tensors gives the same numbers as the files
    real = [E.to_uint8(p) for p in list_images(str(split / "testB"))]
    fake = [E.to_uint8(p) for p in list_images(str(split / "testA"))]
    net = E.load_inception(random_inception_weights)
    api = E.compute_metrics(real, fake, ("fid", "kid", "swd"), net=net, batch_size=4, swd_size=32,
                            kid_subsets=4, progress=False)
    assert api["fid"] == pytest.approx(diff["fid"], rel=1e-6) and api["swd"] == pytest.approx(diff["swd"])


def test_cli_errors(split, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("QSATTN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(next((split / "testA").iterdir()), renamed / "img.png")
    (tmp_path / "empty").mkdir()
    cases = [(["--real", str(split / "testB"), "--fake", str(split / "testA")], "weights-inception-2015-12-05"),
             (["--real", str(split / "testB"), "--fake", str(split / "testA"), "--metrics", "fid,lpips"], "lpips"),
             (["--fake", str(split / "testA")], "real folders are required"),
             (["--real", str(split / "testB"), "--fake", str(split / "testA"), "--metrics", "synthetic"], "synthetic"),
             (["--real", str(split / "testB"), "--fake", str(tmp_path / "missing")], "missing is not a folder"),
             (["--real", str(split / "testB"), "--fake", str(tmp_path / "empty")], "holds no images"),
             (["--dataset_mode", "synthetic", "--fake", str(renamed)], "img.png is not named"),
             (["--fake", str(split / "testA"), "--synthetic_task", "zebras"], "invalid choice")]
    for argv, needle in cases:
        try:
            rc = cli.main(argv + ["--quiet"])
        except SystemExit as e:   # argparse's usage errors
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and needle in err, err
    with pytest.raises(ValueError, match="img.png"):                      # the Python function raises
        E.evaluate(None, str(renamed), dataset_mode="synthetic")


def test_jpeg_fakes_are_warned_about(split, tmp_path, capsys):
    from PIL import Image
    jpg = tmp_path / "jpg"
    jpg.mkdir()
    for p in (split / "testA").iterdir():
        Image.open(p).save(jpg / (p.stem + ".jpg"), quality=90)
    rc, io = _run(["--real", str(split / "testB"), "--fake", str(jpg), "--metrics", "swd"], capsys)
    assert rc == 0 and "JPEG" in io.err


def test_trainer_eval_freq_logs_every_epoch_and_keeps_the_best(tmp_path, one_thread, random_inception_weights):  # noqa: F811
    argv = tiny(tmp_path, "--eval_freq", "1", "--eval_num_test", "4", "--inception_weights", random_inception_weights,
                "--kid_subsets", "2")
    assert trainer.main(argv) == 0
    run = tmp_path / "run"
    log = [json.loads(line) for line in open(run / "eval_log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["primary"] == "fid" for r in log)
    measures = {"fid", "kid", "swd", "conformity", "shape_iou", "detail_error", "background_error"}
    assert measures <= set(log[0]["metrics"])
    best = json.load(open(run / "eval_best.json"))
    assert best["epoch"] == min(log, key=lambda r: r["metrics"]["fid"])["epoch"]
    sd = torch.load(run / "best_net_G.pth", weights_only=True)
    want = torch.load(run / f"{best['epoch']}_net_G.pth", weights_only=True) if best["epoch"] == 2 else sd
    assert all(torch.equal(sd[k], want[k]) for k in sd) and generator_from_state_dict(sd) is not None


def test_trainer_evaluates_a_folder_test_split(tmp_path, split, one_thread):  # noqa: F811
    for a, b in (("testA", "trainA"), ("testB", "trainB")):
        shutil.copytree(split / a, split / b)
    argv = tiny(tmp_path, "--dataset_mode", "unaligned", "--dataroot", str(split), "--eval_freq", "2",
                "--eval_metrics", "swd", "--eval_num_test", "5", "--max_steps", "0")
    assert trainer.main(argv) == 0
    log = [json.loads(line) for line in open(tmp_path / "run" / "eval_log.jsonl")]
    assert [r["epoch"] for r in log] == [2] and set(log[0]["metrics"]) == {"swd", "swd_levels"}
    assert log[0]["metrics"]["swd"] > 0 and (tmp_path / "run" / "best_net_G.pth").exists()


def test_trainer_eval_metrics_need_their_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("QSATTN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(E.InceptionUnavailable, match="weights"):     # the library raises ...
        trainer.Trainer(trainer.parse(tiny(tmp_path, "--eval_freq", "1", "--eval_metrics", "fid")))
    with pytest.raises(ValueError, match="lpips"):
        trainer.Trainer(trainer.parse(tiny(tmp_path, "--eval_freq", "1", "--eval_metrics", "swd,lpips")))
    assert trainer.main(tiny(tmp_path, "--eval_freq", "1", "--eval_metrics", "swd,lpips")) == 2   # ... the CLI exits
    assert "qsattn-train: error: --eval_metrics ['lpips'] not available" in capsys.readouterr().err
