"""Drop-in nn.Modules over genperf.ops."""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from genperf.compiled import batch_dynamic
from genperf.ops import affine_coupling, gradient_penalty

CHECKERBOARD, CHANNEL = "checkerboard", "channel"

# True while activation checkpointing or invertible backprop re-runs a forward (genperf.invertible).
_RECOMPUTING = contextvars.ContextVar("genperf_recomputing", default=False)


@contextlib.contextmanager
def recomputing():
    """Marks a forward run again for its gradients: batch norms then normalise with the batch's statistics, as
    the first run did, and leave their running statistics alone, so those are updated once per step."""
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)


def recompute_context():
    """torch.utils.checkpoint's context_fn: nothing for the first forward, `recomputing` for the recomputation."""
    return contextlib.nullcontext(), recomputing()


def checkpointed(fn, *args):
    """fn(*args) under non-reentrant activation checkpointing. Eagerly its recomputation runs `recomputing`;
    inside torch.compile the compiled backward recomputes the forward's pure ops only (the running statistics'
    update is not among them), and context_fn may not be used there."""
    if torch.compiler.is_compiling():
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=recompute_context)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that a recomputed forward (`recomputing`) runs with the batch's statistics without updating
    the running ones, and that takes its affine parameters in another dtype than its running statistics (FSDP2
    gathers every parameter of a unit in the --amp dtype; the kernels want both in fp32)."""

    casts_own_affine = True  # genperf.distributed.batch_norm_groups: no fp32 FSDP group needed

    def forward(self, x):
        weight, bias = self.weight, self.bias
        if weight is not None and weight.dtype != self.running_mean.dtype:
            weight, bias = weight.to(self.running_mean.dtype), bias.to(self.running_mean.dtype)
        # Compiled graphs never rerun the update (see `checkpointed`), and dynamo of torch 2.11 cannot trace
        # ContextVar.get.
        if self.training and not torch.compiler.is_compiling() and _RECOMPUTING.get():
            # Copies of the running statistics take the update (the same ops, so checkpointing sees the same saved
            # tensors as in the first run) and are dropped.
            running = self.running_mean.clone(), self.running_var.clone()
            return F.batch_norm(x, *running, weight, bias, True, self.momentum or 0.0, self.eps)
        if weight is self.weight:
            return super().forward(x)
        return self._forward_with(x, weight, bias)

    def _forward_with(self, x, weight, bias):
        """nn.BatchNorm2d's forward (genperf's keep running statistics) with these affine parameters."""
        momentum = self.momentum or 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, momentum, self.eps)


class WeightNormScale(nn.Module):
    """A per-channel scale weight_g * weight_v / |weight_v| (weight norm of a vector, one entry per channel), as the
    study's rescale of tanh(s); both start at 1."""

    def __init__(self, channels):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(channels))
        self.weight_v = nn.Parameter(torch.ones(channels))

    def forward(self):
        # What torch._weight_norm(v, g, 0) is for a vector; its compiled backward gave NaN for one.
        return self.weight_g * self.weight_v / self.weight_v.abs()


def checkerboard_mask(height, width, flip, device=None):
    """(1, 1, H, W) mask, 1 where the element passes through unchanged."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    mask = ((rows + cols) % 2 == 0).float()
    return (1 - mask if flip else mask).view(1, 1, height, width)


class AffineCoupling(nn.Module):
    """RealNVP affine coupling layer.

    `st_net` maps the conditioning part to 2 * C' channels, read as (s_raw, t) for the C' channels
    being transformed. An st_net with an `output_bias()` method is called as st_net(x, add_bias=False) and
    its last bias goes to the coupling op, which adds it in its own pass over s_raw and t. `mask_type`
    "checkerboard" conditions on the pixels where the checkerboard is 1 (the net sees x * mask and the op
    masks s and t); "channel" conditions on one half of the channels and transforms the other. `flip`
    swaps which part is transformed.
    """

    def __init__(
        self,
        st_net: nn.Module,
        channels: int,
        mask_type: str = CHECKERBOARD,
        flip: bool = False,
        weight_norm_scale: bool = False,
    ):
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
        # s = scale * tanh(s_raw): tanh bounds the log-scale, the learned scale sets its range (weight-normed in the
        # study's network, a plain parameter in the earlier one).
        if weight_norm_scale:
            self.rescale = WeightNormScale(transformed)
        else:
            self.scale = nn.Parameter(torch.ones(transformed))
        self.checkpoint = False
        self._masks = {}  # (height, width, device) -> checkerboard mask

    def mask(self, x):
        """The checkerboard mask for x's height and width, made once per size and device (eagerly it would be six
        small kernels per call; a compiled graph makes it inside, where inductor folds it)."""
        height, width = x.shape[2], x.shape[3]
        if torch.compiler.is_compiling():
            return checkerboard_mask(height, width, self.flip, x.device)
        key = (height, width, x.device)
        if key not in self._masks:
            self._masks[key] = checkerboard_mask(height, width, self.flip, x.device)
        return self._masks[key]

    def scale_vector(self):
        return self.rescale() if hasattr(self, "rescale") else self.scale

    def forward(self, x, reverse: bool = False):
        if self.checkpoint and torch.is_grad_enabled():
            return checkpointed(self._forward, x, reverse)
        return self._forward(x, reverse)

    def _st(self, x_cond):
        """((s_raw, t), the bias the op adds to them or None)."""
        x_cond = batch_dynamic(x_cond)
        if hasattr(self.st_net, "output_bias"):
            return self.st_net(x_cond, add_bias=False).chunk(2, dim=1), self.st_net.output_bias()
        return self.st_net(x_cond).chunk(2, dim=1), None

    def _forward(self, x, reverse):
        if x.shape[1] != self.channels:
            raise ValueError(f"AffineCoupling expects {self.channels} channels, got input of shape {tuple(x.shape)}")
        if self.mask_type == CHECKERBOARD:
            mask = self.mask(x)
            (s_raw, t), bias = self._st(x * mask)
            return affine_coupling(x, s_raw, t, self.scale_vector(), mask, reverse, bias)
        x_cond, x_change = x.chunk(2, dim=1)
        if self.flip:
            x_cond, x_change = x_change, x_cond
        (s_raw, t), bias = self._st(x_cond)
        y_change, logdet = affine_coupling(x_change, s_raw, t, self.scale_vector(), None, reverse, bias)
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
