"""genperf's default RealNVP coupling against the study's s/t ResNet and coupling written here from their
description, in plain PyTorch with nothing from genperf: given the same weights and input, the same output and
log-determinant.

The study's network (a modification of chrischute/real-nvp): the conditioning input is batch-normed (doubled for
checkerboard couplings, whose input is half zeros) and fed as relu(concat(x, -x)) to a 3x3 conv; residual blocks
of (batch norm, relu, 3x3 conv without bias, batch norm, relu, 3x3 conv) with a 1x1 skip to the output from the
input conv and from every block; the summed skips go through batch norm, relu and a 1x1 conv to (s, t); every
conv is weight-normed; s is rescaled as rescale * tanh(s) with a weight-normed per-channel rescale. The coupling
is Dinh et al.'s y = x * exp(s) + t on the transformed part, log-determinant the sum of s."""

import pytest
import torch
import torch.nn.functional as F

from genperf.models import RealNVP


def _weight(conv):
    """The effective weight of a weight-normed conv: g * v / ||v|| per output channel."""
    v, g = conv.weight_v.detach(), conv.weight_g.detach()
    return g * v / v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def _bn(x, bn):
    """Batch norm in training mode, by hand: the batch's mean and biased variance per channel."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def _conv(x, conv):
    k = conv.weight_v.shape[-1]
    return F.conv2d(x, _weight(conv), conv.bias, padding=k // 2)


def study_st_net(x, net, checkerboard):
    x = _bn(x, net.in_norm) * (2 if checkerboard else 1)
    x = _conv(F.relu(torch.cat([x, -x], dim=1)), net.in_conv)
    skip = _conv(x, net.in_skip)
    for block, to_skip in zip(net.blocks, net.skips):
        h = _conv(F.relu(_bn(x, block.norm1)), block.conv1)
        x = x + _conv(F.relu(_bn(h, block.norm2)), block.conv2)
        skip = skip + _conv(x, to_skip)
    return _conv(F.relu(_bn(skip, net.out_norm)), net.out_conv)


def study_coupling(x, coupling):
    """(y, logdet) of the study's coupling with `coupling`'s weights."""
    g, v = coupling.rescale.weight_g.detach(), coupling.rescale.weight_v.detach()
    rescale = (g * v / v.abs()).view(1, -1, 1, 1)
    if coupling.mask_type == "checkerboard":
        h, w = x.shape[2:]
        rows, cols = torch.arange(h).view(-1, 1), torch.arange(w).view(1, -1)
        b = ((rows + cols) % 2 == 0).to(x.dtype)
        b = (1 - b if coupling.flip else b).view(1, 1, h, w)
        s, t = study_st_net(x * b, coupling.st_net, checkerboard=True).chunk(2, dim=1)
        s, t = rescale * torch.tanh(s) * (1 - b), t * (1 - b)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)
    x_cond, x_change = x.chunk(2, dim=1)
    if coupling.flip:
        x_cond, x_change = x_change, x_cond
    s, t = study_st_net(x_cond, coupling.st_net, checkerboard=False).chunk(2, dim=1)
    s = rescale * torch.tanh(s)
    y_change = x_change * torch.exp(s) + t
    y = torch.cat([y_change, x_cond] if coupling.flip else [x_cond, y_change], dim=1)
    return y, s.flatten(1).sum(1)


@pytest.mark.parametrize("index", range(7))  # 4 + 3 couplings of a 2-scale model: both masks, both flips
def test_genperfs_coupling_is_the_studys(index):
    torch.manual_seed(index)
    model = RealNVP(1, 8, 2, 6, 2)  # st_norm="batch", the default
    with torch.no_grad():  # weights off their initial values, which hide errors (rescales at 1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for c in model.couplings():
            c.rescale.weight_v[0] *= -1  # a negative direction: the rescale's sign comes from v
    coupling = model.couplings()[index]
    channels = coupling.channels
    size = 8 if channels == 1 else 4  # the first scale's checkerboard couplings see 8x8 images, the others 4x4
    x = torch.randn(5, channels, size, size)
    want_y, want_logdet = study_coupling(x, coupling)
    got_y, got_logdet = coupling(x)
    torch.testing.assert_close(got_y, want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_logdet, want_logdet, rtol=1e-5, atol=1e-5)
