"""The coupling kernels' outputs for torch.compile's fake tensors: shapes, dtypes and layouts, no data. Both
backends' ops (genperf._C's and the Triton ones) give contiguous outputs."""

from __future__ import annotations

import torch


def coupling_forward_shapes(x, s_raw, t, scale, mask, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[0], dtype=scale.dtype)


def coupling_backward_shapes(grad_y, grad_logdet, x, s_raw, t, scale, mask, reverse):
    return tuple(torch.empty_like(v, memory_format=torch.contiguous_format) for v in (x, s_raw, t, scale))
