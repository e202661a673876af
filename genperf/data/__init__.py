"""Data sets by name. Images come out as uint8 tensors (N, C, H, W) or, for CelebA, a map-style
dataset of float images; `Batches` turns either into float batches in [0, 1] on the device."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from genperf.data import celeba, mnist, toy
from genperf.data.loader import Batches
from genperf.errors import DataError

IMAGE_SETS = ("mnist", "fashion-mnist", "digits", "celeba", "synthetic")
POINT_SETS = tuple(toy.TOYS)
DATASETS = IMAGE_SETS + POINT_SETS
# When only MNIST's test split is present, this many of its last images are held out.
CARVED_HELDOUT = 1000
NATIVE_SIZES = {"mnist": 28, "fashion-mnist": 28, "digits": 8, "celeba": 64, "synthetic": 32}


def planned_shape(name, image_size=None, channels=3):
    """The shape of one example of data set `name` as load_dataset gives it, without loading it."""
    if name in POINT_SETS:
        return (2,)
    if name not in IMAGE_SETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    c = 3 if name == "celeba" else channels if name == "synthetic" else 1
    size = image_size or NATIVE_SIZES[name]
    return (c, size, size)


@dataclass
class Data:
    name: str
    train: object
    heldout: object
    shape: tuple  # (C, H, W) for images, (D,) for points
    notes: list = field(default_factory=list)  # what the user should know about where the data came from
    labels: tuple = None  # (train labels, held-out labels) as int64 tensors, for labelled image sets

    @property
    def is_image(self):
        return len(self.shape) == 3

    def fingerprint(self):
        """What identifies this data's content, stored in checkpoints and compared when a run resumes or is
        evaluated (perhaps from another --data-root): the split sizes, the shape and a hash of the first training
        examples (for file-based CelebA, of their names and file sizes)."""
        digest = hashlib.sha256()
        if torch.is_tensor(self.train):
            digest.update(self.train[:64].contiguous().numpy().tobytes())
        else:
            for path in self.train.paths[:64]:
                digest.update(f"{os.path.basename(path)}:{os.path.getsize(path)};".encode())
        return {
            "train": len(self.train),
            "heldout": len(self.heldout),
            "shape": list(self.shape),
            "sha256": digest.hexdigest()[:16],
        }

    def check_same(self, stored, root):
        """Refuses data whose fingerprint differs from `stored` (a checkpoint's), naming what differs."""
        if not stored:
            return  # a checkpoint from before fingerprints were kept
        now = self.fingerprint()
        changed = [k for k in stored if stored[k] != now.get(k)]
        if changed:
            what = ", ".join(f"{k} {stored[k]} -> {now.get(k)}" for k in changed)
            raise DataError(
                f"the {self.name} data under {root} is not the data this run trained on ({what}); "
                f"pass --data-root to the folder it was trained on"
            )


def _resize(images, size, chunk=256):
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear with antialiasing; `chunk` images at a time, so
    that the float copies never hold the whole set (60,000 images at 1000x1000 would take 480 GB)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        x = F.interpolate(
            images[start : start + chunk].float(),
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out[start : start + chunk] = x.round().clamp(0, 255)
    return out


def _idx_data(name, root, download):
    train = mnist.load_split(root, name, "train", download)
    test = mnist.load_split(root, name, "test", download)
    if test is None:
        raise DataError(
            f"{name}: no IDX files under {root} (looked in {root} and {root}/"
            f"{mnist.TORCHVISION_FOLDERS[name]}/raw); pass --data-root to the folder holding them"
        )
    notes = []
    test_images = torch.from_numpy(test[0].copy()).unsqueeze(1)
    test_labels = torch.from_numpy(test[1].astype("int64"))
    if train is None:
        n = len(test_images)
        if n <= CARVED_HELDOUT:
            raise DataError(
                f"{name}: only the test split is under {root}, and its {n} images are too few to hold out "
                f"{CARVED_HELDOUT} and train on the rest; add the training split's IDX files"
            )
        notes.append(
            f"{name}: training split not found under {root}; training on the first {n - CARVED_HELDOUT} "
            f"images of the test split and holding out its last {CARVED_HELDOUT}"
        )
        return (
            test_images[:-CARVED_HELDOUT],
            test_images[-CARVED_HELDOUT:],
            notes,
            (test_labels[:-CARVED_HELDOUT], test_labels[-CARVED_HELDOUT:]),
        )
    train_labels = torch.from_numpy(train[1].astype("int64"))
    return torch.from_numpy(train[0].copy()).unsqueeze(1), test_images, notes, (train_labels, test_labels)


def digits_arrays():
    """scikit-learn's 8x8 digits as (images (1797, 8, 8) of 0..16, labels), read from the CSV inside the
    installed package: importing sklearn took 2.3 s of every run's start on a 2-core EPYC. Where that file
    has moved, sklearn.datasets.load_digits reads it."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else ""
    if os.path.exists(path):
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype("int64")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _digits():
    pixels, target = digits_arrays()
    images = torch.from_numpy(pixels).float()  # (1797, 8, 8), values 0..16
    images = (images * 255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(target).long()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm[200:]], images[perm[:200]], (labels[perm[200:]], labels[perm[:200]])


LOADERS = ("dali", "torch")


def default_loader(data):
    """DALI where it is installed, for CelebA, the one data set read from files; probing DALI would cost
    every other run 0.4 s of imports."""
    return "dali" if data == "celeba" and celeba.dali_available() else "torch"


def make_batches(
    source,
    batch_size,
    seed=0,
    rank=0,
    world_size=1,
    device="cpu",
    shuffle=True,
    drop_last=True,
    loader="torch",
    workers=2,
):
    """Batches of `source` on `device`. File-based sources (CelebA) go through `loader`: "dali" (a DALI
    pipeline with `workers` threads) or "torch" (a DataLoader with `workers` processes); the two give
    the same global batches. In-memory tensors always take the plain path."""
    if loader not in LOADERS:
        raise DataError(f"unknown loader {loader!r}; choose one of {', '.join(LOADERS)}")
    if loader == "dali" and isinstance(source, celeba.CelebAFolder):
        return celeba.DALIBatches(
            source, batch_size, seed, rank, world_size, device, shuffle, drop_last, threads=max(1, workers)
        )
    return Batches(source, batch_size, seed, rank, world_size, device, shuffle, drop_last, workers)


def _check_root(name, root):
    if name in ("mnist", "fashion-mnist", "celeba") and os.path.isfile(root):
        raise DataError(f"--data-root {root} is a file; pass the folder that holds the {name} data")


def check_dataset(name, root="data", download=True):
    """Raises what load_dataset would about where the data is (downloading MNIST if it must), without opening
    CelebA's images, which each worker of a launch scans anyway: the launcher's check before workers start."""
    if name != "celeba":
        load_dataset(name, root, download=download)  # in memory and quick: IDX files, digits, toys, synthetic
        return
    _check_root(name, root)
    for split in ("train", "test"):
        celeba.list_split(root, split)


def load_dataset(name, root="data", image_size=None, channels=3, download=True, seed=0, flip=True) -> Data:
    """`image_size` resizes image sets (None keeps the native size; CelebA defaults to 64)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    _check_root(name, root)
    if name in POINT_SETS:
        # The toy protocol draws fresh points every step; 500,000 (1,953 batches of 256) stand in for that
        # and keep the per-epoch sample plot and checkpoint rare next to steps of a few milliseconds.
        g = torch.Generator().manual_seed(seed)
        return Data(name, toy.sample_toy(name, 500_000, g), toy.sample_toy(name, 5_000, g), (2,))
    if name == "celeba":
        size = image_size or NATIVE_SIZES[name]
        train, heldout = celeba.CelebAFolder(root, "train", size, flip=flip), celeba.CelebAFolder(root, "test", size)
        notes = [celeba.skip_note(split.split, split.skipped) for split in (train, heldout) if split.skipped]
        return Data(name, train, heldout, (3, size, size), notes)
    notes, labels = [], None
    if name == "synthetic":
        size = image_size or NATIVE_SIZES[name]
        g = torch.Generator().manual_seed(seed)
        train = torch.randint(0, 256, (2048, channels, size, size), dtype=torch.uint8, generator=g)
        heldout = torch.randint(0, 256, (256, channels, size, size), dtype=torch.uint8, generator=g)
    elif name == "digits":
        train, heldout, labels = _digits()
    else:
        train, heldout, notes, labels = _idx_data(name, root, download)
    if image_size:
        train, heldout = _resize(train, image_size), _resize(heldout, image_size)
    return Data(name, train, heldout, tuple(train.shape[1:]), notes, labels)


__all__ = [
    "Batches",
    "Data",
    "DataError",
    "DATASETS",
    "LOADERS",
    "check_dataset",
    "default_loader",
    "digits_arrays",
    "load_dataset",
    "make_batches",
    "planned_shape",
]
