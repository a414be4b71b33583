"""Tiny trainer settings shared by the trainer tests (32x32 crops, ngf 8, 6 blocks, 16 patches)."""
import pytest
import torch
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
