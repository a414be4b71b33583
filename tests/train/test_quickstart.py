"""The README's quick start, run as written (in-process, in a temporary folder), with the demo made tiny:
train --demo, write the held-out pairs, translate them with the experiment folder, evaluate."""
import json
import os
import re
import shlex

import pytest

from qsattn_fast.train import eval_cli, trainer, translate

from support import ROOT
from support.training import one_thread  # noqa: F401 (fixture)

README = str(ROOT / "README.md")
MAINS = {"qsattn-train": trainer.main, "qsattn-translate": translate.main, "qsattn-eval": eval_cli.main}
TINY_DEMO = ["--synthetic_size", "4", "--load_size", "36", "--crop_size", "32", "--ngf", "8", "--ndf", "8",
             "--num_patches", "16", "--netF_nc", "16", "--n_epochs", "1", "--n_epochs_decay", "1",
             "--eval_num_test", "4", "--display_freq", "1000"]


def quickstart_commands():
    """The qsattn-* commands of the README's first bash block (after the install's ``&&``)."""
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", open(README).read(), re.S).group(1)
    cmds = []
    for line in block.splitlines():
        line = line.split("#")[0].split("&&")[-1].strip()
        if line.startswith("qsattn-"):
            cmds.append(shlex.split(line))
    return cmds


def test_readme_quick_start_chain(tmp_path, monkeypatch, capsys, one_thread):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    cmds = quickstart_commands()
    assert [c[0] for c in cmds] == ["qsattn-train", "qsattn-eval", "qsattn-translate", "qsattn-eval"]
    for cmd in cmds:
        argv = cmd[1:]
        if cmd[0] == "qsattn-train":
            argv += TINY_DEMO
        elif "--write_synthetic" in argv:
            argv[argv.index("--num_test") + 1], argv[argv.index("--size") + 1] = "4", "32"
        assert MAINS[cmd[0]](argv) == 0, cmd
    out = capsys.readouterr().out
    assert len(os.listdir(tmp_path / "results" / "demo")) == 4
    measures = ("conformity", "shape_iou", "detail_error", "background_error", "changed_iou", "image_error")
    table = dict(line.split(None, 1) for line in out.splitlines()[-(len(measures) + 4):] if line.split())
    assert {*measures, "swd"} <= set(table)
    # The files' path gives the trainer's own held-out numbers (same items, same G, PNG rounding both ways).
    last = [json.loads(line) for line in open(tmp_path / "checkpoints" / "demo" / "eval_log.jsonl")][-1]["metrics"]
    for k in measures:
        assert float(table[k]) == pytest.approx(last[k], abs=1e-5), k
