"""Helpers of the test suite, importable as ``support`` (tests/conftest.py puts tests/ on the path):
numerics (the op tests' shapes, error measures, random maps, oracles and op calls), triton_env (the
Triton kernels, compiled or interpreted), training (the trainer tests' tiny settings, log reader and
pool oracle), official (the released code's outputs on a fixed example), the scripts the tests run in a
subprocess (aot_compile.py, ddp_worker.py) and data/."""
from pathlib import Path

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[2]
