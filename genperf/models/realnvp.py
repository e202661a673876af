"""Multi-scale RealNVP (Dinh et al., 2017), laid out as in the paper.

Per scale: 3 checkerboard couplings, squeeze (C -> 4C, H/2), 3 channel-wise couplings, then half of
the channels are factored out as latents; the last scale is 4 checkerboard couplings. The s/t
networks are weight-normalised ResNets (batch-normed as in the study's implementation, or without
normalisation) whose width doubles from one scale to the next and doubles again for the channel-wise
couplings. Images x in [0, 1] first go through the logit transform
y = logit(alpha + (1 - 2 alpha) x), whose log-determinant is part of the model's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genperf.dtypes import at_least_fp32
from genperf.invertible import chain, invertible_chain
from genperf.layers import CHANNEL, CHECKERBOARD, AffineCoupling, BatchNorm2d, checkpointed

# Activation checkpointing granularity: none, each coupling (keeps its input), each residual block of
# the s/t networks (keeps block inputs). Recomputation is non-reentrant torch.utils.checkpoint.
CHECKPOINTING = ("none", "coupling", "block")

# Architecture presets: the shape they are built for and the size of the s/t networks.
ARCHS = {
    "mnist": dict(in_channels=1, image_size=28, num_scales=2, mid_channels=64, num_blocks=8),
    "celeba64": dict(in_channels=3, image_size=64, num_scales=3, mid_channels=64, num_blocks=8),
}


# The s/t networks' normalisation: "batch" is the study's network (batch norm at its input, in every residual
# block and at its output, the input fed as relu(concat(x, -x)), a weight-normed 1x1 output conv); "none" is the
# normalisation-free network of earlier genperf versions, which their checkpoints hold.
ST_NORMS = ("batch", "none")


class WeightNormConv2d(nn.Conv2d):
    """A 'same'-padded conv with weight = g * v / ||v|| per output channel (Salimans & Kingma 2016),
    initialised as torch's weight_norm would (v = the conv's initial weight, g = its norm).

    One plain class for every layer, unlike torch.nn.utils.parametrizations.weight_norm, which makes
    a class per module and so sends torch.compile into a recompile per layer. State dicts of that
    parametrization (`parametrizations.weight.original0/1`) load into this one; the parameter order
    (bias, g, v) is also the same, so old optimizer states line up."""

    OLD_KEYS = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

    def __init__(self, cin, cout, k, bias=True, pad_in=0, pad_out=0):
        super().__init__(cin, cout, k, padding=k // 2, bias=bias)
        v = self.weight.detach()
        del self.weight
        self.weight_g = nn.Parameter(torch.norm_except_dim(v, 2, 0))
        self.weight_v = nn.Parameter(v.clone())
        self.register_load_state_dict_pre_hook(WeightNormConv2d._rename_old_keys)
        # Zero input channels the caller appends (pad_in) and zero output channels dropped after the conv
        # (pad_out), so the convolution itself has channel counts that tensor cores take (multiples of 8). The
        # parameters keep their own shapes: checkpoints do not change.
        self.pad_in, self.pad_out = pad_in, pad_out

    @staticmethod
    def _rename_old_keys(module, state_dict, prefix, *args):
        for old, new in WeightNormConv2d.OLD_KEYS.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)

    def normed_weight(self):
        """g * v / ||v||, in v's memory layout (a channels_last v keeps its convolutions channels_last)."""
        v, g = self.weight_v, self.weight_g
        # Plain ops keep v's layout, and inductor fuses them forward and backward; torch's fused kernel (one
        # launch eagerly) copies a channels_last v to NCHW and returns NCHW.
        if torch.compiler.is_compiling() or is_channels_last(v):
            return v * (g / torch.linalg.vector_norm(v, dim=(1, 2, 3), keepdim=True))
        return torch._weight_norm(v, g, 0)

    def forward(self, x, add_bias=True):
        """add_bias=False leaves the bias to the caller (the affine coupling adds it in its own pass)."""
        w, b = self.normed_weight(), self.bias if add_bias else None
        if self.pad_out:
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, self.pad_out))
            b = None if b is None else F.pad(b, (0, self.pad_out))
        if self.pad_in:
            w = F.pad(w, (0, 0, 0, 0, 0, self.pad_in))
        y = self._conv_forward(x, w, b)
        return y[:, : self.out_channels] if self.pad_out else y


