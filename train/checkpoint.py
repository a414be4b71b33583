"""Checkpoints as CUT writes them, plus a resume state.

``<checkpoints_dir>/<name>/<which>_net_{G,F,D}.pth``: plain ``state_dict``s (CPU tensors, no
``module.`` prefix), ``which`` = ``latest`` or the epoch number; CUT's ``load_networks`` reads them and
ours read CUT's. ``<which>_state.pth``: optimisers, epoch, iteration, RNG states and the options, for an
exact ``--continue_train``. Every file is written to a temporary name and renamed (atomic on POSIX), and
read with ``torch.load(weights_only=True)``: a file holding other pickled objects is refused.
"""
from __future__ import annotations

import os
import pickle

import torch


def atomic_save(obj, path: str) -> None:
    """torch.save to ``path`` through a temporary file in the same folder and an atomic rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_weights_only(path: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``; errors name the file (missing, or holding arbitrary
    pickled objects, which are refused)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:   # torch's message is a paragraph; its reason is one line of it
        reason = " ".join(str(e).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].split())
        raise ValueError(f"checkpoint: {path} is not a weights-only file (refusing to unpickle it): {reason}") from e
    except (RuntimeError, EOFError, OSError) as e:   # a truncated or foreign file
        raise ValueError(f"checkpoint: cannot read {path}: {' '.join(str(e).split())}") from e


def load_state_dict_file(path: str, map_location="cpu") -> dict:
    """A network ``state_dict`` from ``path`` (ours or CUT's); a ``module.`` prefix (DataParallel) is
    removed. Returns {key: tensor}."""
    sd = load_weights_only(path, map_location)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint: {path} does not hold a state_dict (a dict of tensors)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def net_path(save_dir: str, which, name: str) -> str:
    return os.path.join(save_dir, f"{which}_net_{name}.pth")


def state_path(save_dir: str, which) -> str:
    return os.path.join(save_dir, f"{which}_state.pth")


def save_networks(save_dir: str, which, nets: dict) -> None:
    """Write ``<which>_net_<name>.pth`` for each {name: module} as a CPU state_dict."""
    for name, net in nets.items():
        atomic_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, net_path(save_dir, which, name))


def load_networks(load_dir: str, which, nets: dict) -> None:
    """Load ``<which>_net_<name>.pth`` into each {name: module} (strict; errors name the file)."""
    for name, net in nets.items():
        path = net_path(load_dir, which, name)
        sd = load_state_dict_file(path)
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"checkpoint: {path} does not fit net{name} of these options: {e}") from e
