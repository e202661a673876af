"""The coupling kernels' outputs for torch.compile's fake tensors: shapes, dtypes and layouts, no data. Both
backends' ops (genperf._C's and the Triton ones) give contiguous outputs."""

from __future__ import annotations

import torch


def coupling_forward_shapes(x, s_raw, t, scale, mask, bias, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[0], dtype=scale.dtype)


def coupling_backward_shapes(grad_y, grad_logdet, x, s_raw, t, scale, mask, bias, reverse):
    """dx, ds_raw, dt, dscale and dbias, which is (0,) without a bias."""
    grads = tuple(torch.empty_like(v, memory_format=torch.contiguous_format) for v in (x, s_raw, t, scale))
    return *grads, scale.new_empty(0 if bias is None else bias.shape[0])