def is_channels_last(t):
    """Whether a 4-D tensor is laid out channels_last (and not also plainly contiguous, as a 1x1 kernel can be)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def to_multiple_of_8(n):
    """Channels to add to n to reach a multiple of 8."""
    return -n % 8


class ResidualBlock(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))); without normalisation the norms are identities."""

    def __init__(self, channels, norm="none"):
        super().__init__()
        batch = norm == "batch"
        self.norm1 = BatchNorm2d(channels) if batch else nn.Identity()
        self.conv1 = WeightNormConv2d(channels, channels, 3, bias=not batch)  # a batch norm follows: no bias
        self.norm2 = BatchNorm2d(channels) if batch else nn.Identity()
        self.conv2 = WeightNormConv2d(channels, channels, 3)

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class STResNet(nn.Module):
    """The s/t network of one coupling: a ResNet whose blocks also feed 1x1 skip paths to the output.

    With norm "batch" (the study's network) the input is batch-normed (and doubled, for checkerboard couplings,
    whose masked input is half zeros) and fed as relu(concat(x, -x)), every block normalises before each conv,
    and the summed skips are batch-normed before the output conv. That conv starts as weight norm does (g = |v|),
    not at zero: the gradient of every weight inside the network is proportional to its g, so with g = 0 only g
    learns until Adam has grown it (MNIST, 150 steps: 5.18 held-out bits/dim with g = 0, 3.47 without). The
    normalisation-free network's plain output conv starts at zero, every coupling the identity."""

    def __init__(self, in_channels, mid_channels, out_channels, num_blocks, norm="none", double_after_norm=False):
        super().__init__()
        if norm not in ST_NORMS:
            raise ValueError(f"st_norm must be one of {', '.join(ST_NORMS)}, got {norm!r}")
        self.norm, self.double_after_norm = norm, double_after_norm
        batch = norm == "batch"
        self.in_norm = BatchNorm2d(in_channels) if batch else nn.Identity()
        conv_in = 2 * in_channels if batch else in_channels
        self.in_pad = to_multiple_of_8(conv_in) if batch else 0
        self.in_conv = WeightNormConv2d(conv_in, mid_channels, 3, pad_in=self.in_pad)
        self.in_skip = WeightNormConv2d(mid_channels, mid_channels, 1)
        self.blocks = nn.ModuleList(ResidualBlock(mid_channels, norm) for _ in range(num_blocks))
        self.skips = nn.ModuleList(WeightNormConv2d(mid_channels, mid_channels, 1) for _ in range(num_blocks))
        self.out_norm = BatchNorm2d(mid_channels) if batch else nn.Identity()
        if batch:
            self.out_conv = WeightNormConv2d(mid_channels, out_channels, 1, pad_out=to_multiple_of_8(out_channels))
        else:
            self.out_conv = nn.Conv2d(mid_channels, out_channels, 1)
            nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.checkpoint_blocks = False

    def output_bias(self):
        """The output conv's bias, which AffineCoupling hands to the fused coupling op (forward(add_bias=False))
        instead of letting the conv add it in a pass of its own."""
        return self.out_conv.bias

    def forward(self, x, add_bias=True):
        if self.norm == "batch":
            x = self.in_norm(x)
            x = F.relu(torch.cat([x, -x], dim=1) * (2 if self.double_after_norm else 1))
            if self.in_pad:  # zero channels, to a count tensor cores take
                x = F.pad(x, (0, 0, 0, 0, 0, self.in_pad))
        x = self.in_conv(x)
        skip = self.in_skip(x)
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for block, to_skip in zip(self.blocks, self.skips):
            x = checkpointed(block, x) if recompute else block(x)
            skip = skip + to_skip(x)
        h = F.relu(self.out_norm(skip))
        if isinstance(self.out_conv, WeightNormConv2d):
            return self.out_conv(h, add_bias)
        return self.out_conv(h) if add_bias else F.conv2d(h, self.out_conv.weight)  # a 1x1 conv: no padding


def _coupling(channels, mid_channels, num_blocks, mask_type, flip, st_norm):
    cond = channels if mask_type == CHECKERBOARD else channels // 2
    changed = channels if mask_type == CHECKERBOARD else channels // 2
    st_net = STResNet(cond, mid_channels, 2 * changed, num_blocks, st_norm, double_after_norm=mask_type == CHECKERBOARD)
    # The study's network rescales tanh(s) by a weight-normed per-channel scale; the earlier one by a plain one.
    return AffineCoupling(st_net, channels, mask_type, flip, weight_norm_scale=st_norm == "batch")


class Scale(nn.Module):
    def __init__(self, channels, mid_channels, num_blocks, last, st_norm):
        super().__init__()
        n_in = 4 if last else 3
        self.in_couplings = nn.ModuleList(
            _coupling(channels, mid_channels, num_blocks, CHECKERBOARD, i % 2 == 1, st_norm) for i in range(n_in)
        )
        self.out_couplings = (
            nn.ModuleList()
            if last
            else nn.ModuleList(
                _coupling(4 * channels, 2 * mid_channels, num_blocks, CHANNEL, i % 2 == 1, st_norm) for i in range(3)
            )
        )


