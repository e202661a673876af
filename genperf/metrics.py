"""Metrics of generated data: the importance-sampled NLL of a VAE, a Frechet distance in the features
of a classifier trained on the data set itself, the standard Inception FID (through torchmetrics, with
local weights only), and mode coverage on the 2-D mixtures; repeated draws of a likelihood. Bits/dim and the
ELBO come from the model families (genperf.families); genperf.evaluate puts them all together for a run.

Images are float tensors (N, C, H, W) in [0, 1]."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genperf.data.toy import toy_mixture
from genperf.errors import GenperfError
from genperf.streams import seeded

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # what torchmetrics' FID (torch-fidelity) loads


def draws(seed, batches, samples, compute, desc, progress=False):
    """compute(batches) once per draw k, under the random stream of seed + k; stacked (draw 0 under `seed`, the
    stream of the training log's held-out evaluation)."""
    from tqdm import tqdm

    out = []
    for k in tqdm(range(samples), desc=desc, disable=not progress, leave=False):
        with seeded(seed + k, batches.device):
            out.append(compute(batches).cpu())
    return torch.stack(out)


def mean_se(per_image):
    """(mean, standard error over images) of (draws, N) values averaged over the draws per image."""
    per_image = per_image.double().mean(0)
    return per_image.mean().item(), (per_image.std().item() / math.sqrt(len(per_image))) if len(per_image) > 1 else 0.0


@torch.no_grad()
def vae_nll(model, images, samples=100, chunk=25):
    """Importance-sampled negative log-likelihood of each image (nats; Burda et al.): -log of the mean
    over `samples` draws z ~ q(z|x) of p(x|z) p(z) / q(z|x). Tighter than -ELBO; equal as samples -> 1."""
    mu, logvar = (t.float() for t in model.encode(images))  # fp32 log densities under autocast too
    std = torch.exp(0.5 * logvar)
    log_w = []
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        eps = torch.randn(k, *mu.shape, device=mu.device)
        z = mu + std * eps  # (k, N, D)
        logits = model.decode(z.flatten(0, 1)).float()
        x = images.repeat(k, *([1] * (images.dim() - 1)))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).view(k, -1)
        log_pz = (-0.5 * (z.pow(2) + math.log(2 * math.pi))).sum(-1)
        log_qz = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - 0.5 * logvar).sum(-1)
        log_w.append(log_px + log_pz - log_qz)
    log_w = torch.cat(log_w)
    return -(torch.logsumexp(log_w, 0) - math.log(samples))


class FeatureClassifier(nn.Module):
    """A small CNN classifier; its penultimate layer (128 features) is the space of the Frechet distance."""

    def __init__(self, channels=1, image_size=28, classes=10, features=128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(True),
            nn.AdaptiveAvgPool2d(4 if image_size >= 8 else 2),
            nn.Flatten(),
        )
        pooled = 64 * (16 if image_size >= 8 else 4)
        self.features = nn.Sequential(nn.Linear(pooled, features), nn.ReLU(True))
        self.head = nn.Linear(features, classes)

    def embed(self, x):
        return self.features(self.body(x * 2 - 1))

    def forward(self, x):
        return self.head(self.embed(x))


def train_classifier(train_images, train_labels, test_images, test_labels, epochs=3, batch_size=128, seed=0):
    """A FeatureClassifier trained on the data set itself; returns (model, held-out accuracy)."""
    torch.manual_seed(seed)
    c, s = train_images.shape[1], train_images.shape[-1]
    model = FeatureClassifier(c, s, int(max(train_labels.max(), test_labels.max())) + 1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(train_images), generator=g).split(batch_size):
            loss = F.cross_entropy(model(train_images[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x in test_images.split(512)])
    return model, (pred == test_labels).float().mean().item()


def cached_classifier(path, data, epochs=3):
    """The FeatureClassifier of data set `data` (a genperf.data.Data with labels) and its held-out
    accuracy, trained once and kept at `path`, so that every run scored with it is comparable."""
    import os

    if data.labels is None:
        raise GenperfError(f"{data.name} has no labels to train the feature classifier on")
    c, s = data.shape[0], data.shape[-1]
    classes = int(max(data.labels[0].max(), data.labels[1].max())) + 1
    if os.path.exists(path):
        state = torch.load(path, weights_only=True)
        model = FeatureClassifier(c, s, classes)
        model.load_state_dict(state["model"])
        return model.eval(), state["accuracy"]
    to_float = lambda v: v.float() / 255  # noqa: E731  (uint8 image sets)
    model, accuracy = train_classifier(
        to_float(data.train), data.labels[0], to_float(data.heldout), data.labels[1], epochs=epochs
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"model": model.state_dict(), "accuracy": accuracy, "epochs": epochs}, tmp)
    os.replace(tmp, path)
    return model, accuracy


@torch.no_grad()
def embed(classifier, images):
    return torch.cat([classifier.embed(x) for x in images.split(512)]).double().numpy()


def frechet_distance(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between feature sets (N, D) as numpy arrays.
    Tr (S_a S_b)^(1/2) is computed as the sum of the square roots of the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2) (same spectrum), which stays exact when dead features make S singular."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def classifier_fid(classifier, real, fake):
    """Frechet distance of real vs generated images in the classifier's features (not Inception FID:
    comparable only between runs scored with the same classifier)."""
    return frechet_distance(embed(classifier, real), embed(classifier, fake))


def inception_fid(real, fake, weights=None):
    """The standard FID (Inception-v3 pool features) through torchmetrics. Offline it needs
    torchmetrics and torch-fidelity installed and the FID Inception weights file at `weights`."""
    import os

    if not weights or not os.path.exists(weights):
        raise GenperfError(
            f"Inception FID needs the FID Inception weights ({INCEPTION_WEIGHTS}) as a local file: "
            f"pass its path (got {weights!r}); genperf never downloads them"
        )
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise GenperfError(
            "Inception FID needs torchmetrics and torch-fidelity: pip install torchmetrics[image]"
        ) from None
    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights)
    for images, real_flag in ((real, True), (fake, False)):
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        for x in images.split(256):
            fid.update(x, real=real_flag)
    return fid.compute().item()


def mode_coverage(samples, toy, min_fraction=0.01):
    """For a 2-D mixture: a sample is high quality when it lies within 3 standard deviations of the
    nearest mode's center; a mode is covered when at least `min_fraction` of the samples are high-quality
    samples of it. Returns {"modes_covered", "modes", "high_quality"} (the last a fraction)."""
    centers, std = toy_mixture(toy)
    d = torch.cdist(samples.double(), centers.double())
    nearest, which = d.min(1)
    good = nearest <= 3 * std
    counts = torch.bincount(which[good], minlength=len(centers))
    covered = int((counts >= min_fraction * len(samples)).sum())
    return {"modes_covered": covered, "modes": len(centers), "high_quality": good.double().mean().item()}
