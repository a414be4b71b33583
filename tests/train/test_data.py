"""train/data.py: folder dataset (CUT's layout and preprocessing), errors naming files and folders,
the synthetic pair, and the epoch sampler's order, sharding and skipping."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from qsattn_fast.train import data as D


def write_images(folder, n, size=(40, 30), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"im{i}.png")


def test_unaligned_dataset_items(tmp_path):
    write_images(tmp_path / "trainA", 3)
    write_images(tmp_path / "trainB", 5, seed=1)
    ds = D.UnalignedDataset(str(tmp_path), load_size=36, crop_size=32)
    assert len(ds) == 5
    item = ds[(4, 123)]
    assert item["A"].shape == (3, 32, 32) and item["B"].shape == (3, 32, 32)
    assert item["A_paths"].endswith("im1.png")  # index 4 % 3
    assert -1 <= item["A"].min() and item["A"].max() <= 1
    again = ds[(4, 123)]
    assert torch.equal(item["A"], again["A"]) and item["B_paths"] == again["B_paths"]


def test_resize_and_crop_is_bicubic_then_crop(tmp_path):
    """Without flip the crop is a window of Pillow's bicubic resize to load_size, scaled to [-1, 1]."""
    write_images(tmp_path / "trainA", 1, size=(50, 20))
    write_images(tmp_path / "trainB", 1)
    ds = D.UnalignedDataset(str(tmp_path), load_size=24, crop_size=16, no_flip=True, serial_batches=True)
    a = ds[(0, 7)]["A"]
    full = Image.open(tmp_path / "trainA" / "im0.png").convert("RGB").resize((24, 24), Image.BICUBIC)
    full = torch.from_numpy(np.array(full)).permute(2, 0, 1).float() / 127.5 - 1
    hits = [(top, left) for top in range(9) for left in range(9)
            if torch.equal(full[:, top:top + 16, left:left + 16], a)]
    assert hits, "the crop is not a window of the bicubic resize"


def test_preprocess_none_rounds_to_multiple_of_4():
    img = Image.new("RGB", (41, 30))
    assert D.resize_for(img, "none", 0, 0).size == (40, 32)
    assert D.resize_for(img, "scale_width", 20, 16).size == (20, 16)
    with pytest.raises(ValueError, match="preprocess"):
        D.resize_for(img, "zoom", 1, 1)


def test_missing_and_empty_folders_name_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainA/ and trainB/"):
        D.UnalignedDataset(str(tmp_path / "nope"))
    write_images(tmp_path / "trainA", 1)
    with pytest.raises(FileNotFoundError, match="trainB"):
        D.UnalignedDataset(str(tmp_path))
    (tmp_path / "trainB").mkdir()
    (tmp_path / "trainB" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        D.UnalignedDataset(str(tmp_path))


def test_corrupt_image_error_names_the_file(tmp_path):
    write_images(tmp_path / "trainA", 1)
    write_images(tmp_path / "trainB", 1)
    bad = tmp_path / "trainB" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match="trainB.*1 of 2 images cannot be read.*broken.jpg"):   # at construction
        D.UnalignedDataset(str(tmp_path), load_size=36, crop_size=32, serial_batches=True)
    ds = D.UnalignedDataset(str(tmp_path), load_size=36, crop_size=32, serial_batches=True, skip_bad_images=True)
    assert [os.path.basename(p) for p in ds.B_paths] == ["im0.png"]
    with pytest.raises(ValueError, match="broken.jpg"):
        D.load_image(str(bad))
    truncated = tmp_path / "trainA" / "cut.png"
    raw = (tmp_path / "trainA" / "im0.png").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        D.load_image(str(truncated))


@pytest.mark.parametrize("size", [24, 37])
def test_synthetic_stripes_pair_is_deterministic_and_masked(size):
    a, b, m = D.synthetic_pair(3, 5, size, "stripes")
    a2, b2, m2 = D.synthetic_pair(3, 5, size, "stripes")
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(m, m2)
    assert a.shape == b.shape == (3, size, size) and m.shape == (size, size) and m.dtype == torch.bool
    assert a.min() >= -1 and a.max() <= 1 and b.min() >= -1 and b.max() <= 1
    assert 0 < m.sum() < size * size
    assert torch.equal(a[:, ~m], b[:, ~m])  # the background is shared
    inside_a, inside_b = a[:, m], b[:, m]
    assert inside_a.std(dim=1).max() < 1e-6  # plain colour
    assert set(inside_b.unique().tolist()) <= {-0.9, 0.9} or torch.allclose(inside_b.abs(), torch.tensor(0.9))
    other = D.synthetic_pair(4, 5, size, "stripes")[0]
    assert not torch.equal(a, other)


