"""WGAN-GP pieces in Triton: the per-sample interpolation, and the penalty on the critic's input
gradient (per-sample sum of squares forward; the backward in one pass over the gradient, with
each program recomputing its sample's coefficient from the saved sum of squares)."""

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _interpolate(real_ptr, fake_ptr, eps_ptr, out_ptr, L, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < L
    base = n.to(tl.int64) * L
    e = tl.load(eps_ptr + n).to(tl.float32)
    real = tl.load(real_ptr + base + offs, mask=inb, other=0.0).to(tl.float32)
    fake = tl.load(fake_ptr + base + offs, mask=inb, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + offs, (fake + e * (real - fake)).to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _sum_squares(g_ptr, out_ptr, L, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(g_ptr + n.to(tl.int64) * L + offs, mask=offs < L, other=0.0).to(tl.float32)
    tl.atomic_add(out_ptr + n, tl.sum(g * g, axis=0))


@triton.jit
def _penalty_bwd(gout_ptr, g_ptr, sumsq_ptr, dg_ptr, N, L, weight, norm_eps, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < L
    base = n.to(tl.int64) * L
    norm = tl.sqrt(tl.load(sumsq_ptr + n) + norm_eps)
    # d/dg of weight * mean_n (norm_n - 1)^2 = weight * 2 (norm - 1) / (N norm) * g
    coef = tl.load(gout_ptr).to(tl.float32) * weight * 2.0 * (norm - 1.0) / (N * norm)
    g = tl.load(g_ptr + base + offs, mask=inb, other=0.0).to(tl.float32)
    tl.store(dg_ptr + base + offs, (coef * g).to(dg_ptr.dtype.element_ty), mask=inb)


def interpolate(real, fake, eps):
    """real, fake: (N, L) contiguous; eps: (N,)."""
    n, length = real.shape
    out = torch.empty_like(real)
    _interpolate[(n, triton.cdiv(length, BLOCK))](real, fake, eps, out, length, BLOCK=BLOCK)
    return out


def sum_squares(grad):
    n, length = grad.shape
    out = torch.zeros(n, device=grad.device, dtype=torch.float32)
    _sum_squares[(n, triton.cdiv(length, BLOCK))](grad, out, length, BLOCK=BLOCK)
    return out


def penalty_backward(grad_out, grad, sumsq, weight, norm_eps):
    n, length = grad.shape
    dg = torch.empty_like(grad)
    _penalty_bwd[(n, triton.cdiv(length, BLOCK))](
        grad_out, grad, sumsq, dg, n, length, float(weight), float(norm_eps), BLOCK=BLOCK
    )
    return dg
