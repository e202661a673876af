"""CelebA: the real layout or a plain folder of images, fed by NVIDIA DALI or torchvision.

Real layout: ROOT/celeba/img_align_celeba/*.jpg (178x218) with ROOT/celeba/list_eval_partition.txt
(0 train, 1 valid, 2 test). Preprocessing as in the study: center crop 148, resize to the image
size, random horizontal flip for training, floats in [0, 1].

Both loaders read the same global batches: epoch e visits the split in the order of
genperf.data.loader.Batches (randperm of (seed, e)) and rank r takes slice r of every global batch.
The torch loader (`Batches` over `CelebAFolder`) is the reference; `DALIBatches` runs the same work
as a DALI pipeline (CPU decoding with device_id=None, "mixed" GPU decoding on a GPU).

Unreadable files (not an image, truncated, a header that does not parse) are found by a scan when
the split is listed, skipped, counted and reported; the scan reads headers and end markers, not
pixels, so it costs a fraction of one epoch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from genperf.data.loader import Batches
from genperf.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PARTITIONS = {"train": "0", "valid": "1", "test": "2"}
CROP = 148
CELEBA_SIZE = (218, 178)  # height, width of img_align_celeba


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
    """Sorted image paths of one split (unscanned). A plain folder (no partition file) keeps its last
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


