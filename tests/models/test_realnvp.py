import math

import pytest
import torch

from genperf.models import REALNVP_ARCHS, RealNVP


def _perturbed(model, std=0.05):
    """Parameters moved off their initial values, so every parameter shapes the output (the normalisation-free
    network starts as the identity)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


@pytest.mark.parametrize("shape, scales", [((1, 8, 8), 2), ((3, 8, 8), 3), ((2, 4, 4), 1)])
def test_inverse_of_forward_is_identity(shape, scales):
    model = _perturbed(RealNVP(shape[0], shape[1], scales, 8, 2).double())
    x = torch.rand(4, *shape, dtype=torch.float64) * 0.98 + 0.01
    z, logdet = model(x)
    assert z.shape == x.shape and logdet.shape == (4,)
    assert (z - x).abs().max() > 0.1  # the flow is not the identity
    torch.testing.assert_close(model.inverse(z), x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("st_norm", ["batch", "none"])
def test_logdet_equals_explicit_jacobian(st_norm):
    """Per image in eval mode (batch norm with running statistics); with batch norm in training mode the flow is a
    bijection of the whole batch, whose log-determinant is the sum of the per-image ones."""
    model = _perturbed(RealNVP(1, 4, 2, 4, 1, st_norm=st_norm).double(), std=0.2).eval()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    _, logdet = model(x)
    for n in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 1, 4, 4))[0].flatten(), x[n].flatten())
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(logdet[n], logabs, rtol=1e-9, atol=1e-9)
    model.train()
    _, logdet = model(x)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(2, 1, 4, 4))[0].flatten(), x.flatten())
    torch.testing.assert_close(logdet.sum(), torch.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9)


def test_log_prob_of_the_initial_identity_flow():
    """At initialisation every coupling of the normalisation-free network is the identity, so log p(x) is the
    logit transform's change of variables under a standard normal; compare with torch.distributions."""
    model, alpha = RealNVP(1, 4, 2, 4, 1, st_norm="none").double(), 0.05
    x = torch.randint(0, 256, (3, 1, 4, 4)).double() / 255
    torch.manual_seed(1)
    got = model.log_prob(x)
    torch.manual_seed(1)
    u = torch.rand_like(x)
    y = alpha + (1 - 2 * alpha) * (torch.round(x * 255) + u) / 256
    z = torch.log(y / (1 - y))
    density = torch.distributions.Normal(0.0, 1.0).log_prob(z) + math.log(1 - 2 * alpha) - torch.log(y * (1 - y))
    expected = density.flatten(1).sum(1) - 16 * math.log(256)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(model.bits_per_dim(x * 0 + 0.5).shape, torch.Size([3]))


def test_the_study_networks_couplings_start_acting_and_every_weight_gets_a_gradient():
    """The batch-normed s/t networks' output conv starts with weight norm's g = |v| (not 0), so the first step
    moves every weight inside the networks: with g = 0 their gradients are exactly zero."""
    model = RealNVP(1, 8, 2, 8, 1)
    x = torch.rand(4, 1, 8, 8)
    z, _ = model(x)
    logit = torch.logit(0.05 + 0.9 * x)
    assert (z - logit).abs().max() > 1e-3  # the couplings act from the start
    model.bits_per_dim(x).mean().backward()
    directions = [(n, p) for n, p in model.named_parameters() if n.endswith("weight_v") and ".st_net." in n]
    assert len(directions) == 10 * 6  # 10 couplings of in_conv, in_skip, one block of 2, its skip, out_conv
    for name, p in directions:
        assert p.grad.abs().max() > 1e-4 * p.abs().max(), name


def test_presets_have_the_studys_sizes():
    celeba = RealNVP(**REALNVP_ARCHS["celeba64"])
    n = sum(p.numel() for p in celeba.parameters())
    assert 85e6 < n < 90e6, n  # "about 88M parameters"
    assert len(celeba.couplings()) == 2 * 6 + 4  # scales 1-2: 3 checkerboard + 3 channel-wise; last: 4


def test_sample_is_an_image_batch():
    model = _perturbed(RealNVP(1, 8, 2, 4, 1))
    x = model.sample(5, temperature=0.7)
    assert x.shape == (5, 1, 8, 8) and x.min() >= 0 and x.max() <= 1


def test_image_size_it_cannot_take():
    with pytest.raises(ValueError, match="not divisible by 4"):
        RealNVP(1, 14, 3, 4, 1)
    with pytest.raises(ValueError, match="built for images of shape"):
        RealNVP(1, 8, 2, 4, 1)(torch.rand(2, 1, 16, 16))


