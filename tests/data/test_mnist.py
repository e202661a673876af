import gzip
import os
import shutil

import numpy as np
import pytest

from genperf.data import load_dataset
from genperf.data.mnist import load_split, read_idx
from genperf.errors import DataError


def test_reads_the_shared_test_split(mnist_root):
    images, labels = load_split(mnist_root, "mnist", "test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))
    assert 30 < images.mean() < 40  # MNIST's mean pixel is about 33


def test_carves_a_heldout_part_when_train_is_missing(mnist_root):
    data = load_dataset("mnist", mnist_root, download=False)
    assert data.train.shape == (9000, 1, 28, 28) and data.heldout.shape == (1000, 1, 28, 28)
    assert "holding out its last 1000" in data.notes[0]
    images, _ = load_split(mnist_root, "mnist", "test")
    assert (data.heldout[:, 0].numpy() == images[-1000:]).all()


def test_torchvision_layout_and_raw_files(mnist_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(os.path.join(mnist_root, name + ".gz")) as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    images, labels = load_split(str(tmp_path), "mnist", "test")
    assert images.shape == (10_000, 28, 28) and len(labels) == 10_000


def test_truncated_file_gives_one_line_error_naming_it(mnist_root, tmp_path):
    with gzip.open(os.path.join(mnist_root, "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    raw_path = tmp_path / "t10k-images-idx3-ubyte"
    raw_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        read_idx(str(raw_path))
    assert str(raw_path) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)

    gz_path = tmp_path / "cut.gz"
    gz_path.write_bytes(open(os.path.join(mnist_root, "t10k-images-idx3-ubyte.gz"), "rb").read()[:50_000])
    with pytest.raises(DataError, match="cut.gz: cannot read"):
        read_idx(str(gz_path))


def test_bad_magic(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(str(path))


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError, match="no IDX files"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_failed_download_leaves_no_folders(tmp_path, monkeypatch):
    """torchvision makes ROOT/MNIST/raw before it fetches anything; a failed download removes what it made."""
    import urllib.error

    import torchvision

    class Offline:
        def __init__(self, root, train, download):
            os.makedirs(os.path.join(root, "MNIST", "raw"), exist_ok=True)
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    for root in (tmp_path / "new", tmp_path):  # a root it creates, and one that was there
        with pytest.raises(DataError, match="the download failed"):
            load_dataset("mnist", str(root), download=True)
        assert not (root / "MNIST").exists()
    assert not (tmp_path / "new").exists() and tmp_path.exists()


def test_a_file_as_data_root(tmp_path):
    path = tmp_path / "mnist.tar.gz"
    path.write_bytes(b"not a folder")
    with pytest.raises(
        DataError, match=r"--data-root .*mnist.tar.gz is a file; pass the folder that holds the mnist data"
    ):
        load_dataset("mnist", str(path), download=False)
