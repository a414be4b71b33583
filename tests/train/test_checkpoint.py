"""train/checkpoint.py: atomic writes, weights-only loading (pickled objects refused), CUT's file names."""
import collections
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
    C.save_networks(str(tmp_path), 7, nets)
    assert sorted(os.listdir(tmp_path)) == ["7_net_D.pth", "7_net_G.pth"]  # no temporary left behind
    fresh = {"G": nn.Linear(3, 4), "D": nn.Conv2d(2, 1, 3)}
    C.load_networks(str(tmp_path), 7, fresh)
    for k in nets:
        for a, b in zip(nets[k].state_dict().values(), fresh[k].state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="7_net_G.pth.*does not fit"):
        C.load_networks(str(tmp_path), 7, {"G": nn.Linear(3, 5)})


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    C.atomic_save({"a": torch.ones(1)}, str(path))
    with pytest.raises(Exception):
        C.atomic_save({"a": lambda: 0}, str(path))  # cannot be pickled
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert os.listdir(tmp_path) == ["latest_net_G.pth"]
