"""genperf.metrics against independent facts: exact mixtures, Gaussians with known distance, ELBO bounds."""

import math

import numpy as np
import pytest
import torch

from genperf import metrics
from genperf.data import load_dataset, make_batches
from genperf.data.toy import sample_toy, toy_mixture
from genperf.errors import GenperfError
from genperf.families.vae import VAEObjective, vae_terms
from genperf.models import VAE
from genperf.precision import Precision


@pytest.mark.parametrize("toy", ["ring8", "grid25"])
def test_mode_coverage_of_the_true_mixture_and_of_a_collapsed_one(toy):
    real = sample_toy(toy, 5000, torch.Generator().manual_seed(0))
    score = metrics.mode_coverage(real, toy)
    assert score["modes_covered"] == score["modes"] == len(toy_mixture(toy)[0])
    # In 2-D, P(|x - mu| <= 3 sigma) = 1 - exp(-4.5) = 0.989.
    assert score["high_quality"] == pytest.approx(1 - np.exp(-4.5), abs=0.01)
    centers, std = toy_mixture(toy)
    collapsed = centers[0] + std * torch.randn(2500, 2, generator=torch.Generator().manual_seed(1))
    assert metrics.mode_coverage(collapsed, toy)["modes_covered"] == 1
    off = torch.full((2500, 2), 100.0)
    assert metrics.mode_coverage(off, toy) == {"modes_covered": 0, "modes": len(centers), "high_quality": 0.0}


def test_frechet_distance_of_gaussians_is_the_squared_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) + np.array([1.0, 2.0, 0.0, 0.0])
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a, b) == pytest.approx(5.0, rel=0.03)
    c = rng.normal(size=(20000, 4)) * 2  # same mean, covariance 4 I: trace term 4 * (1 + 4 - 2 * 2) = 4
    assert metrics.frechet_distance(a, c) == pytest.approx(4.0, rel=0.05)


def test_classifier_trains_on_digits_and_scores_real_data_closer_than_noise():
    data = load_dataset("digits")
    to_f = lambda v: v.float() / 255  # noqa: E731
    model, accuracy = metrics.train_classifier(
        to_f(data.train), data.labels[0], to_f(data.heldout), data.labels[1], epochs=3
    )
    assert accuracy > 0.8
    real, other_real = to_f(data.heldout[:100]), to_f(data.heldout[100:])
    noise = torch.rand(100, 1, 8, 8)
    assert metrics.classifier_fid(model, real, other_real) < metrics.classifier_fid(model, real, noise)


def _elbo(model, x):
    logits, mu, logvar = model(x)
    bce, kl = vae_terms(logits, x, mu, logvar)
    return -(bce + kl).mean().item()


@torch.no_grad()
def test_importance_sampled_nll_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    model = VAE(1, 8, latent_dim=4)
    x = (torch.rand(64, 1, 8, 8) > 0.5).float()
    elbos = [_elbo(model, x) for _ in range(20)]
    nll = metrics.vae_nll(model, x, samples=200).mean().item()
    assert nll < -np.mean(elbos)  # log E[w] >= E[log w]
    assert nll > -np.mean(elbos) - 10  # and close to it for a small model
    one = np.mean([metrics.vae_nll(model, x, samples=1).mean().item() for _ in range(20)])
    assert one == pytest.approx(-np.mean(elbos), rel=0.02)  # one importance sample is the ELBO


@torch.no_grad()
def test_the_objectives_importance_weights_give_the_metrics_nll():
    """genperf.evaluate's NLL (log weights of VAEObjective.image_terms, one draw per pass) against
    metrics.vae_nll (its own draws, chunked): two estimates of one number."""
    torch.manual_seed(0)
    model = VAE(1, 8, latent_dim=4)
    x = (torch.rand(64, 1, 8, 8) > 0.5).float()
    objective = VAEObjective(model, Precision("cpu", False), 1e-3, "cpu")
    batches = make_batches(x, 16, shuffle=False, drop_last=False)
    log_w = torch.stack([objective.image_terms(batches)[2] for _ in range(400)]).double()
    nll = -(torch.logsumexp(log_w, 0) - math.log(len(log_w)))
    assert nll.mean().item() == pytest.approx(metrics.vae_nll(model, x, samples=400).mean().item(), abs=0.05)
    bce, kl, _ = objective.image_terms(batches)
    assert -(bce + kl).mean().item() == pytest.approx(_elbo(model, x), abs=1.0)  # one draw each: near, not equal


def test_inception_fid_says_what_it_needs():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(GenperfError, match="pt_inception-2015-12-05-6726825d.pth"):
        metrics.inception_fid(x, x)
