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
    from qsattn_fast.backends import native
    if native.LOAD_ERROR is None:
        from qsattn_fast import _C
        assert f"compiled extension qsattn_fast._C: built; CPU loops at {_C.cpu_isa()}" in out
    assert f"limits on cuda: window <= {qsattn_fast.backends()['native'].limits['cuda']['window']}" in out


def test_openmp_waits_passively_unless_told_otherwise():
    """Imported before torch (as by the command lines), qsattn_fast sets OMP_WAIT_POLICY=PASSIVE; a value in
    the environment wins, and after torch it changes nothing (OpenMP has read the environment by then)."""
    import os
    probe = "import os, {first}; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def policy(first, **extra):
        return subprocess.run([sys.executable, "-c", probe.format(first=first)], capture_output=True, text=True,
                              check=True, env={**env, **extra}).stdout.split()[-1]
    assert policy("qsattn_fast") == "PASSIVE"
    assert policy("qsattn_fast", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert policy("torch, qsattn_fast") == "None"
