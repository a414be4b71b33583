"""train/checkpoint.py: all-or-nothing sets of CUT's files, no non-finite tensor written, one-line write
errors, weights-only loading (pickled objects refused). A save cut short at every point, then resumed:
tests/train/test_trainer.py."""
import collections
import errno
import os

import pytest
import torch
from torch import nn

from qsattn_fast.train import checkpoint as C


class Payload:
    """An arbitrary object: a weights-only load must refuse to construct it."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil_net_G.pth"
    torch.save({"model.1.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(ValueError, match="evil_net_G.pth.*weights-only"):
        C.load_state_dict_file(str(path))


def test_not_a_state_dict_and_missing_file(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="state_dict"):
        C.load_state_dict_file(str(path))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        C.load_state_dict_file(str(tmp_path / "nothere.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        C.load_state_dict_file(str(garbage))


def test_module_prefix_is_stripped_and_ordered_dicts_load(tmp_path):
    w = torch.randn(3, 2)
    path = tmp_path / "dp_net_G.pth"
    torch.save(collections.OrderedDict([("module.model.1.weight", w)]), path)
    sd = C.load_state_dict_file(str(path))
    assert list(sd) == ["model.1.weight"] and torch.equal(sd["model.1.weight"], w)


def test_save_and_load_networks_round_trip(tmp_path):
    nets = {"G": nn.Linear(3, 4), "D": nn.Conv2d(2, 1, 3)}
    C.save_checkpoint(str(tmp_path), 7, nets)
    assert sorted(os.listdir(tmp_path)) == ["7_net_D.pth", "7_net_G.pth"]  # no staging folder left behind
    fresh = {"G": nn.Linear(3, 4), "D": nn.Conv2d(2, 1, 3)}
    C.load_networks(str(tmp_path), 7, fresh)
    for k in nets:
        for a, b in zip(nets[k].state_dict().values(), fresh[k].state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="7_net_G.pth.*does not fit"):
        C.load_networks(str(tmp_path), 7, {"G": nn.Linear(3, 5)})


def _set(seed):
    """Two random networks and a resume state tagged with ``seed``."""
    torch.manual_seed(seed)
    return {"G": nn.Linear(3, 4), "D": nn.Conv2d(2, 1, 3)}, {"step": seed, "adam": {"exp_avg": torch.randn(5)}}


def _assert_holds(folder, nets, state):
    for name, net in nets.items():
        sd = C.load_state_dict_file(C.net_path(str(folder), "latest", name))
        assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items()), name
    saved = C.load_weights_only(C.state_path(str(folder), "latest"))
    assert saved["step"] == state["step"] and torch.equal(saved["adam"]["exp_avg"], state["adam"]["exp_avg"])


@pytest.mark.parametrize("where,error", [("_write", errno.ENOSPC), ("makedirs", errno.EACCES)])
def test_a_full_disk_or_unwritable_folder_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where, error):
    """ENOSPC on the second file, or a folder that cannot be written: one-line OSError naming the
    reason, nothing of the new set left, the previous set whole."""
    old, new = _set(1), _set(2)
    C.save_checkpoint(str(tmp_path), "latest", *old)
    write, makedirs = C._write, os.makedirs
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if where == "makedirs" or len(calls) == 2:
            raise OSError(error, os.strerror(error))
        return (makedirs if where == "makedirs" else write)(*args, **kwargs)

    monkeypatch.setattr(*((C.os, "makedirs") if where == "makedirs" else (C, "_write")), failing)
    with pytest.raises(OSError) as e:
        C.save_checkpoint(str(tmp_path), "latest", *new)
    assert os.strerror(error) in str(e.value) and "intact" in str(e.value) and "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["latest_net_D.pth", "latest_net_G.pth", "latest_state.pth"]
    _assert_holds(tmp_path, *old)


def test_nothing_non_finite_is_written(tmp_path):
    """A NaN in a network or an infinity deep in the state: NonFiniteError naming the file and the key,
    and nothing is written."""
    nets, state = _set(3)
    with torch.no_grad():
        nets["D"].weight[0, 1, 2, 0] = float("nan")
    with pytest.raises(C.NonFiniteError, match=r"latest_net_D.pth.*weight: 1 of 18 values"):
        C.save_checkpoint(str(tmp_path), "latest", nets, state)
    nets, state = _set(3)
    state["adam"]["exp_avg"][2] = -float("inf")
    with pytest.raises(C.NonFiniteError, match=r"latest_state.pth.*adam/exp_avg: 1 of 5 values"):
        C.save_checkpoint(str(tmp_path), "latest", nets, state)
    assert os.listdir(tmp_path) == []
    assert C.first_nonfinite({"a": [torch.ones(2), (torch.arange(3), torch.zeros(1))]}) is None
