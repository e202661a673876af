"""Deterministic, resumable, rank-sharded batches.

Epoch e visits the training set in the order randperm(seed, e), so a run resumed at (epoch, step)
sees exactly the batches an uninterrupted run would. Each global batch is cut into contiguous
per-rank slices, so the global batch is the same whatever the number of ranks.

In-memory data (a uint8 or float tensor: MNIST, digits, the 2-D toys) is copied to the training
device once and stays there as it is (uint8 images: a quarter of their float size); each batch is
indexed and dequantized to floats on the device, so a step moves no data (the epoch's order goes
to the device once)."""

from __future__ import annotations

import torch

from genperf.errors import DataError


class Batches:
    def __init__(
        self, source, batch_size, seed=0, rank=0, world_size=1, device="cpu", shuffle=True, drop_last=True, workers=0
    ):
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} is not divisible by the {world_size} ranks")
        if drop_last and len(source) < batch_size:
            raise DataError(f"the data set has {len(source)} examples, fewer than one batch of {batch_size}")
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.source = source.to(self.device) if torch.is_tensor(source) else source
        self.batch_size, self.seed = batch_size, seed
        self.shuffle, self.drop_last, self.workers = shuffle, drop_last, workers
        self.skipped = 0  # images a file-based source could not decode, dropped from their batches

    def __len__(self):
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch):
        if not self.shuffle:
            return torch.arange(len(self.source))
        return torch.randperm(len(self.source), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def _rank_slices(self, epoch, start, device="cpu"):
        order = self._order(epoch).to(device)  # one transfer per epoch, then slices of it
        for b in range(start, len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch.tensor_split(self.world_size)[self.rank]

    def epoch(self, epoch, start=0):
        """Yields this rank's float batches of `epoch`, from batch index `start` on."""
        if torch.is_tensor(self.source):
            for idx in self._rank_slices(epoch, start, self.device):
                yield self._to_float(self.source[idx])
            return
        slices = list(self._rank_slices(epoch, start))
        loader = torch.utils.data.DataLoader(
            self.source,
            batch_sampler=slices,
            num_workers=self.workers,
            collate_fn=_stack_readable,
            pin_memory=self.device.type == "cuda",
        )
        lost = 0
        for idx, batch in zip(slices, loader):
            lost = self.count_unreadable(len(idx) - len(batch), lost, epoch)
            if len(batch):
                yield self._to_float(batch)

    def count_unreadable(self, n, lost, epoch):
        """Counts `n` more images of `epoch` dropped as unreadable (`lost` so far); returns the epoch's count.
        A whole batch's worth, or 1% of the data set, in one epoch means the data changed under the run
        (files deleted or damaged after the start's scan): one error, not an endless stream of skips."""
        self.skipped, lost = self.skipped + n, lost + n
        if n and lost >= max(self.batch_size // self.world_size, len(self.source) // 100):
            raise DataError(
                f"{lost} images of epoch {epoch} could not be read (named above): the data set changed "
                f"during the run; restore it and resume"
            )
        return lost

    def _to_float(self, batch):
        batch = batch.to(self.device, non_blocking=True)
        return batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()


def _stack_readable(items):
    """Default collation of the items a dataset could read (it returns None for the others)."""
    items = [x for x in items if x is not None]
    return torch.stack(items) if items else torch.empty(0)