def test_weight_norm_conv_loads_checkpoints_of_torchs_parametrization():
    """Runs written before WeightNormConv2d used torch.nn.utils.parametrizations.weight_norm: its state
    dict and its Adam state (parameters in the same order) load, and the conv computes the same."""
    from torch.nn.utils.parametrizations import weight_norm

    from genperf.models.realnvp import WeightNormConv2d

    torch.manual_seed(0)
    old = weight_norm(torch.nn.Conv2d(3, 5, 3, padding=1))
    torch.manual_seed(0)
    new = WeightNormConv2d(3, 5, 3)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)  # the same initialisation
    old_opt = torch.optim.Adam(old.parameters(), lr=0.1)
    old(x).square().mean().backward()
    old_opt.step()  # now g, v and bias differ from the initial ones, and Adam has state
    new.load_state_dict(old.state_dict())
    new_opt = torch.optim.Adam(new.parameters(), lr=0.1)
    new_opt.load_state_dict(old_opt.state_dict())
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)
    for p_new, p_old in zip(new.parameters(), old.parameters()):
        assert p_new.shape == p_old.shape
        torch.testing.assert_close(new_opt.state[p_new]["exp_avg"], old_opt.state[p_old]["exp_avg"])


def _grads(module, x):
    x = x.detach().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y.detach(), x.grad, *(p.grad for p in module.parameters())]


def test_weight_norm_conv_is_the_same_in_either_layout_and_with_padded_channels():
    """g * v / |v| per output channel, written out here; the same output and gradients with channels_last weights
    (another code path) and with zero channels padded to multiples of 8 around the convolution."""
    import copy

    from genperf.models.realnvp import WeightNormConv2d

    torch.manual_seed(0)
    plain = WeightNormConv2d(6, 5, 3)
    with torch.no_grad():
        plain.weight_g.uniform_(0.5, 2)
    x = torch.randn(2, 6, 7, 9)
    v, g = plain.weight_v.detach(), plain.weight_g.detach()
    expected = torch.nn.functional.conv2d(x, g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1), plain.bias, padding=1)
    reference = _grads(plain, x)
    torch.testing.assert_close(reference[0], expected, rtol=1e-5, atol=1e-5)

    nhwc = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert nhwc.weight_v.is_contiguous(memory_format=torch.channels_last) and not nhwc.weight_v.is_contiguous()
    for got, want in zip(_grads(nhwc, x.contiguous(memory_format=torch.channels_last)), reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    padded = copy.deepcopy(plain)
    padded.pad_in, padded.pad_out = 2, 3
    padded_x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 2))
    got = _grads(padded, padded_x)
    assert got[0].shape == reference[0].shape
    torch.testing.assert_close(got[0], reference[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1][:, :6], reference[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[2:], reference[2:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channels_last_reaches_every_convolution_of_an_eager_st_network():
    """With channels_last weights (--channels-last), every convolution of an s/t network after the first sees
    channels_last activations, although its input, the flow's state of a few channels, is NCHW (a weight-normed
    weight that came out NCHW once made the whole network NCHW)."""
    from genperf.models.realnvp import STResNet

    net = STResNet(3, 16, 6, 2, norm="batch").to(memory_format=torch.channels_last)
    seen = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(
                lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
            )
    net(torch.randn(2, 3, 8, 8))
    assert len(seen) == 1 + 1 + 2 * 3 + 1 and not seen[0] and all(seen[1:])


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_with_bf16_parameters_is_batch_norm_with_them_rounded(momentum):
    """FSDP2 under --amp hands genperf's batch norm its weight and bias in bf16 next to fp32 running statistics: it
    must compute what nn.BatchNorm2d computes with those parameters rounded to bf16, and update its statistics the
    same way, in training and in evaluation."""
    from genperf.layers import BatchNorm2d

    torch.manual_seed(0)
    ours, plain = BatchNorm2d(4, momentum=momentum), torch.nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(4).bfloat16().float())
        plain.bias.copy_(torch.randn(4).bfloat16().float())
    ours.weight, ours.bias = (torch.nn.Parameter(p.detach().bfloat16()) for p in (plain.weight, plain.bias))
    for step in range(3):
        x = torch.randn(8, 4, 5, 5) * (step + 1) + step
        mine = ours(x)
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine, plain(x))
        mine.square().sum().backward()
        assert ours.weight.grad.dtype == torch.bfloat16 and ours.weight.grad.abs().sum() > 0
    torch.testing.assert_close(ours.running_mean, plain.running_mean)
    torch.testing.assert_close(ours.running_var, plain.running_var)
    assert ours.num_batches_tracked == plain.num_batches_tracked == 3
    ours.eval(), plain.eval()
    x = torch.randn(8, 4, 5, 5)
    torch.testing.assert_close(ours(x), plain(x))
