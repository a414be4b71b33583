"""``python -m qsattn_fast.info`` runs and reports every registered backend with its availability."""
import subprocess
import sys

import qsattn_fast


def test_info_lists_backends_and_availability():
    out = subprocess.run([sys.executable, "-m", "qsattn_fast.info"], capture_output=True, text=True, check=True).stdout
    assert f"qsattn_fast {qsattn_fast.__version__}" in out
    for name in qsattn_fast.backends():
        assert f"  {name} " in out
    assert "cpu   available" in out and "compiled extension qsattn_fast._C:" in out
    assert f"limits on cuda: window <= {qsattn_fast.backends()['native'].limits['cuda']['window']}" in out
