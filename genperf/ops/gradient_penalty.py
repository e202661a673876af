"""WGAN-GP gradient penalty (Gulrajani et al.).

    x_hat = eps * real + (1 - eps) * fake,  eps ~ U[0, 1] per sample
    penalty = weight * mean_n (||d critic(x_hat) / d x_hat_n||_2 - 1)^2

differentiable with respect to the critic's parameters (the gradient is taken with create_graph).
"""
from __future__ import annotations

import torch

from genperf.dtypes import at_least_fp32

# Keeps the norm's derivative finite where the critic's gradient is exactly zero.
NORM_EPS = 1e-12


def _check_args(real, fake, eps):
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real has shape {tuple(real.shape)}, fake {tuple(fake.shape)}")
    if real.dtype != fake.dtype or real.device != fake.device:
        raise ValueError(f"gradient_penalty: real ({real.dtype}, {real.device}) and fake ({fake.dtype}, {fake.device}) differ")
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
    """The op the objectives call. Only the reference backend exists so far."""
    return gradient_penalty_ref(critic, real, fake, weight, eps)
