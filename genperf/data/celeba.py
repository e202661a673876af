"""CelebA through torchvision: the real layout or a plain folder of images.

Real layout: ROOT/celeba/img_align_celeba/*.jpg (178x218) with ROOT/celeba/list_eval_partition.txt
(0 train, 1 valid, 2 test). Preprocessing as in the study: center crop 148, resize, optional flip.
"""
from __future__ import annotations

import os

from genperf.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PARTITIONS = {"train": "0", "valid": "1", "test": "2"}
CROP = 148


def find_celeba(root):
    """(image folder, partition file or None)."""
    for folder in (os.path.join(root, "celeba"), root):
        images = os.path.join(folder, "img_align_celeba")
        if os.path.isdir(images):
            part = os.path.join(folder, "list_eval_partition.txt")
            return images, (part if os.path.exists(part) else None)
    if os.path.isdir(root):
        return root, None
    raise DataError(f"CelebA not found: {root} has no celeba/img_align_celeba folder and is not a folder of images")


def list_split(root, split, heldout_fraction=0.05):
    """Sorted image paths of one split. A plain folder (no partition file) keeps its last
    `heldout_fraction` of files (by name) as the held-out split."""
    images, part = find_celeba(root)
    if part is not None:
        names, want = [], PARTITIONS[split]
        with open(part) as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in PARTITIONS.values():
                    raise DataError(f"{part}:{lineno}: expected '<image> <0|1|2>', got {line.strip()!r}")
                if fields[1] == want:
                    names.append(fields[0])
        paths = [os.path.join(images, n) for n in names]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"{part} names {len(missing)} images missing from {images}, e.g. {missing[0]}")
    else:
        paths = sorted(os.path.join(images, n) for n in os.listdir(images) if n.lower().endswith(IMAGE_EXTS))
        cut = len(paths) - max(1, int(len(paths) * heldout_fraction))
        paths = paths[:cut] if split == "train" else paths[cut:]
    if not paths:
        raise DataError(f"no images for the {split} split of CelebA in {images}")
    return paths


class CelebAFolder:
    """A map-style dataset of float images in [0, 1], shape (3, image_size, image_size)."""

    def __init__(self, root, split="train", image_size=64, flip=False):
        import torchvision.transforms as T

        self.paths = list_split(root, split)
        ops = [T.CenterCrop(CROP), T.Resize(image_size, antialias=True)]
        if flip:
            ops.append(T.RandomHorizontalFlip())
        self.transform = T.Compose(ops + [T.ToTensor()])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                return self.transform(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"{self.paths[i]}: unreadable image ({e})") from None
