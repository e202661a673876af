"""Variational autoencoders: the VAE (beta = 1) and beta-VAE, loss BCE (summed over pixels) + beta * KL."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genperf import models
from genperf.compiled import compile_batch_dynamic
from genperf.distributed import all_reduce_sum, apply_ddp, apply_fsdp
from genperf.dtypes import at_least_fp32
from genperf.errors import GenperfError
from genperf.families.base import Family, placer
from genperf.metrics import draws, mean_se
from genperf.options import PER_MODEL, Option
from genperf.precision import make_adam
from genperf.streams import POSTERIOR, batch_noise


def vae_terms(logits, x, mu, logvar):
    """Per-image (BCE summed over pixels, KL(q(z|x) || N(0, I))), in at least fp32."""
    logits, mu, logvar = at_least_fp32(logits), at_least_fp32(mu), at_least_fp32(logvar)
    bce = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return bce, kl


def vae_loss(logits, x, mu, logvar, beta=1.0):
    """The study's loss, BCE (sum) + beta * KL, averaged over the batch; also the per-image terms."""
    bce, kl = vae_terms(logits, x, mu, logvar)
    return (bce + beta * kl).mean(), bce, kl


class VAEObjective:
    """`replicated`: the model wrapped by DDP (--ddp), whose forward the training step runs."""

    def __init__(self, model, precision, lr, device_type, beta=1.0, replicated=None, seed=0, rank=0, world_size=1):
        self.model, self.precision, self.beta = model, precision, beta
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.forward = replicated or model
        self.modules = {"vae": model}
        self.optimizers = {"vae": make_adam(model.parameters(), lr, (0.9, 0.999), device_type)}
        self.loss = self._loss

    def compile(self, **options):
        self.loss = compile_batch_dynamic(self._loss, **options)

    def noise(self, n, generator=None):
        return torch.randn(n, self.model.latent_dim, generator=generator)

    def _loss(self, x, posterior_noise):
        with self.precision.autocast():
            logits, mu, logvar = self.forward(x, posterior_noise)
        loss, bce, kl = vae_loss(logits, x, mu, logvar, self.beta)
        return loss, bce.mean(), kl.mean()

    def train_step(self, x, step):
        noise = batch_noise(
            torch.randn,
            len(x),
            (self.model.latent_dim,),
            self.seed,
            step,
            POSTERIOR,
            self.rank,
            self.world_size,
            x.device,
        )
        loss, bce, kl = self.loss(x, noise)
        self.precision.step(loss, self.optimizers["vae"])
        return {"loss": loss.detach(), "recon": bce.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample(self, z):
        with self.precision.autocast():
            return self.model.sample(z)

    @torch.no_grad()
    def image_terms(self, batches):
        """Per image of `batches`, in order, with one posterior draw z ~ q(z|x) from the global stream:
        (BCE, KL, log importance weight log p(x|z) + log p(z) - log q(z|x)), in nats."""
        out = []
        for x in batches.epoch(0):
            noise = torch.randn(len(x), self.model.latent_dim, device=x.device)
            with self.precision.autocast():
                logits, mu, logvar = self.model(x, noise)
            bce, kl = vae_terms(logits, x, mu, logvar)
            mu, logvar = at_least_fp32(mu), at_least_fp32(logvar)
            z = mu + noise * torch.exp(0.5 * logvar)
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
            log_qz = (-0.5 * (noise.pow(2) + math.log(2 * math.pi)) - 0.5 * logvar).sum(1)
            out.append(torch.stack([bce, kl, -bce + log_pz - log_qz]))
        return torch.cat(out, 1)

    def evaluate(self, batches):
        """Held-out ELBO (nats per image, beta = 1, one posterior sample) and the beta objective."""
        bce, kl, _ = self.image_terms(batches)
        totals = torch.stack([bce.sum(), kl.sum(), torch.tensor(float(len(bce)), device=bce.device)])
        bce, kl, n = all_reduce_sum(totals).tolist()
        return {"elbo": -(bce + kl) / n, "recon": bce / n, "kl": kl / n, "objective": (bce + self.beta * kl) / n}


def build(config, data, precision, device, rank=0, world_size=1):
    c, s, _ = data.shape
    arch = config.arch or ("mlp" if s <= 32 else "conv")
    model = placer(config, device)(models.VAE(c, s, config.latent_dim, arch))
    if config.fsdp:
        apply_fsdp(model, [], precision.dtype, ("sample",))
    replicated = apply_ddp(model, device) if config.ddp else None
    return VAEObjective(
        model, precision, config.lr, device.type, config.beta, replicated, config.seed, rank, world_size
    )


def check(config):
    if config.model == "beta-vae" and config.beta <= 1:
        raise GenperfError(f"beta-vae needs --beta > 1 (got {config.beta}); use vae for beta = 1")


def likelihood(run, batches, samples, wanted, progress):
    """The ELBO at beta = 1 (analytic KL) averaged over `samples` posterior draws (draw 0 is the training log's),
    and the importance-sampled negative log-likelihood with `samples` samples (Burda et al.), a tighter bound."""
    terms = draws(run.config.seed, batches, samples, run.objective.image_terms, "posterior draws", progress)
    bce, kl, log_w = terms[:, 0], terms[:, 1], terms[:, 2].double()  # each (K, N)
    out = {}
    if "elbo" in wanted:
        out["elbo"], out["elbo_se"] = mean_se(-(bce + kl))
        out["elbo_draw0"] = -(bce[0] + kl[0]).double().mean().item()
        out["recon"], out["kl"] = bce.double().mean().item(), kl.double().mean().item()
    if "nll" in wanted:
        out["nll"], out["nll_se"] = mean_se(-(torch.logsumexp(log_w, 0) - math.log(samples))[None])
    out["posterior_samples"], out["images"] = samples, terms.shape[2]
    return out


def summary(result):
    lines = []
    if "elbo" in result:
        lines.append(
            f"  ELBO            {result['elbo']:.3f} +- {result['elbo_se']:.3f} nats "
            f"({result['posterior_samples']} posterior draws; draw 0 {result['elbo_draw0']:.3f})"
        )
    if "nll" in result:
        lines.append(
            f"  NLL (IS)        {result['nll']:.3f} +- {result['nll_se']:.3f} nats "
            f"({result['posterior_samples']} importance samples)"
        )
    return lines


VAES = ("vae", "beta-vae")
FAMILY = Family(
    name="vae",
    order=1,
    image_only=True,
    models={
        "vae": dict(
            help="VAE, loss BCE (sum) + KL; --arch mlp (784-400-20) or conv (64x64)",
            lr=1e-3,
            epochs=10,
            latent_dim=20,
            beta=1.0,
        ),
        "beta-vae": dict(help="the same model with --beta > 1", lr=1e-3, epochs=10, latent_dim=20, beta=4.0),
    },
    options=(
        Option(
            "beta",
            "KL weight of vae (1) and beta-vae (default 4, must be > 1)",
            default=PER_MODEL,
            type=float,
            models=VAES,
            at_least=0,
        ),
    ),
    build=build,
    check=check,
    likelihood=likelihood,
    likelihood_metrics=("elbo", "nll"),
    default_samples=100,
    summary=summary,
    heldout_reading="elbo: nats per image, a lower bound of log p(x); higher is better",
)
