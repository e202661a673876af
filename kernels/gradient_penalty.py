"""WGAN-GP pieces in Triton: the per-sample interpolation, and the penalty on the critic's input gradient:
forward one program per sample (its sum of squares, norm and term of the mean, one atomic add to the
penalty), backward in one pass over the gradient, each program recomputing its sample's coefficient
from the saved sum of squares."""

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
def _penalty(g_ptr, sumsq_ptr, penalty_ptr, N, L, weight, norm_eps, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr):
    n = tl.program_id(0)
    base = n.to(tl.int64) * L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    # A constexpr trip count: triton 3.6's interpreter cannot take a range over the runtime L
    for i in range(NUM_BLOCKS):
        offs = i * BLOCK + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + base + offs, mask=offs < L, other=0.0).to(tl.float32)
        acc += g * g
    sumsq = tl.sum(acc, axis=0)
    tl.store(sumsq_ptr + n, sumsq)
    gap = tl.sqrt(sumsq + norm_eps) - 1.0
    tl.atomic_add(penalty_ptr, weight * gap * gap / N)


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


def penalty(grad, weight, norm_eps):
    """grad: (N, L) contiguous. (weight * mean_n (sqrt(|grad_n|^2 + norm_eps) - 1)^2, per-sample |grad_n|^2)."""
    n, length = grad.shape
    sumsq = torch.empty(n, device=grad.device, dtype=torch.float32)
    out = torch.zeros((), device=grad.device, dtype=torch.float32)
    blocks = triton.cdiv(length, BLOCK)
    _penalty[(n,)](grad, sumsq, out, n, length, float(weight), float(norm_eps), BLOCK=BLOCK, NUM_BLOCKS=blocks)
    acc = torch.promote_types(grad.dtype, torch.float32)  # the kernel sums in fp32, also for float64
    return out.to(acc), sumsq.to(acc)


def penalty_backward(grad_out, grad, sumsq, weight, norm_eps):
    n, length = grad.shape
    dg = torch.empty_like(grad)
    _penalty_bwd[(n, triton.cdiv(length, BLOCK))](
        grad_out, grad, sumsq, dg, n, length, float(weight), float(norm_eps), BLOCK=BLOCK
    )
    return dg