class RealNVP(nn.Module):
    """`model(x) -> (z, logdet)`: the bijection from images x in [0, 1] to latents z of x's shape,
    logdet = log|det dz/dx| per sample. `inverse(z) -> x`. `log_prob`/`bits_per_dim` dequantize
    8-bit data with uniform noise and so are single-sample estimates.

    `st_norm` (ST_NORMS) picks the s/t networks: the study's batch-normed ones (default) or the earlier
    normalisation-free ones. With batch norm the flow is a bijection of the batch in training mode (the
    statistics are the batch's) and of each image in eval mode (running statistics), which sampling and
    evaluation use.

    Memory modes (gradients are the same in all of them): `checkpointing` in CHECKPOINTING recomputes
    activations in backward; `invertible` backpropagates each run of couplings by inversion
    (genperf.invertible), so activation memory stops growing with depth. Either recomputation normalises with
    the same batch statistics and leaves the running statistics alone (genperf.layers.recomputing), so they
    are updated once a step in every mode."""

    def __init__(
        self,
        in_channels=1,
        image_size=28,
        num_scales=2,
        mid_channels=64,
        num_blocks=8,
        alpha=0.05,
        checkpointing="none",
        invertible=False,
        st_norm="batch",
    ):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        if image_size % (2 ** (num_scales - 1)):
            raise ValueError(
                f"RealNVP with {num_scales} scales halves the image {num_scales - 1} times: "
                f"image size {image_size} is not divisible by {2 ** (num_scales - 1)}"
            )
        self.in_channels, self.image_size, self.alpha = in_channels, image_size, alpha
        self.scales = nn.ModuleList()
        channels, mid = in_channels, mid_channels
        for i in range(num_scales):
            self.scales.append(Scale(channels, mid, num_blocks, last=i == num_scales - 1, st_norm=st_norm))
            channels, mid = 2 * channels, 2 * mid
        self.set_memory_mode(checkpointing, invertible)

    def set_memory_mode(self, checkpointing="none", invertible=False):
        if checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing must be one of {', '.join(CHECKPOINTING)}, got {checkpointing!r}")
        self.checkpointing, self.invertible = checkpointing, bool(invertible)
        for c in self.couplings():
            c.checkpoint = checkpointing == "coupling"
            c.st_net.checkpoint_blocks = checkpointing == "block"

    def _chain(self, couplings, z):
        return invertible_chain(couplings, z) if self.invertible else chain(couplings, z)

    def couplings(self):
        return [c for s in self.scales for c in (*s.in_couplings, *s.out_couplings)]

    def _check(self, x, name):
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"RealNVP built for {name} of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}"
            )

    def forward(self, x):
        self._check(x, "images")
        y = self.alpha + (1 - 2 * self.alpha) * at_least_fp32(x)
        z = torch.log(y) - torch.log1p(-y)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(y) - torch.log1p(-y)).sum((1, 2, 3))
        factored = []
        for scale in self.scales:
            z, ld = self._chain(scale.in_couplings, z)
            logdet = logdet + ld
            if len(scale.out_couplings) == 0:
                break
            z, ld = self._chain(scale.out_couplings, F.pixel_unshuffle(z, 2))
            logdet = logdet + ld
            z_out, z = z.chunk(2, dim=1)
            factored.append(z_out)
        for z_out in reversed(factored):
            z = F.pixel_shuffle(torch.cat([z_out, z], dim=1), 2)
        return z, logdet

    def inverse(self, z):
        self._check(z, "latents")
        z = at_least_fp32(z)
        factored = []
        for _ in self.scales[:-1]:  # the latents each scale factored out
            z_out, z = F.pixel_unshuffle(z, 2).chunk(2, dim=1)
            factored.append(z_out)
        for c in reversed(self.scales[-1].in_couplings):
            z, _ = c(z, reverse=True)
        for scale in reversed(self.scales[:-1]):
            z = torch.cat([factored.pop(), z], dim=1)
            for c in reversed(scale.out_couplings):
                z, _ = c(z, reverse=True)
            z = F.pixel_shuffle(z, 2)
            for c in reversed(scale.in_couplings):
                z, _ = c(z, reverse=True)
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)

    def log_prob(self, x, noise=None):
        """log p(x) in nats per image for 8-bit images x in [0, 1] (values k / 255), dequantized with
        `noise` (uniform in [0, 1), x's shape; drawn here when None)."""
        x = at_least_fp32(x)
        x = (torch.round(x * 255) + (torch.rand_like(x) if noise is None else noise)) / 256
        z, logdet = self(x)
        dims = x[0].numel()
        log_pz = -0.5 * (z.pow(2).flatten(1).sum(1) + dims * math.log(2 * math.pi))
        return log_pz + logdet - dims * math.log(256)

    def bits_per_dim(self, x, noise=None):
        return -self.log_prob(x, noise) / (x[0].numel() * math.log(2))

    @torch.no_grad()
    def sample(self, n, temperature=1.0, z=None):
        if z is None:
            device = next(self.parameters()).device
            z = torch.randn(n, self.in_channels, self.image_size, self.image_size, device=device)
        return self.inverse(z * temperature).clamp(0, 1)
