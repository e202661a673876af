"""The study's 2-D Gaussian mixtures: `ring8` (8 modes on a circle) and `grid25` (a 5 x 5 grid)."""

from __future__ import annotations

import math

import torch

TOYS = {
    # centers, per-mode standard deviation
    "ring8": ([(2.0 * math.cos(2 * math.pi * k / 8), 2.0 * math.sin(2 * math.pi * k / 8)) for k in range(8)], 0.02),
    "grid25": ([(float(i), float(j)) for i in range(-4, 5, 2) for j in range(-4, 5, 2)], 0.05),
}


def toy_mixture(name):
    """(centers (K, 2), std) of a toy mixture."""
    centers, std = TOYS[name]
    return torch.tensor(centers), std


def sample_toy(name, n, generator=None):
    centers, std = toy_mixture(name)
    idx = torch.randint(len(centers), (n,), generator=generator)
    return centers[idx] + std * torch.randn(n, 2, generator=generator)
