"""Drop-in nn.Modules over genperf.ops."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from genperf.ops import affine_coupling, gradient_penalty

CHECKERBOARD, CHANNEL = "checkerboard", "channel"


def checkerboard_mask(height, width, flip, device=None):
    """(1, 1, H, W) mask, 1 where the element passes through unchanged."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    mask = ((rows + cols) % 2 == 0).float()
    return (1 - mask if flip else mask).view(1, 1, height, width)


class AffineCoupling(nn.Module):
    """RealNVP affine coupling layer.

    `st_net` maps the conditioning part to 2 * C' channels, read as (s_raw, t) for the C' channels
    being transformed. `mask_type` "checkerboard" conditions on the pixels where the checkerboard
    is 1 (the net sees x * mask and the op masks s and t); "channel" conditions on one half of
    the channels and transforms the other. `flip` swaps which part is transformed.
    """

    def __init__(self, st_net: nn.Module, channels: int, mask_type: str = CHECKERBOARD, flip: bool = False):
        super().__init__()
        if mask_type not in (CHECKERBOARD, CHANNEL):
            raise ValueError(f"mask_type must be {CHECKERBOARD!r} or {CHANNEL!r}, got {mask_type!r}")
        if mask_type == CHANNEL and channels % 2:
            raise ValueError(f"a channel-wise coupling needs an even channel count, got {channels}")
        self.st_net = st_net
        self.mask_type = mask_type
        self.flip = flip
        self.channels = channels
        transformed = channels if mask_type == CHECKERBOARD else channels // 2
        # s = scale * tanh(s_raw): tanh bounds the log-scale, the learned scale sets its range.
        self.scale = nn.Parameter(torch.ones(transformed))
        self.checkpoint = False

    def forward(self, x, reverse: bool = False):
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, reverse, use_reentrant=False)
        return self._forward(x, reverse)

    def _forward(self, x, reverse):
        if x.shape[1] != self.channels:
            raise ValueError(f"AffineCoupling expects {self.channels} channels, got input of shape {tuple(x.shape)}")
        if self.mask_type == CHECKERBOARD:
            mask = checkerboard_mask(x.shape[2], x.shape[3], self.flip, x.device)
            s_raw, t = self.st_net(x * mask).chunk(2, dim=1)
            return affine_coupling(x, s_raw, t, self.scale, mask, reverse)
        x_cond, x_change = x.chunk(2, dim=1)
        if self.flip:
            x_cond, x_change = x_change, x_cond
        s_raw, t = self.st_net(x_cond).chunk(2, dim=1)
        y_change, logdet = affine_coupling(x_change, s_raw, t, self.scale, None, reverse)
        y = torch.cat([y_change, x_cond] if self.flip else [x_cond, y_change], dim=1)
        return y, logdet


class GradientPenalty(nn.Module):
    """WGAN-GP penalty as a module: `GradientPenalty(weight)(critic, real, fake)`."""

    def __init__(self, weight: float = 10.0):
        super().__init__()
        self.weight = weight

    def forward(self, critic, real, fake, eps=None):
        return gradient_penalty(critic, real, fake, self.weight, eps)

    def extra_repr(self):
        return f"weight={self.weight}"
