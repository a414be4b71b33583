"""Shared fixtures: fresh random seeds (printed, so a failure can be replayed), the native loops at every
CPU level, random Inception weights. Helper modules live in tests/support (imported as ``support``)."""
import os
import random

import pytest
import torch

try:   # Triton and the kernels first, with the interpreter on where no GPU is (support/triton_env.py): a test
    from support import triton_env  # noqa: F401  module that imports triton earlier would leave it off.
except pytest.skip.Exception:       # triton missing: the triton tests skip on their own import
    pass


@pytest.fixture(autouse=True)
def fresh_seed():
    """Seed torch from the OS for every test; QSATTN_TEST_SEED=<n> replays a failure."""
    seed = int(os.environ.get("QSATTN_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    print(f"QSATTN_TEST_SEED={seed}")
    return seed


def _cpu_levels():
    """The instruction-set levels of the native CPU loops that this CPU can run (csrc/cpu_common.cpp)."""
    try:
        from qsattn_fast import _C
    except ImportError:
        return [None]
    top = _C.set_cpu_level(-1)
    return list(range(top + 1)) if top >= 0 else [None]


@pytest.fixture(params=_cpu_levels(), ids=lambda level: f"level{level}")
def cpu_level(request):
    """Runs the test with the native float loops at each level this CPU has (x86-64, -v3, -v4): the
    dispatch paths another machine takes are tested here too."""
    if request.param is None:
        yield None
        return
    from qsattn_fast import _C
    _C.set_cpu_level(request.param)
    try:
        yield _C.cpu_isa()
    finally:
        _C.set_cpu_level(-1)


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """A weights file of the FID Inception's layout with random (Kaiming) convolutions."""
    import importlib.util
    from unittest import mock

    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")

    from qsattn_fast.train import inception as I

    cls = I.inception_class()
    with mock.patch.object(cls, "load_state_dict", lambda self, sd, strict=True: None), \
            mock.patch("torch.load", lambda *a, **k: {}):
        net = cls("inception-v3-compat", [I.FEATURE], feature_extractor_weights_path="unused")
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)
