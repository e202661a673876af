"""DCGAN generator/discriminator (Radford et al.), the WGAN critic, and MLPs for 2-D point data."""

from __future__ import annotations

import math

from torch import nn


def conv_plan(image_size: int, model: str):
    """(base, n): a conv stack for `image_size` starts at base x base and doubles n times.

    Sizes 7 * 2^n (28) and 4 * 2^n (8, 16, 32, 64, ...) are supported."""
    for base in (7, 4):
        n = math.log2(image_size / base) if image_size >= base else -1
        if n >= 1 and n == int(n):
            return base, int(n)
    raise ValueError(
        f"{model} cannot take image size {image_size}: it needs 7 * 2^n (e.g. 28) or 4 * 2^n "
        f"(e.g. 8, 32, 64); pass --image-size to resize"
    )


def dcgan_init(module):
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) -> images (N, C, S, S) in [-1, 1]. At 64x64: 5 transposed convs 512-256-128-64-3."""

    def __init__(self, latent_dim=100, channels=1, image_size=28, width=64):
        super().__init__()
        base, n = conv_plan(image_size, "dcgan generator")
        self.latent_dim = latent_dim
        ch = width * 2 ** (n - 1)
        layers = [nn.ConvTranspose2d(latent_dim, ch, base, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z):
        # The first transposed conv sees a 1x1 input, so it is the matrix product z @ W: computed so,
        # it runs as one GEMM instead of torch's slowest conv path (2.6 ms of a 30 ms step on CPU).
        # The weight is read in the layout it has (NCHW or channels_last) without a copy.
        w, z = self.net[0].weight, z.view(len(z), self.latent_dim)
        if w.is_contiguous():
            x = (z @ w.flatten(1)).view(len(z), *w.shape[1:])
        else:  # channels_last: (latent, k, k, C) in memory, and the product comes out channels_last too
            x = (z @ w.permute(0, 2, 3, 1).flatten(1)).view(len(z), *w.shape[2:], w.shape[1]).permute(0, 3, 1, 2)
        return self.net[1:](x)


class DCGANDiscriminator(nn.Module):
    """images -> one logit per image. LeakyReLU(0.2); batch norm on the inner layers unless
    `batch_norm=False` (the WGAN-GP critic, whose penalty is per sample). At 64x64: 5 convs."""

    def __init__(self, channels=1, image_size=28, width=64, batch_norm=True):
        super().__init__()
        base, n = conv_plan(image_size, "dcgan discriminator")
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(n - 1):
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, base, 1, 0))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x):
        # A new tensor, not a view: FSDP2 warns of (and would skip its hooks for) in-place ops on a view output.
        return self.net(x).view(-1).clone()


class MLPGenerator(nn.Module):
    """z -> points in R^dim, for the 2-D mixtures: 3 ReLU layers of 512 units, the generator and critic
    of the WGAN-GP authors' toy script (gan_toy.py), whose protocol the study's mode-collapse experiment follows."""

    def __init__(self, latent_dim=2, dim=2, hidden=512):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, dim),
        )

    def forward(self, z):
        return self.net(z)


class MLPDiscriminator(nn.Module):
    def __init__(self, dim=2, hidden=512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        # A new tensor, not a view: FSDP2 warns of (and would skip its hooks for) in-place ops on a view output.
        return self.net(x).view(-1).clone()
