"""Shared test helpers: fresh random seeds (printed, so a failure can be replayed) and error measures."""
import os
import random

import pytest
import torch


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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN in out never passes)."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def features(B, C, H, W, dtype=torch.float32, scale=0.5, requires_grad=False):
    """Random NCHW features; ``scale`` sets how peaked the attention rows are (logits ~ scale^2 * C)."""
    x = (torch.randn(B, C, H, W, dtype=torch.float64) * scale).to(dtype)
    return x.requires_grad_(requires_grad)


def assert_valid_selection(idx, ref_entropy, k, tol):
    """docs/design.md §8: k distinct indices per image whose reference entropy is <= the reference k-th
    smallest + tol (near-ties may legitimately swap)."""
    assert idx.shape == (ref_entropy.shape[0], k) and idx.dtype == torch.int64
    kth = ref_entropy.sort(dim=1).values[:, k - 1:k]
    for b in range(idx.shape[0]):
        assert idx[b].unique().numel() == k, "selected indices are not distinct"
    picked = ref_entropy.gather(1, idx)
    assert bool((picked <= kth + tol).all()), f"selected entropies exceed the k-th smallest by {float((picked - kth).max())}"


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
