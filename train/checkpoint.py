"""Checkpoints as CUT writes them, plus a resume state; each checkpoint all or nothing.

``<checkpoints_dir>/<name>/<which>_net_<net>.pth``: plain ``state_dict``s (CPU tensors, no ``module.``
prefix), ``which`` = ``latest``, ``best`` or the epoch number, ``<net>`` each of the model's networks (G,
F, D; CycleGAN's G_A, G_B, D_A, D_B); CUT's ``load_networks`` reads them and ours read CUT's.
``<which>_state.pth``: optimisers, epoch, iteration and RNG states, for an exact ``--continue_train``.
Files are read with ``torch.load(weights_only=True)``: a file holding other pickled objects is refused.

One checkpoint is the set of its files (:func:`save_checkpoint`), written all or nothing: into the
staging folder ``.<which>.saving/``, which is renamed ``.<which>.committed/`` once every file is on disk
(the commit), and then moved to their names. A save cut short before the commit leaves the previous
set, after it the new one (:func:`recover` deletes a staging folder and finishes a commit); never a mix.
Nothing holding a non-finite tensor is written (:class:`NonFiniteError`).
"""
from __future__ import annotations

import os
import pickle
import shutil

import torch

STAGING, COMMITTED = ".saving", ".committed"   # the suffixes of .<which>.saving/ and .<which>.committed/


class NonFiniteError(ValueError):
    """Weights, optimiser states or losses that are not finite (NaN or infinite)."""


def _leaves(obj, key=""):
    """(key path, tensor) for every tensor in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{key}/{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{key}/{i}" if key else str(i))


def first_nonfinite(obj) -> str | None:
    """``"<key>: <n> of <numel> values"`` for the first floating tensor in ``obj`` (nested dicts, lists,
    tuples) holding NaN or infinite values; None when every one is finite."""
    for key, t in _leaves(obj):
        if t.is_floating_point() or t.is_complex():
            n = int((~torch.isfinite(t)).sum())
            if n:
                return f"{key}: {n} of {t.numel()} values"
    return None


def _cpu(obj):
    """``obj`` with every tensor detached and copied to the CPU (nested dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _write(obj, path: str) -> None:
    """torch.save to ``path`` through an unbuffered file (a full disk raises OSError ENOSPC, not
    torch's RuntimeError), then fsync."""
    with open(path, "wb", buffering=0) as f:
        torch.save(obj, f)
        os.fsync(f.fileno())


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(committed: str, folder: str) -> None:
    """Move a committed set's files to their names in ``folder``, then remove its folder."""
    for name in sorted(os.listdir(committed)):
        os.replace(os.path.join(committed, name), os.path.join(folder, name))
    _fsync_dir(folder)
    os.rmdir(committed)


def recover(folder: str) -> None:
    """Finish or undo the saves that were cut short in ``folder``: a committed set's remaining files are
    moved to their names, a staging folder (an uncommitted set) is deleted."""
    if not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if entry.startswith(".") and entry.endswith(COMMITTED):
            _publish(path, folder)
        elif entry.startswith(".") and entry.endswith(STAGING):
            shutil.rmtree(path)


def save_checkpoint(folder: str, which, nets: dict, state: dict | None = None) -> None:
    """Write checkpoint ``which`` into ``folder``, all or nothing: ``<which>_net_<name>.pth`` for each
    {name: module} (CPU state_dicts) and ``<which>_state.pth`` when ``state`` is given (its tensors
    copied to the CPU). Raises NonFiniteError, writing nothing, when a tensor is not finite, and OSError
    (one line) when the folder cannot be written (full disk, permissions), the previous set intact."""
    files = {os.path.basename(net_path(folder, which, name)): _cpu(net.state_dict()) for name, net in nets.items()}
    if state is not None:
        files[os.path.basename(state_path(folder, which))] = _cpu(state)
    for name, obj in files.items():
        bad = first_nonfinite(obj)
        if bad:
            raise NonFiniteError(f"checkpoint: not saving {which}: {name} holds non-finite values ({bad})")
    recover(folder)
    stage, committed = (os.path.join(folder, f".{which}{suffix}") for suffix in (STAGING, COMMITTED))
    try:
        os.makedirs(stage)
        for name, obj in files.items():
            _write(obj, os.path.join(stage, name))
        os.replace(stage, committed)   # the commit
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise OSError(f"checkpoint: cannot write {which} to {folder} ({e.strerror or e}); the previous "
                      f"{which} checkpoint is intact") from e
    _publish(committed, folder)


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


def load_networks(load_dir: str, which, nets: dict) -> None:
    """Load ``<which>_net_<name>.pth`` into each {name: module} (strict; errors name the file)."""
    for name, net in nets.items():
        path = net_path(load_dir, which, name)
        sd = load_state_dict_file(path)
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"checkpoint: {path} does not fit net{name} of these options: {e}") from e
