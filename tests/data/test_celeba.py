"""CelebA through DALI and torchvision: splits, sharding, determinism, skipped files, pixel agreement."""

import os

import pytest
import torch

from genperf import config, train
from genperf.data import celeba, check_dataset, load_dataset, make_batches
from genperf.errors import DataError

dali = pytest.mark.skipif(not celeba.dali_available(), reason="nvidia-dali is not installed")
N = 40  # 32 train, 4 valid, 4 test


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    celeba.write_fake_celeba(str(root), N, seed=1)
    return str(root)


def _stack(batches, epoch=0, start=0):
    return torch.cat(list(batches.epoch(epoch, start)))


def _indices(images, reference):
    """For each image, the index of the reference image it is (nearest by mean abs difference)."""
    dist = (images.flatten(1)[:, None, :] - reference.flatten(1)[None, :, :]).abs().mean(-1)
    assert (dist.min(1).values < 2 / 255).all(), "an image matches no reference image"
    return dist.argmin(1).tolist()


def test_partition_file_selects_the_split(root):
    names = {
        split: [os.path.basename(p) for p in celeba.list_split(root, split)] for split in ("train", "valid", "test")
    }
    assert [len(names[s]) for s in ("train", "valid", "test")] == [32, 4, 4]
    assert names["train"][0] == "000001.jpg" and names["test"][-1] == f"{N:06d}.jpg"


@dali
def test_dali_matches_torchvision_pixels(root):
    data = load_dataset("celeba", root, image_size=64)
    ref = _stack(make_batches(data.heldout, 4, shuffle=False, drop_last=False, loader="torch", workers=0))
    got = _stack(make_batches(data.heldout, 4, shuffle=False, drop_last=False, loader="dali"))
    assert got.shape == ref.shape == (4, 3, 64, 64) and got.dtype == torch.float32
    diff = (got - ref).abs()
    # Both decode with libjpeg-turbo (fancy upsampling) and resize with an antialiased linear filter:
    # they differ by rounding in the resize, not by content.
    assert diff.mean() < 0.5 / 255 and diff.max() <= 3 / 255, (diff.mean() * 255, diff.max() * 255)


@dali
def test_two_ranks_see_disjoint_halves_that_make_up_the_split(root):
    folder = celeba.CelebAFolder(root, "train", 32, flip=False)
    reference = _stack(make_batches(folder, 32, shuffle=False, loader="torch", workers=0))
    for epoch in (0, 1):
        order = []
        for rank in (0, 1):
            batches = make_batches(folder, 8, seed=5, rank=rank, world_size=2, loader="dali")
            images = list(batches.epoch(epoch))
            assert len(images) == len(batches) == 4 and all(len(x) == 4 for x in images)
            order.append([_indices(x, reference) for x in images])
        flat = [i for rank in order for batch in rank for i in batch]
        assert sorted(flat) == list(range(32))  # every image once per epoch, no rank overlap
        expected = make_batches(folder, 8, seed=5, loader="torch")._order(epoch).view(4, 8).tolist()
        for b in range(4):  # rank r holds slice r of each global batch, as the torch loader does
            assert order[0][b] + order[1][b] == expected[b]


@dali
def test_dali_is_deterministic_and_resumes_mid_epoch(root):
    folder = celeba.CelebAFolder(root, "train", 32, flip=True)
    a, b = (_stack(make_batches(folder, 8, seed=3, loader="dali"), epoch=2) for _ in range(2))
    assert torch.equal(a, b)  # same seed, same order and the same flips
    resumed = _stack(make_batches(folder, 8, seed=3, loader="dali"), epoch=2, start=2)
    assert torch.equal(resumed, a[16:])
    other = _stack(make_batches(folder, 8, seed=3, loader="dali"), epoch=3)
    assert not torch.equal(a, other)
    flipped = _stack(make_batches(celeba.CelebAFolder(root, "train", 32, flip=False), 8, seed=3, loader="dali"), 2)
    mirrored = (a == flipped.flip(-1)).flatten(1).all(1)  # some images flipped, some not
    assert 0 < int(mirrored.sum()) < 32


