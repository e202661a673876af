"""MNIST and Fashion-MNIST from IDX files (gzip or raw), in the torchvision layout or a plain folder."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import zlib

import numpy as np

from genperf.errors import DataError

# torchvision's folder name for each data set (ROOT/<folder>/raw/*).
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
SYSTEM_ROOTS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"]}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file, checking its magic number and that its size matches its header."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: cannot read ({e}); the file is truncated or corrupt, delete it and fetch it again"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype not in IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported IDX type 0x{dtype:02x} with {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)  # a Python int: numpy's product wraps around for absurd headers
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file has {len(raw) - header}; it is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=IDX_DTYPES[dtype], offset=header).reshape(dims)


def _find(root, name, split, kind):
    stem = f"{SPLIT_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    folders = [root, os.path.join(root, TORCHVISION_FOLDERS[name], "raw")]
    for folder in folders + SYSTEM_ROOTS.get(name, []):
        for fname in (stem, stem + ".gz"):
            path = os.path.join(folder, fname)
            if os.path.exists(path):
                return path
    return None


def _download(root, name):
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}[name]
    # The outermost folder torchvision will create (ROOT, ROOT/MNIST or ROOT/MNIST/raw): removed again
    # when the download fails, so that a failure leaves the user's tree as it was.
    path, created = os.path.abspath(os.path.join(root, TORCHVISION_FOLDERS[name], "raw")), None
    while not os.path.exists(path):
        created, path = path, os.path.dirname(path)
    try:
        for train in (True, False):
            cls(root, train=train, download=True)
    except Exception as e:  # offline machines fail in many ways (URLError, RuntimeError, timeouts)
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(
            f"{name} IDX files not found under {root} and the download failed "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). "
            f"Copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            f"t10k-labels-idx1-ubyte.gz into {os.path.join(root, TORCHVISION_FOLDERS[name], 'raw')} "
            f"or pass --data-root to the folder holding them"
        ) from None


def has_any_split(root, name):
    return any(_find(root, name, split, "images") for split in SPLIT_PREFIX)


def load_split(root, name, split, download=False):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) for one split, or None if its files are absent.
    With `download`, a root holding no split at all is filled through torchvision first."""
    if download and not has_any_split(root, name):
        _download(root, name)
    images_path, labels_path = (_find(root, name, split, kind) for kind in ("images", "labels"))
    if images_path is None and labels_path is None:
        return None
    if labels_path is None or images_path is None:
        found, kind = (images_path, "labels") if labels_path is None else (labels_path, "images")
        raise DataError(
            f"{name} {split}: found {found} but not its {kind} file "
            f"({SPLIT_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz]) under {root}"
        )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_path} holds {images.shape} images but {labels_path} holds {labels.shape} labels")
    return images, labels
