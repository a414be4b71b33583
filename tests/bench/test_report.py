"""benchmarks/report.py's figure: ``--plot`` redraws the PNG beside a committed report through
qsattn_fast.plots, and neither the report nor ``import qsattn_fast`` loads the trainer or matplotlib."""
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from support import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402


def test_plot_redraws_the_png_beside_a_report(tmp_path, capsys):
    """Two panels of 5.2 x 4.0 inches at 100 dpi, written in place of nothing but the PNG."""
    committed = ROOT / "benchmarks" / "results" / "report-cpu-epyc-2026-12-03.json"
    shutil.copy(committed, tmp_path / committed.name)
    assert report.main(["--plot", str(tmp_path / committed.name)]) == 0
    png = tmp_path / committed.with_suffix(".png").name
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    img = np.asarray(Image.open(png).convert("L"))
    assert img.shape == (400, 1040) and (img < 128).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([committed.name, png.name])   # no temporary left


def test_the_report_draws_without_the_trainer_and_imports_matplotlib_only_to_draw(tmp_path):
    shutil.copy(ROOT / "benchmarks" / "results" / "report-cpu-epyc-2026-12-03.json", tmp_path / "r.json")
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import qsattn_fast, qsattn_fast.plots, report\n"
            "loaded = lambda name: [m for m in sys.modules if m == name or m.startswith(name + '.')]\n"
            "assert not loaded('matplotlib'), loaded('matplotlib')\n"
            f"report.main(['--plot', {str(tmp_path / 'r.json')!r}])\n"
            "assert loaded('matplotlib') and not loaded('qsattn_fast.train'), loaded('qsattn_fast.train')")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