@pytest.mark.parametrize("size", [24, 37, 48])
def test_synthetic_recolour_pair(size):
    """Deterministic per (seed, index); B = A with red and blue swapped on the object less its grey mark;
    A's object is warm (red > blue), B's cool; background and mark identical and grey."""
    seed, index = (int(v) for v in torch.randint(0, 10_000, (2,)))
    a, b, m = D.synthetic_pair(seed, index, size)
    assert all(torch.equal(x, y) for x, y in zip((a, b, m), D.synthetic_pair(seed, index, size)))
    assert a.shape == b.shape == (3, size, size) and m.dtype == torch.bool and 0 < m.sum() < size * size
    assert a.min() >= -1 and a.max() <= 1 and b.min() >= -1 and b.max() <= 1
    changed = (a != b).any(0)
    assert changed.any() and not (changed & ~m).any()                 # only the object changes
    mark = m & ~changed
    assert mark.any()                                                  # the inner mark, kept
    assert torch.equal(b[:, changed], a[:, changed].flip(0))           # red <-> blue
    assert (a[0, changed] - a[2, changed]).min() > 0.8                 # warm in A, cool in B
    assert torch.equal(a[0, ~changed], a[2, ~changed]) and torch.equal(a[0, ~changed], a[1, ~changed])  # grey
    assert not torch.equal(a, D.synthetic_pair(seed + 1, index, size)[0])
    with pytest.raises(ValueError, match="synthetic task"):
        D.synthetic_pair(seed, index, size, "zebras")


def _stripe_edges(b, m):
    """Neighbour pairs inside the mask whose stripe sign differs (horizontal and vertical)."""
    s, inner = b[0] > 0, m
    return int(((s[:, 1:] != s[:, :-1]) & inner[:, 1:] & inner[:, :-1]).sum()
               + ((s[1:] != s[:-1]) & inner[1:] & inner[:-1]).sum())


def test_synthetic_period_scale_changes_only_the_period():
    seed, size = int(torch.randint(0, 1000, ())), 96
    edges = {1.0: 0, 2.0: 0}
    for i in range(12):
        a1, b1, m1 = D.synthetic_pair(seed, i, size, "stripes")
        a2, b2, m2 = D.synthetic_pair(seed, i, size, "stripes", period_scale=2.0)
        assert torch.equal(a1, a2) and torch.equal(m1, m2) and torch.equal(b1[:, ~m1], b2[:, ~m2])
        assert torch.equal(b1, D.synthetic_pair(seed, i, size, "stripes", period_scale=1.0)[1])
        edges[1.0] += _stripe_edges(b1, m1)
        edges[2.0] += _stripe_edges(b2, m2)
    assert 0.35 < edges[2.0] / edges[1.0] < 0.65   # twice the period: about half the stripe edges
    with pytest.raises(ValueError, match="period_scale"):
        D.synthetic_pair(seed, 0, size, period_scale=0)


def test_synthetic_dataset_items():
    ds = D.SyntheticDataset(seed=1, length=6, load_size=40, crop_size=32, task="stripes")
    item = ds[(2, 99)]
    assert item["A"].shape == (3, 32, 32) and len(ds) == 6
    assert torch.equal(item["A"], ds[(2, 99)]["A"])
    coarse = D.SyntheticDataset(seed=1, length=6, load_size=40, crop_size=32, task="stripes", period_scale=2.0)[(2, 99)]
    assert torch.equal(coarse["A"], item["A"]) and not torch.equal(coarse["B"], item["B"])
    whole = D.SyntheticDataset(seed=1, length=6, load_size=32, crop_size=32, no_flip=True, serial_batches=True)
    a, b, _ = D.synthetic_pair(1, 2, 32)   # the default task, recolour; uncropped, paired with serial_batches
    assert torch.equal(whole[(2, 99)]["A"], a) and torch.equal(whole[(2, 99)]["B"], b)
    with pytest.raises(ValueError, match="synthetic task"):
        D.SyntheticDataset(task="zebras")
    with pytest.raises(ValueError, match="crop_size"):
        D.SyntheticDataset(crop_size=80, load_size=40)


@pytest.mark.parametrize("length,world", [(7, 1), (7, 2), (10, 3)])
def test_epoch_sampler_shards_cover_the_epoch(length, world):
    shards = [D.EpochSampler(length, 5, 2, r, world).keys() for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(D.EpochSampler(length, 5, 2, 0, world))
    assert {i for s in shards for i, _ in s} == set(range(length))
    skipped = D.EpochSampler(length, 5, 2, 0, world, skip=2).keys()
    assert skipped == shards[0][2:]
    other_epoch = D.EpochSampler(length, 5, 3, 0, 1).keys()
    assert other_epoch != D.EpochSampler(length, 5, 2, 0, 1).keys()
    assert [i for i, _ in D.EpochSampler(length, 5, 2, serial=True).keys()] == list(range(length))
