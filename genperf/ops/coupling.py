"""RealNVP affine coupling with its log-determinant.

    s = scale * tanh(s_raw); where mask is given, s and t are zeroed where mask == 1
    forward: y = x * exp(s) + t,     logdet =  sum of s over (C, H, W)
    reverse: y = (x - t) * exp(-s),  logdet = -sum of s over (C, H, W)

The math runs in fp32 (float64 for float64 x) (bf16/fp16 s_raw and t from an autocast network are
upcast) and y keeps x's dtype, so the flow state stays in full precision under AMP.
"""
from __future__ import annotations

import torch

from genperf.dtypes import at_least_fp32


def _check_args(x, s_raw, t, scale, mask):
    if x.dim() < 2:
        raise ValueError(f"affine_coupling: x must be (N, C, ...), got shape {tuple(x.shape)}")
    for name, v in (("s_raw", s_raw), ("t", t)):
        if v.shape != x.shape:
            raise ValueError(f"affine_coupling: {name} has shape {tuple(v.shape)}, expected x's shape {tuple(x.shape)}")
        if v.device != x.device:
            raise ValueError(f"affine_coupling: {name} is on {v.device}, x on {x.device}")
    if scale.shape != (x.shape[1],):
        raise ValueError(f"affine_coupling: scale has shape {tuple(scale.shape)}, expected ({x.shape[1]},)")
    for name, v in (("x", x), ("s_raw", s_raw), ("t", t), ("scale", scale)):
        if not v.is_floating_point():
            raise TypeError(f"affine_coupling: {name} must be a floating tensor, got {v.dtype}")
    if mask is not None:
        try:
            torch.broadcast_shapes(mask.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"affine_coupling: mask of shape {tuple(mask.shape)} does not broadcast to x's {tuple(x.shape)}") from None
        if torch.broadcast_shapes(mask.shape, x.shape) != x.shape:
            raise ValueError(f"affine_coupling: mask of shape {tuple(mask.shape)} would broadcast x beyond {tuple(x.shape)}")


def affine_coupling_ref(x, s_raw, t, scale, mask=None, reverse=False):
    """Pure-torch reference. Returns (y, logdet): y in x's dtype, logdet of shape (N,) in the accumulation dtype."""
    _check_args(x, s_raw, t, scale, mask)
    xf = at_least_fp32(x)
    s = scale.to(xf.dtype).view(1, -1, *([1] * (x.dim() - 2))) * torch.tanh(s_raw.to(xf.dtype))
    t = t.to(xf.dtype)
    if mask is not None:
        keep = 1 - mask.to(xf.dtype)
        s = s * keep
        t = t * keep
    if reverse:
        y = (xf - t) * torch.exp(-s)
        logdet = -s.flatten(1).sum(1)
    else:
        y = xf * torch.exp(s) + t
        logdet = s.flatten(1).sum(1)
    return y.to(x.dtype), logdet


def affine_coupling(x, s_raw, t, scale, mask=None, reverse=False):
    """The op the models call. Only the reference backend exists so far."""
    return affine_coupling_ref(x, s_raw, t, scale, mask, reverse)
