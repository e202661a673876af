"""Random streams of their own: held-out evaluation and metrics draw the same numbers at every call, and leave
the training stream where it was."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def seeded(seed, device):
    """A random stream of its own from `seed` (CPU and `device`), leaving the caller's streams untouched."""
    device = torch.device(device)
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
