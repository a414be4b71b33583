"""Helpers of the trainer tests: the tiny settings (32x32 crops, ngf 8, 6 blocks, 16 patches), one thread,
the trainer's log, and CycleGAN's image pool as an oracle."""
import json
import os

import pytest
import torch

from qsattn_fast.train import trainer

TINY = ["--dataset_mode", "synthetic", "--synthetic_size", "4", "--load_size", "36", "--crop_size", "32",
        "--ngf", "8", "--ndf", "8", "--netG", "resnet_6blocks", "--num_patches", "16", "--netF_nc", "16",
        "--gpu_ids", "-1", "--num_threads", "0", "--n_epochs", "1", "--n_epochs_decay", "1",
        "--print_freq", "1", "--display_freq", "1000", "--save_latest_freq", "1000"]


def tiny(tmp_path, *extra, name="run"):
    """The tiny argv with checkpoints under ``tmp_path`` plus ``extra`` flags."""
    return TINY + ["--checkpoints_dir", str(tmp_path), "--name", name, *extra]


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: steps this small gain nothing from two, and on a shared 2-core
    machine two spinning OpenMP threads per process make them tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_log(path):
    """The trainer's log in the experiment folder ``path``: one dict per line."""
    with open(os.path.join(path, trainer.LOG_NAME)) as f:
        return [json.loads(line) for line in f]


def pool_query(stored, images, size, gen):
    """CycleGAN's image pool, transcribed from its specification: ``stored`` (a list, updated) holds up
    to ``size`` images; each image of the batch in turn is stored and returned while the pool is not
    full, else with u = rand(gen) > 0.5 a stored image j = randint(size, gen) is returned and replaced,
    else the image itself is returned. Returns (the batch, how many came from the pool)."""
    if size == 0:
        return images, 0
    out, from_pool = [], 0
    for x in images:
        if len(stored) < size:
            stored.append(x)
            out.append(x)
        elif torch.rand((), generator=gen).item() > 0.5:
            j = torch.randint(0, size, (), generator=gen).item()
            out.append(stored[j])
            stored[j] = x
            from_pool += 1
        else:
            out.append(x)
    return torch.stack(out), from_pool
