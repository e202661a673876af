"""RealNVP's memory modes: activation checkpointing and invertible backprop give standard gradients,
and invertible backprop keeps no activations that grow with depth."""

import copy

import pytest
import torch

from genperf.models import RealNVP
from genperf.ops import available_backends, use_backend

MODES = [("coupling", False), ("block", False), ("none", True), ("block", True)]


def _model(num_blocks=2, num_scales=2):
    torch.manual_seed(0)
    model = RealNVP(in_channels=1, image_size=8, num_scales=num_scales, mid_channels=8, num_blocks=num_blocks).double()
    with torch.no_grad():  # off the identity initialisation, so every gradient is non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _loss_and_grads(model, x, noise, checkpointing, invertible, buffers=None):
    model = copy.deepcopy(model)
    model.set_memory_mode(checkpointing, invertible)
    loss = model.bits_per_dim(x, noise).mean()
    loss.backward()
    if buffers is not None:  # the batch norms' running statistics and their counts, after the step
        buffers.extend(b.clone() for b in model.buffers())
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backend", ["reference"] + [b for b in available_backends() if b == "cpu"])
@pytest.mark.parametrize("checkpointing, invertible", MODES)
def test_memory_modes_give_the_standard_gradients(checkpointing, invertible, backend):
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 1, 8, 8), generator=g).double() / 255
    noise = torch.rand(x.shape, generator=g, dtype=torch.float64)
    with use_backend(backend):
        ref_loss, ref_grads = _loss_and_grads(model, x, noise, "none", False)
        loss, grads = _loss_and_grads(model, x, noise, checkpointing, invertible)
    assert loss == ref_loss
    # Every gradient is non-trivial but the rescales' directions': g * v / |v| has zero gradient in a scalar v.
    names = [n for n, _ in model.named_parameters()]
    assert all(g.abs().max() > 0 for n, g in zip(names, ref_grads) if not n.endswith("rescale.weight_v"))
    # Checkpointing recomputes the same ops; the inverse rebuilds inputs to rounding error only.
    tol = 1e-10 if invertible else 0.0
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("checkpointing, invertible", MODES)
def test_recomputation_updates_the_batch_norms_running_statistics_once(checkpointing, invertible):
    """Checkpointing and invertible backprop run the s/t networks' forwards again in backward; those runs
    normalise with the batch's statistics, as the first did, and leave the running statistics alone."""
    model = _model()
    x, noise = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.rand(4, 1, 8, 8, dtype=torch.float64)
    ref, got = [], []
    _loss_and_grads(model, x, noise, "none", False, ref)
    _loss_and_grads(model, x, noise, checkpointing, invertible, got)
    before = list(model.buffers())
    assert len(ref) == len(got) > 0 and any(not torch.equal(a, b) for a, b in zip(ref, before))  # one update
    tol = 1e-10 if invertible else 0.0
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_invertible_backprop_in_fp32_is_within_fp32_tolerance():
    model = _model().float()
    x = torch.rand(4, 1, 8, 8)
    noise = torch.rand(4, 1, 8, 8)
    _, ref_grads = _loss_and_grads(model, x, noise, "none", False)
    _, grads = _loss_and_grads(model, x, noise, "none", True)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _saved_bytes(model, x):
    """Bytes autograd keeps for backward after one forward (counted by a saved-tensors hook)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.bits_per_dim(x).mean()
    return total[0]


def test_invertible_activation_memory_does_not_grow_with_depth():
    x = torch.rand(4, 1, 8, 8)
    saved = {}
    for depth in (1, 4):
        for invertible in (False, True):
            model = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=depth)
            model.set_memory_mode("none", invertible)
            saved[depth, invertible] = _saved_bytes(model, x)
    assert saved[4, False] > 2 * saved[1, False]  # standard backprop keeps every block's activations
    assert saved[4, True] == saved[1, True]  # invertible keeps the chain outputs only
    assert saved[1, True] < saved[1, False] / 10
