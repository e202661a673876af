"""WGAN-GP gradient penalty (Gulrajani et al.).

    x_hat = eps * real + (1 - eps) * fake,  eps ~ U[0, 1] per sample
    penalty = weight * mean_n (||d critic(x_hat) / d x_hat_n||_2 - 1)^2

differentiable with respect to the critic's parameters (the gradient is taken with create_graph).
"""

from __future__ import annotations

import torch
from torch import Tensor

from genperf.dtypes import at_least_fp32
from genperf.ops.backends import select

# Keeps the norm's derivative finite where the critic's gradient is exactly zero.
NORM_EPS = 1e-12


def _check_args(real, fake, eps):
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real has shape {tuple(real.shape)}, fake {tuple(fake.shape)}")
    if real.dtype != fake.dtype or real.device != fake.device:
        raise ValueError(
            f"gradient_penalty: real ({real.dtype}, {real.device}) and fake ({fake.dtype}, {fake.device}) differ"
        )
    if eps is not None and eps.shape != (real.shape[0],):
        raise ValueError(f"gradient_penalty: eps has shape {tuple(eps.shape)}, expected ({real.shape[0]},)")


def gradient_penalty_ref(critic, real, fake, weight=10.0, eps=None):
    _check_args(real, fake, eps)
    n = real.shape[0]
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    e = eps.to(real.dtype).view(n, *([1] * (real.dim() - 1)))
    x_hat = (e * real.detach() + (1 - e) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norm = torch.sqrt(at_least_fp32(grad).flatten(1).pow(2).sum(1) + NORM_EPS)
    return weight * (norm - 1).pow(2).mean()


def gradient_penalty(critic, real, fake, weight=10.0, eps=None):
    """The penalty on the selected backend (see genperf.ops.backends): the interpolation is one fused
    kernel, the penalty from the critic's gradient one forward (sums of squares, norms and their mean)
    and one backward; the critic's double backward is torch's."""
    _check_args(real, fake, eps)
    backend = select(real.device, "gradient_penalty")
    if backend == "reference":
        return gradient_penalty_ref(critic, real, fake, weight, eps)
    n = real.shape[0]
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    x_hat = torch.ops.genperf.gp_interpolate(real.detach(), fake.detach(), eps, backend).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    penalty, _ = torch.ops.genperf.gp_penalty(grad, float(weight), backend)
    return penalty


# ---- the fused ops: schema, kernels, fake (meta) implementation, autograd ----


def _kernels(backend):
    if backend == "triton":
        from genperf.kernels import gradient_penalty as k

        return k.interpolate, k.penalty, k.penalty_backward
    ops = torch.ops.genperf_kernels
    return ops.gp_interpolate, ops.gp_penalty, ops.gp_penalty_backward


@torch.library.custom_op("genperf::gp_interpolate", mutates_args=())
def _interpolate(real: Tensor, fake: Tensor, eps: Tensor, backend: str) -> Tensor:
    """eps * real + (1 - eps) * fake with one eps per sample. No autograd: the penalty detaches both."""
    interpolate, _, _ = _kernels(backend)
    n = real.shape[0]
    out = interpolate(
        real.reshape(n, -1).contiguous(), fake.reshape(n, -1).contiguous(), eps.to(real.dtype).contiguous()
    )
    return out.view(real.shape)


@_interpolate.register_fake
def _(real, fake, eps, backend):
    return torch.empty(real.shape, dtype=real.dtype, device=real.device)


@torch.library.custom_op("genperf::gp_penalty", mutates_args=())
def _penalty(grad: Tensor, weight: float, backend: str) -> tuple[Tensor, Tensor]:
    """(weight * mean_n (||grad_n|| - 1)^2, per-sample sum of squares kept for the backward)."""
    _, penalty, _ = _kernels(backend)
    return penalty(grad.reshape(grad.shape[0], -1).contiguous(), weight, NORM_EPS)


@_penalty.register_fake
def _(grad, weight, backend):
    acc = at_least_fp32(grad).dtype
    return grad.new_empty((), dtype=acc), grad.new_empty(grad.shape[0], dtype=acc)


@torch.library.custom_op("genperf::gp_penalty_backward", mutates_args=())
def _penalty_backward(grad_out: Tensor, grad: Tensor, sumsq: Tensor, weight: float, backend: str) -> Tensor:
    _, _, backward = _kernels(backend)
    n = grad.shape[0]
    dg = backward(
        grad_out.to(torch.float32).reshape(1).contiguous(), grad.reshape(n, -1).contiguous(), sumsq, weight, NORM_EPS
    )
    return dg.view(grad.shape)


@_penalty_backward.register_fake
def _(grad_out, grad, sumsq, weight, backend):
    return torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)


def _setup_context(ctx, inputs, output):
    grad, weight, backend = inputs
    ctx.save_for_backward(grad, output[1])
    ctx.weight, ctx.backend = weight, backend


def _backward(ctx, grad_penalty, grad_sumsq):
    grad, sumsq = ctx.saved_tensors
    return torch.ops.genperf.gp_penalty_backward(grad_penalty, grad, sumsq, ctx.weight, ctx.backend), None, None


_penalty.register_autograd(_backward, setup_context=_setup_context)
