"""The Triton backend of the affine coupling (genperf.ops.coupling) as torch.library triton ops.

torch.library.triton_op (torch >= 2.6) with wrap_triton: eagerly an op like any other; under torch.compile inductor
traces through the host function and launches the Triton kernels from its own generated code, with no Python
custom-op call between them."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from genperf.ops.fake import coupling_backward_shapes, coupling_forward_shapes


def _launch(kernel):
    """What the host functions launch: the kernel wrapped for torch.compile, or, under the Triton interpreter
    (TRITON_INTERPRET=1, CPU tensors, where nothing compiles), the interpreted kernel itself, which torch before
    2.12 refuses to wrap."""
    return kernel if os.environ.get("TRITON_INTERPRET") == "1" else torch.library.wrap_triton(kernel)


@torch.library.triton_op("genperf::affine_coupling_triton", mutates_args=())
def _triton_forward(
    x: Tensor, s_raw: Tensor, t: Tensor, scale: Tensor, mask: Tensor | None, bias: Tensor | None, reverse: bool
) -> tuple[Tensor, Tensor]:
    from genperf.kernels import coupling

    y, logdet = coupling.coupling_forward(x, s_raw, t, scale, mask, bias, reverse, wrap=_launch)
    return y, logdet.to(scale.dtype)  # the kernel accumulates in fp32, also for float64 inputs


@torch.library.triton_op("genperf::affine_coupling_triton_backward", mutates_args=())
def _triton_backward(
    grad_y: Tensor,
    grad_logdet: Tensor,
    x: Tensor,
    s_raw: Tensor,
    t: Tensor,
    scale: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from genperf.kernels import coupling

    dx, dr, dt, dscale, dbias = coupling.coupling_backward(
        grad_y, grad_logdet.to(torch.float32), x, s_raw, t, scale, mask, bias, reverse, wrap=_launch
    )
    return dx, dr, dt, dscale.to(scale.dtype), dbias.to(scale.dtype)


def _setup_context(ctx, inputs, output):
    x, s_raw, t, scale, mask, bias, reverse = inputs
    ctx.save_for_backward(x, s_raw, t, scale, mask, bias)
    ctx.reverse, ctx.has_bias = reverse, bias is not None


def _backward(ctx, grad_y, grad_logdet):
    dx, dr, dt, dscale, dbias = torch.ops.genperf.affine_coupling_triton_backward(
        grad_y.contiguous(), grad_logdet.contiguous(), *ctx.saved_tensors, ctx.reverse
    )
    return dx, dr, dt, dscale, None, dbias if ctx.has_bias else None, None


_triton_forward.register_autograd(_backward, setup_context=_setup_context)
# Shapes without running the host functions: triton_op's own fake traces them, which under TRITON_INTERPRET=1
# (where wrap_triton hands back the interpreted kernel) would run the kernels on fake tensors. Under
# torch.compile on a GPU inductor still traces the host functions into its graph (triton_op's decomposition).
_triton_forward.register_fake(coupling_forward_shapes)
_triton_backward.register_fake(coupling_backward_shapes)

triton_coupling = torch.ops.genperf.affine_coupling_triton