@pytest.mark.parametrize("loader", [pytest.param("dali", marks=dali), "torch"])
def test_unreadable_files_are_skipped_counted_and_reported(tmp_path, loader):
    folder = celeba.write_fake_celeba(str(tmp_path), 12, partition=(1.0, 0.0))
    good = open(os.path.join(folder, "000001.jpg"), "rb").read()
    open(os.path.join(folder, "000002.jpg"), "wb").write(good[: len(good) // 2])  # truncated
    open(os.path.join(folder, "000003.jpg"), "wb").write(b"<html>not an image</html>")
    open(os.path.join(folder, "000004.jpg"), "wb").write(good[:3] + bytes(500) + good[-2:])  # header destroyed
    with open(os.path.join(tmp_path, "celeba", "list_eval_partition.txt"), "a") as f:
        f.write("000001.jpg 2\n")  # a held-out image, so the split exists
    data = load_dataset("celeba", str(tmp_path), image_size=32)
    assert len(data.train) == 9
    note = next(n for n in data.notes if "train" in n)
    assert note.startswith("celeba train: skipped 3 unreadable images: 000002.jpg (truncated JPEG")
    assert "000003.jpg (not a JPEG or PNG file)" in note and "000004.jpg (header does not parse" in note
    batches = make_batches(data.train, 3, loader=loader, workers=0 if loader == "torch" else 1)
    assert len(_stack(batches)) == 9  # a whole epoch, no crash


def test_missing_or_empty_folders_fail_at_start(tmp_path):
    with pytest.raises(DataError, match="CelebA not found"):
        load_dataset("celeba", str(tmp_path / "nowhere"))
    (tmp_path / "celeba" / "img_align_celeba").mkdir(parents=True)
    with pytest.raises(DataError, match="no images for the train split"):
        load_dataset("celeba", str(tmp_path))
    for name in ("a.jpg", "b.jpg"):  # a plain folder holds its last file out: train is a.jpg
        (tmp_path / "celeba" / "img_align_celeba" / name).write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 images .* is readable"):
        load_dataset("celeba", str(tmp_path))


def test_the_launchers_check_finds_missing_data_without_opening_images(root, tmp_path, monkeypatch):
    """check_dataset (run once before --fsdp workers start) raises load_dataset's errors about where the data
    is, and leaves the scan of every image to the workers."""
    with pytest.raises(DataError, match="CelebA not found"):
        check_dataset("celeba", str(tmp_path / "nowhere"))
    (tmp_path / "celeba" / "img_align_celeba").mkdir(parents=True)
    with pytest.raises(DataError, match="no images for the train split"):
        check_dataset("celeba", str(tmp_path))
    monkeypatch.setattr(celeba, "scan", lambda paths, threads=8: pytest.fail("check_dataset opened the images"))
    check_dataset("celeba", root)


@pytest.mark.parametrize("loader", [pytest.param("dali", marks=dali), "torch"])
def test_training_on_celeba_with_each_loader(root, loader, tmp_path):
    argv = [
        "dcgan",
        "--data",
        "celeba",
        "--data-root",
        root,
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--latent-dim",
        "8",
        "--steps",
        "3",
        "--loader",
        loader,
        "--out",
        str(tmp_path),
    ]
    assert train.main(argv) == 0
    assert (tmp_path / "samples" / "step_000003.png").exists()


def test_only_celeba_probes_dali_for_its_default_loader(monkeypatch):
    probed = []
    monkeypatch.setattr(celeba, "dali_available", lambda: probed.append(True) or True)
    assert config.parse_args(["vae", "--data", "digits"]).loader == "torch"
    assert not probed  # importing DALI costs a run that reads no files 0.4 s
    assert config.parse_args(["vae", "--data", "celeba"]).loader == "dali" and probed
