"""benchmarks/study_synthetic.py on tiny runs: trains every (configuration, seed), resumes an interrupted
run instead of starting over, skips finished ones, and summarises over seeds."""
import json
import os
import sys

import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import study_synthetic as study  # noqa: E402

TINY = ("--synthetic_size 3 --load_size 36 --crop_size 32 --ngf 8 --ndf 8 --num_patches 16 --netF_nc 16 "
        "--eval_num_test 4 --display_freq 1000 --save_latest_freq 1000")


def test_study_trains_resumes_and_summarises(tmp_path, capsys):
    argv = ["--configs", "cut", "--seeds", "0", "1", "--epochs", "2", "--jobs", "2",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "study.json"), "--trainer_args", TINY,
            "--timing_rounds", "1"]
    # an interrupted run: one epoch of cut seed 1 done, with its latest state
    first = ["--configs", "cut", "--seeds", "1", "--epochs", "2", "--runs", str(tmp_path / "runs"),
             "--trainer_args", TINY + " --max_steps 3", "--out", str(tmp_path / "partial.json")]
    # stopped by --max_steps before its last epoch
    with pytest.raises(SystemExit, match="stopped before its last epoch"):
        study.main(first)
    assert not study.finished("cut", 1, study.parse(first))
    result = study.main(argv)
    log = capsys.readouterr().out
    assert "2 runs, 0 already finished" in log and "2/2 done" in log
    steps = [r["step"] for r in study.read_jsonl(str(tmp_path / "runs" / "cut-s1" / "loss_log.jsonl"))]
    assert steps == list(range(1, 7))  # resumed at step 4, not restarted
    assert set(result["summary"]) == {"cut"}
    for s in result["summary"].values():
        assert s["last"]["swd"]["n"] == 2 and s["steps"] == 6 and s["median_step_s"] > 0
    assert os.path.exists(tmp_path / "study.png")
    assert json.load(open(tmp_path / "study.json"))["runs"]["cut-s0"]["evals"][-1]["epoch"] == 2
    assert study.main(argv)["summary"].keys() == result["summary"].keys()  # all finished: nothing retrained
    assert "2 already finished, 0 to train" in capsys.readouterr().out


def test_every_configuration_is_a_valid_demo_run(tmp_path):
    """Each configuration's trainer argv parses, with the demo's budget and the configuration's model."""
    from qsattn_fast.train import options
    args = study.parse(["--runs", str(tmp_path)])
    for name in study.CONFIGS:
        opt = options.parse(study.run_argv(name, 0, args))
        model = "cycle_gan" if name == "cycle_gan" else name.split("_")[0]
        assert opt.model == model and opt.eval_freq == 1 and opt.name == f"{name}-s0"
        assert opt.qs_detach_attention == name.endswith("detached")
        if opt.model == "qs":
            assert opt.qs_mode == name[3:].replace("_detached", "").replace("_all", "")
            assert (opt.qs_layers == "all") == name.endswith("_all")


def test_welch_against_the_closed_form_of_two_degrees_of_freedom():
    """Two samples of two with equal variance: Welch's df is 2, where P(|T| > t) = 1 - t / sqrt(t^2 + 2)."""
    import math
    import random
    d, c = random.uniform(0.5, 2), random.uniform(-3, 3)
    w = study.welch([0.0, d], [c, c + d])
    t = (d / 2 - (c + d / 2)) / math.sqrt(2 * (d ** 2 / 2) / 2)   # means d/2, c + d/2; variances d^2/2
    assert w["t"] == pytest.approx(t) and w["df"] == pytest.approx(2)
    assert w["p"] == pytest.approx(1 - abs(t) / math.sqrt(t ** 2 + 2), abs=1e-6)
    assert study.welch([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])["p"] == pytest.approx(1.0)
    assert math.isnan(study.welch([1.0, 1.0], [2.0, 2.0])["p"])