def unreadable_reason(path):
    """Why `path` cannot be used, or None if its header parses, both sides hold the centre crop, it claims at most PIL's
    MAX_IMAGE_PIXELS (a header claiming more is a decompression bomb: decoding it would take
    gigabytes) and (for JPEG) its end holds the end-of-image marker, which a truncated file lacks
    (entropy-coded data never contains FF D9, and some writers pad after the marker, hence a window)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(-min(64, os.path.getsize(path)), os.SEEK_END)
            tail = f.read()
        if head[:3] == b"\xff\xd8\xff":
            if b"\xff\xd9" not in tail:
                return "truncated JPEG (no end-of-image marker)"
        elif head != b"\x89PNG\r\n\x1a\n":
            return "not a JPEG or PNG file"
        with Image.open(path) as im:  # parses the header (frame size, components), decodes nothing
            w, h = im.size
    except Image.DecompressionBombError:
        return f"its header claims more than {2 * Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb?)"
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        return f"header does not parse ({e})"
    if w < 1 or h < 1:
        return "empty image"
    if w * h > Image.MAX_IMAGE_PIXELS:
        return f"its header claims {w}x{h} pixels, more than {Image.MAX_IMAGE_PIXELS} (a decompression bomb?)"
    if min(w, h) < CROP:
        return f"{w}x{h}, smaller than the {CROP}-pixel centre crop"
    return None


def scan(paths, threads=8):
    """(readable paths, [(path, reason)] of the others), order kept."""
    import warnings

    from PIL import Image

    # unreadable_reason checks the pixel count itself; PIL's warning for large images would repeat it.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    with ThreadPoolExecutor(threads) as pool:
        reasons = list(pool.map(unreadable_reason, paths))
    good = [p for p, r in zip(paths, reasons) if r is None]
    return good, [(p, r) for p, r in zip(paths, reasons) if r is not None]


def skip_note(split, bad, shown=5):
    names = ", ".join(f"{os.path.basename(p)} ({r})" for p, r in bad[:shown])
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"celeba {split}: skipped {len(bad)} unreadable image{'s' if len(bad) > 1 else ''}: {names}{more}"


class CelebAFolder:
    """One split as a map-style dataset of float images in [0, 1], shape (3, image_size, image_size):
    the torchvision path. `paths` are the readable files, `skipped` the others with the reason."""

    def __init__(self, root, split="train", image_size=64, flip=False):
        import torchvision.transforms as T

        self.split, self.image_size, self.flip = split, image_size, flip
        self.paths, self.skipped = scan(list_split(root, split))
        if not self.paths:
            raise DataError(
                f"none of the {len(self.skipped)} images of the CelebA {split} split is readable, "
                f"e.g. {self.skipped[0][0]}: {self.skipped[0][1]}"
            )
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
        except (OSError, Image.DecompressionBombError) as e:  # damage the scan could not see: dropped and counted
            print(f"genperf: skipping unreadable image {self.paths[i]} ({e})", flush=True)
            return None


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DALIBatches(Batches):
    """Batches of a CelebAFolder's files through a DALI pipeline: read, decode the center crop, resize,
    flip (training), normalize to [0, 1] CHW floats, delivered as torch tensors on `device`.

    Each epoch builds a pipeline over this rank's slices of the epoch's global batches, in order:
    the batches are those of the torch loader, no image is dropped or repeated within an epoch, and
    an epoch resumes at any batch, flips included."""

    def __init__(
        self,
        source: CelebAFolder,
        batch_size,
        seed=0,
        rank=0,
        world_size=1,
        device="cpu",
        shuffle=True,
        drop_last=True,
        threads=2,
        prefetch=2,
    ):
        super().__init__(source, batch_size, seed, rank, world_size, device, shuffle, drop_last)
        if not dali_available():
            raise DataError(
                "--loader dali: nvidia-dali is not installed (pip install nvidia-dali-cuda130); use --loader torch"
            )
        self.threads, self.prefetch = threads, prefetch
        self.skipped = 0
        self.undecodable = set()  # files the scan passed but DALI's decoder rejects

    def _file_list(self, epoch, start):
        """This rank's (files, mirror flags) of the epoch from batch `start` on. Flags are drawn per
        (seed, epoch, image), so a resumed epoch flips what the uninterrupted one did. (DALI's own
        shard_id/num_shards cut one list into equal contiguous blocks, which cannot express "slice r of
        every global batch" once the last batch is partial; so each rank gets its own list.)"""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        mirror = (torch.rand(len(self.source.paths), generator=g) < 0.5) & self.source.flip
        idx = [i for part in self._rank_slices(epoch, start) for i in part.tolist()]
        return [self.source.paths[i] for i in idx], [int(mirror[i]) for i in idx]

    def _pipeline(self, files, mirror, batch_size=None):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"
        src, local = self.source, batch_size or self.batch_size // self.world_size

        def flag(info):  # past the end: the reader's padding of a partial batch, dropped by the iterator
            i = info.idx_in_epoch
            return np.array(mirror[i] if i < len(mirror) else 0, dtype=np.int32)

        @pipeline_def(
            batch_size=local,
            num_threads=self.threads,
            device_id=(self.device.index or 0) if gpu else None,
            prefetch_queue_depth=self.prefetch,
        )
        def pipe():
            jpegs, _ = fn.readers.file(files=files, random_shuffle=False, name="reader")
            # Decodes the centred crop only (libjpeg-turbo skips the rows outside it); fancy upsampling as
            # in libjpeg-turbo's default, which PIL uses.
            images = fn.decoders.image_crop(
                jpegs,
                device="mixed" if gpu else "cpu",
                output_type=types.RGB,
                crop=(CROP, CROP),
                jpeg_fancy_upsampling=True,
            )
            images = fn.resize(
                images, size=(src.image_size, src.image_size), interp_type=types.INTERP_LINEAR, antialias=True
            )
            flip = fn.external_source(source=flag, batch=False)  # one flag per sample, in step with the reader
            return fn.crop_mirror_normalize(
                images, dtype=types.FLOAT, output_layout="CHW", mean=[0.0] * 3, std=[255.0] * 3, mirror=flip
            )

        return pipe()

    def epoch(self, epoch, start=0):
        """Yields this rank's batches of `epoch` from batch `start` on. A file that the scan passed but
        DALI's decoder rejects fails its pipeline: the failing batches' files are then tried one by
        one, those DALI cannot decode are reported, replaced by a stand-in that is left out of its
        batch (so later batches keep their files), and the epoch goes on from the failing batch."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        files, mirror = self._file_list(epoch, start)
        local = self.batch_size // self.world_size
        left_out = set()  # positions in `files` whose file DALI cannot decode
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        done = 0  # batches delivered
        while done * local < len(files):
            # files found undecodable earlier, in this epoch or another
            left_out |= {i for i, path in enumerate(files) if path in self.undecodable}
            files = self._with_stand_ins(files, left_out)
            first = done * local
            pipe = self._pipeline(files[first:], mirror[first:])
            try:
                pipe.build()
                for out in DALIGenericIterator(pipe, ["images"], reader_name="reader", last_batch_policy=policy):
                    x = out[0]["images"]
                    keep = [i for i in range(len(x)) if first + i not in left_out]
                    self.skipped += len(x) - len(keep)
                    yield (x if len(keep) == len(x) else x[keep]).to(self.device, non_blocking=True)
                    done += 1
                    first = done * local
                return
            except RuntimeError as e:
                # The error may belong to a batch the pipeline was already preparing (its prefetch).
                window = files[first : first + (self.prefetch + 1) * local]
                bad = [p for p in dict.fromkeys(window) if p not in self.undecodable and not self._decodes(p)]
                if not bad:
                    raise DataError(
                        f"DALI failed on batch {start + done} of epoch {epoch} and none of its files "
                        f"fails alone: {_last_line(e)}"
                    ) from None
                for path in bad:
                    print(f"genperf: skipping {path}: DALI cannot decode it", flush=True)
                self.undecodable.update(bad)
            finally:
                del pipe

    def _with_stand_ins(self, files, left_out):
        """`files` with each position in `left_out` holding a decodable file instead (it is dropped
        from its batch after decoding)."""
        stand_in = next((p for i, p in enumerate(files) if i not in left_out), None)
        if stand_in is None:
            raise DataError(f"DALI cannot decode any of this rank's {len(files)} files of the epoch")
        return [stand_in if i in left_out else p for i, p in enumerate(files)]

    def _decodes(self, path):
        """Whether this pipeline's decode of `path` alone succeeds."""
        pipe = self._pipeline([path], [0], batch_size=1)
        try:
            pipe.build()
            pipe.run()
            return True
        except RuntimeError:
            return False
        finally:
            del pipe


def _last_line(e):
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def write_fake_celeba(root, n, seed=0, partition=(0.8, 0.1), quality=90):
    """Writes n CelebA-shaped JPEGs (178x218, smooth procedural faces-like blobs and gradients, so
    decoding costs what photos cost) to ROOT/celeba/img_align_celeba with list_eval_partition.txt.
    For tests and benchmarks: CelebA itself is not available offline."""
    from PIL import Image

    folder = os.path.join(root, "celeba", "img_align_celeba")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = CELEBA_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lines = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        img += rng.uniform(40, 200, 3) + (yy / h)[..., None] * rng.uniform(-60, 60, 3)  # background gradient
        for _ in range(6):  # soft elliptical blobs: a face, hair, eyes at random places and colours
            cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
            ry, rx = rng.uniform(8, 70), rng.uniform(8, 55)
            blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
            img += blob[..., None] * rng.uniform(-120, 120, 3)
        img += rng.normal(0, 4, img.shape)  # sensor-like noise: real photos are not flat
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, name), quality=quality)
        u = i / max(n, 1)
        lines.append(f"{name} {0 if u < partition[0] else (1 if u < partition[0] + partition[1] else 2)}\n")
    with open(os.path.join(root, "celeba", "list_eval_partition.txt"), "w") as f:
        f.writelines(lines)
    return folder
