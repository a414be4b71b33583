"""The Inception-v3 of FID and KID, from torch-fidelity, with weights from a local file.

The network is torch-fidelity's ``FeatureExtractorInceptionV3``: the TensorFlow FID graph
(``pool_3``, 2048 features) ported to PyTorch, fed uint8 images of any size, which it resizes to
299 x 299 with TensorFlow-1's bilinear rule and maps to [-1, 1] as the TF graph does. Its weights
(``weights-inception-2015-12-05-6726825d.pth``) are the TF FID weights that pytorch-fid also converts
(``pt_inception-2015-12-05-6726825d.pth``, the same parameter names and shapes).

These machines cannot download weights, so they are looked up locally, in this order:
``--inception-weights PATH`` (the ``weights`` argument), ``$QSATTN_INCEPTION_WEIGHTS``, then both file
names in torch hub's checkpoint folder (where torch-fidelity, torchmetrics and pytorch-fid cache them).
The file is first read with ``torch.load(weights_only=True)`` and its keys and shapes checked, so a
wrong or unsafe file fails with a message naming it.

Why torch-fidelity and how it is imported: it is the package that torchmetrics' FID/KID run on, and its
Inception module needs only torch. Its package ``__init__`` however imports its CLIP/VGG extractors,
which import torchvision, and PyPI has no torchvision that loads with the CPU build of torch (its wheels
link libtorch_cuda). Install it with ``pip install --no-deps torch-fidelity``; when ``import
torch_fidelity`` fails for want of torchvision, :func:`inception_class` imports only the Inception
module, under an empty stand-in for the package that is removed again afterwards.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

WEIGHTS_ENV = "QSATTN_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILE
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
FEATURE = "2048"  # pool_3 features, those of FID and KID


class InceptionUnavailable(RuntimeError):
    """FID/KID cannot run: torch-fidelity or the weights file is missing (the message says what to do)."""


def inception_class():
    """torch-fidelity's ``FeatureExtractorInceptionV3`` class (see the module docstring)."""
    name = "torch_fidelity.feature_extractor_inceptionv3"
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    except ModuleNotFoundError as e:
        if e.name == "torch_fidelity" or importlib.util.find_spec("torch_fidelity") is None:
            raise InceptionUnavailable(
                "FID/KID need the package torch-fidelity (its Inception-v3 port): "
                "pip install --no-deps torch-fidelity") from e
        if e.name != "torchvision":
            raise
    spec = importlib.util.find_spec("torch_fidelity")
    stand_in = importlib.util.module_from_spec(spec)   # the package, without running its __init__
    sys.modules["torch_fidelity"] = stand_in
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    finally:
        if sys.modules.get("torch_fidelity") is stand_in:
            del sys.modules["torch_fidelity"]


def default_weight_paths() -> list[str]:
    """Where weights are looked for after an explicit path: $QSATTN_INCEPTION_WEIGHTS, then torch hub."""
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    env = os.environ.get(WEIGHTS_ENV)
    return ([env] if env else []) + [os.path.join(hub, WEIGHTS_FILE), os.path.join(hub, PYTORCH_FID_FILE)]


def find_weights(path: str | None = None) -> str:
    """The weights file to use: ``path`` if given (it must exist), else the first default that exists;
    raises :class:`InceptionUnavailable` saying which file to obtain and where to put it."""
    if path is not None:
        if not os.path.isfile(path):
            raise InceptionUnavailable(f"--inception-weights: {path} is not a file")
        return path
    candidates = default_weight_paths()
    for p in candidates:
        if os.path.isfile(p):
            return p
    raise InceptionUnavailable(
        "FID/KID need the Inception-v3 FID weights, which are not downloaded on this machine. Obtain "
        f"{WEIGHTS_FILE} ({WEIGHTS_URL}; or pytorch-fid's {PYTORCH_FID_FILE}) and pass "
        f"--inception-weights PATH, set {WEIGHTS_ENV}=PATH, or put it at {candidates[-2]}. "
        f"Looked in: {', '.join(candidates)}. (Ask for swd alone to skip FID/KID.)")


def load_inception(path: str | None = None, device="cpu") -> torch.nn.Module:
    """The FID Inception-v3 in eval mode on ``device``, weights from :func:`find_weights`; calling it on
    uint8 (B, 3, H, W) images returns a 1-tuple with the (B, 2048) float32 pool features."""
    cls = inception_class()
    path = find_weights(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise InceptionUnavailable(f"Inception weights {path}: not a readable weights-only state_dict ({e})") from e
    if not isinstance(sd, dict):
        raise InceptionUnavailable(f"Inception weights {path}: expected a state_dict, got {type(sd).__name__}")
    try:
        net = cls("inception-v3-compat", [FEATURE], feature_extractor_weights_path=path)
    except RuntimeError as e:
        raise InceptionUnavailable(f"Inception weights {path}: keys/shapes do not fit the FID Inception-v3 "
                                   f"({len(sd)} entries): {str(e)[:300]}") from e
    return net.to(device)
