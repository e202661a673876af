import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genperf.families.gan import smoothed_real_labels
from genperf.families.vae import vae_loss
from genperf.models import VAE, DCGANDiscriminator, DCGANGenerator


@pytest.mark.parametrize("channels, size, convs", [(1, 28, 3), (3, 64, 5)])
def test_dcgan_shapes(channels, size, convs):
    G, D = DCGANGenerator(10, channels, size), DCGANDiscriminator(channels, size)
    x = G(torch.randn(4, 10))
    assert x.shape == (4, channels, size, size) and x.abs().max() <= 1
    assert D(x).shape == (4,)
    assert sum(isinstance(m, nn.Conv2d) for m in D.modules()) == convs
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in D.modules())
    critic = DCGANDiscriminator(channels, size, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())


def test_dcgan_init_is_normal_002():
    G = DCGANGenerator(100, 3, 64)
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_dcgan_rejects_sizes_it_cannot_take():
    with pytest.raises(ValueError, match="cannot take image size 30"):
        DCGANGenerator(10, 1, 30)


def test_label_smoothing_range():
    labels = smoothed_real_labels(torch.rand(100_000))
    assert labels.min() >= 0.7 and labels.max() <= 0.9
    assert abs(labels.mean().item() - 0.8) < 0.002  # uniform, not a constant
    assert labels.std().item() > 0.05


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_vae_loss_equals_independent_bce_plus_beta_kl(beta):
    vae = VAE(1, 28, 20, "mlp").double()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    logits, mu, logvar = vae(x)
    p = torch.sigmoid(logits)
    bce = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).flatten(1).sum(1)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(q, prior).sum(1)
    torch.testing.assert_close(
        vae_loss(logits, x, mu, logvar, beta)[0], (bce + beta * kl).mean()
    )  # what training steps on


def test_vae_architectures():
    mlp = VAE(1, 28, 20, "mlp")
    assert [m.in_features for m in mlp.modules() if isinstance(m, nn.Linear)][:2] == [784, 400]
    conv = VAE(3, 64, 32, "conv")
    logits, mu, logvar = conv(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 3, 64, 64) and mu.shape == (2, 32)
    assert conv.sample(torch.randn(3, 32)).shape == (3, 3, 64, 64)
    assert F.mse_loss(conv.sample(torch.zeros(1, 32)), conv.sample(torch.zeros(1, 32))) == 0
