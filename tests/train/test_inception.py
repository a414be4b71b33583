"""The FID Inception loader (train/inception.py): torch-fidelity's network with randomly initialised
weights written to a local file (nothing is downloaded), and the errors when it cannot run."""
import fractions
import sys

import pytest
import torch

from qsattn_fast.train import inception as I


@pytest.fixture
def no_default_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(I.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_features_of_any_size_are_pool3_and_deterministic(random_inception_weights):
    net = I.load_inception(random_inception_weights)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.randint(0, 256, (3, 3, 37, 45), dtype=torch.uint8)
    (f,) = net(x)
    assert f.shape == (3, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert torch.equal(net(x)[0], f) and torch.allclose(net(x[1:2])[0], f[1:2], rtol=1e-4, atol=1e-6)
    assert (f[0] - f[1]).abs().max() > 1e-4          # the random network still tells images apart


def test_weights_found_through_the_environment_and_torch_hub(random_inception_weights, no_default_weights, monkeypatch,
                                                             tmp_path):
    monkeypatch.setenv(I.WEIGHTS_ENV, random_inception_weights)
    assert I.find_weights() == random_inception_weights
    monkeypatch.delenv(I.WEIGHTS_ENV)
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / I.PYTORCH_FID_FILE).write_bytes(b"")
    assert I.find_weights() == str(hub / I.PYTORCH_FID_FILE)
    assert I.find_weights(random_inception_weights) == random_inception_weights      # an explicit path wins


def test_missing_weights_say_which_file_and_where(no_default_weights):
    with pytest.raises(I.InceptionUnavailable) as e:
        I.load_inception()
    msg = str(e.value)
    assert I.WEIGHTS_FILE in msg and I.WEIGHTS_ENV in msg and "--inception-weights" in msg and I.WEIGHTS_URL in msg
    with pytest.raises(I.InceptionUnavailable, match="not a file"):
        I.find_weights("/nonexistent/inception.pth")


def test_wrong_or_unsafe_weight_files_are_named(tmp_path, random_inception_weights):
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(I.InceptionUnavailable, match="wrong.pth.*do not fit"):
        I.load_inception(str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"fc.weight": fractions.Fraction(1, 3)}, unsafe)   # arbitrary objects: refused, never run
    for f in (garbage, unsafe):
        with pytest.raises(I.InceptionUnavailable, match=f"{f.name}.*not a readable"):
            I.load_inception(str(f))


def test_import_leaves_no_stand_in_package_and_reports_a_missing_torch_fidelity(monkeypatch):
    cls = I.inception_class()
    assert cls.__name__ == "FeatureExtractorInceptionV3"
    pkg = sys.modules.get("torch_fidelity")
    assert pkg is None or hasattr(pkg, "__version__")       # only ever the real package
    monkeypatch.delitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", raising=False)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(I.InceptionUnavailable, match="pip install --no-deps torch-fidelity"):
        I.inception_class()
