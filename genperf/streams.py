"""Random streams of their own: held-out evaluation and metrics draw the same numbers at every call, and leave
the training stream where it was; a training step's noise is the same numbers on any number of ranks."""

from __future__ import annotations

import contextlib

import torch

# The step's noise draws (stream 0: the flow's dequantization noise, whose numbers predate the others).
DEQUANTIZATION, LATENTS, PENALTY_MIX, POSTERIOR, REAL_LABELS = 0, 1, 2, 3, 4


def batch_noise(draw, rows, shape, seed, step, stream, rank=0, world_size=1, device="cpu"):
    """This rank's `rows` rows of `draw` (torch.rand or torch.randn) for the whole global batch of (seed, step,
    stream): every number of ranks, and a resumed run, trains on the same numbers. Shapes only on the meta
    device (genperf.trainer's count of a step)."""
    device = torch.device(device)
    if device.type == "meta":
        return torch.empty((rows, *shape), device=device)
    g = torch.Generator(device).manual_seed(seed * 1_000_003 + step + (stream << 40))
    whole = draw((rows * world_size, *shape), generator=g, device=device)
    return whole.tensor_split(world_size)[rank]


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
