"""Every fused backend of gradient_penalty against the pure-torch reference, on GENPERF_TEST_DEVICE."""

import pytest
import torch
from _device import BACKENDS, DEVICE, HAS_NATIVE, NATIVE

from genperf.models import DCGANDiscriminator
from genperf.ops import gradient_penalty, gradient_penalty_ref, use_backend


def _critic(dtype):
    torch.manual_seed(0)
    return DCGANDiscriminator(3, 16, width=8, batch_norm=False).to(DEVICE, dtype)


def _randn(*shape, generator=None):
    return torch.randn(*shape, generator=generator).to(DEVICE)


def _penalty_and_grads(critic, real, fake, eps, fn):
    critic.zero_grad()
    gp = fn(critic, real, fake, 10.0, eps)
    gp.backward()
    # The last layer's bias has no effect on the input gradient, so it gets no gradient at all.
    return gp.detach(), [None if p.grad is None else p.grad.clone() for p in critic.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [4, 3])
def test_penalty_and_critic_gradients_match_reference(backend, batch):
    critic = _critic(torch.float32)
    g = torch.Generator().manual_seed(batch)
    real, fake = _randn(batch, 3, 16, 16, generator=g), _randn(batch, 3, 16, 16, generator=g)
    eps = torch.rand(batch, generator=g).to(DEVICE)
    with use_backend(backend):
        gp, grads = _penalty_and_grads(critic, real, fake, eps, gradient_penalty)
    gp_ref, grads_ref = _penalty_and_grads(critic, real, fake, eps, gradient_penalty_ref)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-5, atol=1e-6)
    assert [a is None for a in grads] == [b is None for b in grads_ref] and grads[0] is not None
    for a, b in zip(grads, grads_ref):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradient_is_summed_in_fp32(backend, dtype):
    g = torch.Generator().manual_seed(0)
    grad = (_randn(5, 3, 7, 9, generator=g) * 0.1).to(dtype).requires_grad_(True)
    with use_backend(backend):
        penalty, sumsq = torch.ops.genperf.gp_penalty(grad, 10.0, backend)
    penalty.backward()
    exact = grad.detach().double().requires_grad_(True)
    ref = 10.0 * (torch.sqrt(exact.flatten(1).pow(2).sum(1) + 1e-12) - 1).pow(2).mean()
    ref.backward()
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.grad.double(), exact.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.skipif(not HAS_NATIVE, reason=f"genperf._C has no {NATIVE} kernels here")
def test_float64_penalty_gradcheck_native_backend():
    grad = _randn(3, 10).double().requires_grad_(True)
    with use_backend(NATIVE):
        assert torch.autograd.gradcheck(lambda g: torch.ops.genperf.gp_penalty(g, 3.0, NATIVE)[0], (grad,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    real, fake, eps = _randn(3, 2, 4, 4), _randn(3, 2, 4, 4), torch.rand(3).to(DEVICE)
    torch.library.opcheck(torch.ops.genperf.gp_interpolate.default, (real, fake, eps, backend))
    grad = _randn(3, 2, 4, 4).requires_grad_(True)
    torch.library.opcheck(torch.ops.genperf.gp_penalty.default, (grad, 10.0, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolation_kernel(backend):
    real, fake, eps = _randn(3, 5, 7), _randn(3, 5, 7), torch.rand(3).to(DEVICE)
    out = torch.ops.genperf.gp_interpolate(real, fake, eps, backend)
    torch.testing.assert_close(out, eps.view(3, 1, 1) * real + (1 - eps.view(3, 1, 1)) * fake)


@pytest.mark.skipif(not HAS_NATIVE, reason=f"genperf._C has no {NATIVE} kernels here")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_results_round_as_torch_does(dtype):
    """The kernels convert to and from bf16 by their own bit operations (CPU: so that the loops vectorize); each
    result must still be torch's round-to-nearest-even of the fp32 value, NaN and infinities kept."""
    g = torch.Generator().manual_seed(0)
    real, fake = (_randn(4, 10_000, generator=g).to(dtype) for _ in range(2))
    real[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    eps = torch.rand(4, generator=g).to(DEVICE, dtype)
    with use_backend(NATIVE):
        out = torch.ops.genperf_kernels.gp_interpolate(real, fake, eps)
    f = fake.float()
    expected = (f + eps.float()[:, None] * (real.float() - f)).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
