"""RealNVP affine coupling with its log-determinant.

    s = scale * tanh(s_raw + s_bias); t = t + t_bias   (bias = (s_bias, t_bias), optional)
    where mask is given, s and t are zeroed where mask == 1
    forward: y = x * exp(s) + t,     logdet =  sum of s over (C, H, W)
    reverse: y = (x - t) * exp(-s),  logdet = -sum of s over (C, H, W)

The math runs in fp32 (float64 for float64 x) whatever the input dtype: bf16/fp16 s_raw and t from
an autocast network are upcast, and y keeps x's dtype, so the flow state stays in full precision
under AMP. The fused backends (genperf.ops.backends) make one pass forward and one pass backward,
recomputing tanh and exp instead of saving them; their y and gradients are contiguous. `bias` is the
s/t network's last per-channel bias, which the fused backends add (and differentiate) in the same pass
instead of the convolution adding it in a pass of its own.
"""

from __future__ import annotations

import torch

from genperf.dtypes import at_least_fp32
from genperf.ops.backends import select
from genperf.ops.fake import coupling_backward_shapes, coupling_forward_shapes


def _check_args(x, s_raw, t, scale, mask, bias):
    if x.dim() < 2:
        raise ValueError(f"affine_coupling: x must be (N, C, ...), got shape {tuple(x.shape)}")
    for name, v in (("s_raw", s_raw), ("t", t)):
        if v.shape != x.shape:
            raise ValueError(f"affine_coupling: {name} has shape {tuple(v.shape)}, expected x's shape {tuple(x.shape)}")
    if scale.shape != (x.shape[1],):
        raise ValueError(f"affine_coupling: scale has shape {tuple(scale.shape)}, expected ({x.shape[1]},)")
    for name, v in (("x", x), ("s_raw", s_raw), ("t", t), ("scale", scale)):
        if not v.is_floating_point():
            raise TypeError(f"affine_coupling: {name} must be a floating tensor, got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"affine_coupling: {name} is on {v.device}, x on {x.device}")
    if bias is not None:
        if bias.shape != (2 * x.shape[1],):
            raise ValueError(f"affine_coupling: bias has shape {tuple(bias.shape)}, expected ({2 * x.shape[1]},)")
        if bias.device != x.device or not bias.is_floating_point():
            raise ValueError(
                f"affine_coupling: bias must be floating, on {x.device}; got {bias.dtype} on {bias.device}"
            )
    if t.dtype != s_raw.dtype:
        raise TypeError(f"affine_coupling: t is {t.dtype} but s_raw is {s_raw.dtype}; they come from one network")
    if mask is not None:
        if mask.device != x.device:
            raise ValueError(f"affine_coupling: mask is on {mask.device}, x on {x.device}")
        if mask.dim() > x.dim() or any(m not in (1, d) for m, d in zip(mask.shape[::-1], x.shape[::-1])):
            raise ValueError(
                f"affine_coupling: mask of shape {tuple(mask.shape)} does not broadcast to x's {tuple(x.shape)}"
            )


def affine_coupling_ref(x, s_raw, t, scale, mask=None, reverse=False, bias=None):
    """Pure-torch reference. Returns (y, logdet): y in x's dtype, logdet of shape (N,) in the accumulation dtype."""
    _check_args(x, s_raw, t, scale, mask, bias)
    xf = at_least_fp32(x)
    per_channel = (1, -1, *([1] * (x.dim() - 2)))
    s_raw, t = s_raw.to(xf.dtype), t.to(xf.dtype)
    if bias is not None:
        s_bias, t_bias = bias.to(xf.dtype).view(2, *per_channel)
        s_raw, t = s_raw + s_bias, t + t_bias
    s = scale.to(xf.dtype).view(per_channel) * torch.tanh(s_raw)
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


def affine_coupling(x, s_raw, t, scale, mask=None, reverse=False, bias=None):
    """Affine coupling on the selected backend (see genperf.ops.backends). Differentiable in x,
    s_raw, t, scale and bias; works under autocast, torch.compile and FSDP."""
    _check_args(x, s_raw, t, scale, mask, bias)
    backend = select(x.device, "affine_coupling")
    if backend == "reference":
        return affine_coupling_ref(x, s_raw, t, scale, mask, reverse, bias)
    args = _kernel_args(x, s_raw, t, scale, mask, bias)
    if backend == "triton":
        # Imported at first use: torch.library.triton_op imports torch._dynamo, which makes the compile cache folder,
        # and importing genperf must leave that to genperf.faults.usable_compile_cache.
        from genperf.ops.coupling_triton import triton_coupling

        return triton_coupling(*args, reverse)
    # cpu and cuda: genperf._C's op, whose gradient is wired in C++ (csrc/coupling_autograd.cpp).
    return torch.ops.genperf_kernels.affine_coupling(*args, reverse)


def samples_contiguous(v):
    """Whether each sample v[n] of an (N, C, ...) tensor is one contiguous block: true of contiguous
    tensors and of channel slices of them (st.chunk(2, 1)), which the kernels read in place."""
    block = 1
    for size, stride in zip(reversed(v.shape[1:]), reversed(v.stride()[1:])):
        if size != 1 and stride != block:
            return False
        block *= size
    return v.shape[0] <= 1 or v.stride(0) >= block


def _kernel_args(x, s_raw, t, scale, mask, bias):
    """What the kernels take: x, s_raw, t with contiguous samples (read as (N, C, L); copied only when
    a sample is not one block), the scale and bias in the accumulation dtype, and the mask as
    (1|N, 1|C, L) fp32 (a shared mask stays shared: N and C are not broadcast). The conversions are
    differentiable, so gradients reach the caller's tensors in their dtypes."""
    flat = [v if samples_contiguous(v) else v.contiguous() for v in (x, s_raw, t)]
    if mask is not None:
        m = mask.view(*([1] * (x.dim() - mask.dim())), *mask.shape)
        m = m.expand(m.shape[0], m.shape[1], *x.shape[2:])
        mask = m.reshape(m.shape[0], m.shape[1], -1).to(torch.float32).contiguous()
    acc = torch.promote_types(x.dtype, torch.float32)
    bias = None if bias is None else bias.to(acc).contiguous()
    return (*flat, scale.to(acc).contiguous(), mask, bias)


# Shapes of genperf._C's ops for torch.compile's fake tensors (their kernels and autograd are C++).
try:
    from genperf import _C  # noqa: F401  (loads the ops)
except ImportError:
    pass
else:
    torch.library.register_fake("genperf_kernels::coupling_forward", coupling_forward_shapes)
    torch.library.register_fake("genperf_kernels::coupling_backward", coupling_backward_shapes)
    torch.library.register_fake("genperf_kernels::affine_coupling", coupling_forward_shapes)
