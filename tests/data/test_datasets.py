import os

import numpy as np
import pytest
import torch
from PIL import Image

from genperf.data import Batches, digits_arrays, load_dataset
from genperf.data.celeba import CelebAFolder
from genperf.data.toy import toy_mixture
from genperf.errors import DataError


def test_digits_are_8bit_images():
    from sklearn.datasets import load_digits

    pixels, labels = digits_arrays()  # read from sklearn's CSV without importing sklearn
    reference = load_digits()
    assert np.array_equal(pixels, reference.images) and np.array_equal(labels, reference.target)
    data = load_dataset("digits")
    assert data.train.shape == (1597, 1, 8, 8) and data.heldout.shape == (200, 1, 8, 8)
    assert data.train.dtype == torch.uint8 and data.train.max() == 255


@pytest.mark.parametrize("name, modes", [("ring8", 8), ("grid25", 25)])
def test_toy_mixtures_cover_their_modes(name, modes):
    data = load_dataset(name)
    centers, std = toy_mixture(name)
    assert len(centers) == modes and data.shape == (2,)
    nearest = torch.cdist(data.train, centers).min(1)
    assert (nearest.values < 4 * std).float().mean() > 0.999
    counts = torch.bincount(nearest.indices, minlength=modes).float()
    assert counts.min() > 0.8 * counts.mean()


def test_resize_and_synthetic():
    data = load_dataset("synthetic", image_size=16, channels=3)
    assert data.shape == (3, 16, 16)
    assert load_dataset("digits", image_size=28).train.shape[1:] == (1, 28, 28)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        load_dataset("cifar")


def _celeba(root, n=6, partition=True):
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:218, 0:178]
    for i in range(n):
        img = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)
    if partition:
        with open(root / "celeba" / "list_eval_partition.txt", "w") as f:
            for i in range(n):
                f.write(f"{i:06d}.jpg {0 if i < 4 else (1 if i == 4 else 2)}\n")
    return folder


def test_celeba_layout_split_and_preprocessing(tmp_path):
    _celeba(tmp_path)
    train = CelebAFolder(str(tmp_path), "train", 64)
    assert len(train) == 4 and len(CelebAFolder(str(tmp_path), "test", 64)) == 1
    x = train[0]
    assert x.shape == (3, 64, 64) and 0 <= x.min() and x.max() <= 1
    data = load_dataset("celeba", str(tmp_path), image_size=32)
    assert data.shape == (3, 32, 32) and len(data.train) == 4


def test_celeba_partition_naming_missing_images(tmp_path):
    folder = _celeba(tmp_path)
    os.remove(folder / "000002.jpg")
    with pytest.raises(DataError, match="names 1 images missing"):
        CelebAFolder(str(tmp_path), "train")


def test_batches_are_deterministic_resumable_and_sharded():
    source = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    full = Batches(source, 8, seed=3)
    epoch = [b.flatten() for b in full.epoch(2)]
    assert len(epoch) == 5 and torch.equal(torch.cat(epoch).sort().values * 255, torch.arange(40.0))
    resumed = [b.flatten() for b in full.epoch(2, start=3)]
    assert all(torch.equal(a, b) for a, b in zip(epoch[3:], resumed))
    assert not torch.equal(torch.cat(epoch), torch.cat([b.flatten() for b in full.epoch(3)]))
    ranks = [[b.flatten() for b in Batches(source, 8, seed=3, rank=r, world_size=2).epoch(2)] for r in range(2)]
    for k in range(5):  # the two ranks' halves make up the global batch, disjointly
        assert torch.equal(torch.cat([ranks[0][k], ranks[1][k]]), epoch[k])
    with pytest.raises(DataError, match="not divisible"):
        Batches(source, 9, world_size=2)


def test_in_memory_data_moves_to_the_device_once_and_batches_follow_the_seeded_order():
    """Batch k of epoch e is source[randperm(seed * 100003 + e)[kB:(k+1)B]] / 255, as it always was,
    now sliced from a copy of the data on the device (meta stands in for a GPU here)."""
    source = torch.randint(0, 256, (50, 1, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(7 * 100_003 + 4))
    got = list(Batches(source, 16, seed=7).epoch(4))
    assert len(got) == 3
    for k, batch in enumerate(got):
        assert batch.dtype == torch.float32
        assert torch.equal(batch, source[order[16 * k : 16 * (k + 1)]].float() / 255)
    on_meta = Batches(source, 16, seed=7, device="meta")
    assert on_meta.source.device.type == "meta" and on_meta.source.dtype == torch.uint8  # moved once, still uint8
    batch = next(on_meta.epoch(4))
    assert batch.device.type == "meta" and batch.shape == (16, 1, 3, 3) and batch.dtype == torch.float32
