"""The losses of the study and one training step per model family.

Every family exposes the same face to train.py: `modules` and `optimizers` (dicts by name),
`train_step(x, step) -> {metric: tensor}`, `noise(n, generator)` and `sample(noise)` for the sample
grids, `evaluate(batches) -> {metric: float}` on held-out data, and `compile(**options)`, which puts
the step's forward passes through torch.compile. Images arrive in [0, 1].

Random numbers of a step (latents, dequantization noise, label noise, the VAE's posterior draw) are
drawn outside the compiled code, so a compiled step sees the numbers an eager one does."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from genperf.dtypes import at_least_fp32
from genperf.layers import GradientPenalty
from genperf.distributed import all_reduce_sum
from genperf.precision import make_adam

DCGAN, WGAN_GP, WGAN_CLIP = "dcgan", "wgan-gp", "wgan"


def smoothed_real_labels(n, low=0.7, high=0.9, device=None):
    """One-sided label smoothing: targets for real images drawn from U[low, high]; fakes stay at 0."""
    return torch.empty(n, device=device).uniform_(low, high)


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


@contextlib.contextmanager
def seeded(seed, device):
    """A random stream of its own from `seed` (CPU and `device`), leaving the caller's streams untouched:
    held-out evaluation draws the same noise at every call."""
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class GANObjective:
    """DCGAN (non-saturating generator loss, optional one-sided label smoothing), WGAN-GP (gradient
    penalty, Adam(0.5, 0.9)) and WGAN (weight clipping, RMSprop). One step = one batch for the
    discriminator/critic; the generator steps every `critic_iters` steps (every step for DCGAN)."""

    def __init__(self, kind, generator, critic, precision, lr, device_type, label_smoothing=False,
                 critic_iters=5, gp_weight=10.0, clip=0.01, image_data=True, generator_ema=None, ema_decay=0.0):
        self.kind, self.precision, self.image_data = kind, precision, image_data
        self.label_smoothing, self.clip = label_smoothing, clip
        self.penalty = GradientPenalty(gp_weight)
        self.critic_iters = 1 if kind == DCGAN else critic_iters
        d_name = "discriminator" if kind == DCGAN else "critic"
        self.G, self.D = generator, critic
        self.modules = {"generator": generator, d_name: critic}
        # --ema: a copy of the generator whose weights follow an exponential moving average of the
        # trained ones (buffers copied); samples and metrics come from it.
        self.G_ema, self.ema_decay = generator_ema, ema_decay
        if generator_ema is not None:
            self.modules["generator_ema"] = generator_ema
        if kind == WGAN_CLIP:
            opt = lambda m: torch.optim.RMSprop(m.parameters(), lr=lr)  # noqa: E731
        else:
            betas = (0.5, 0.999) if kind == DCGAN else (0.5, 0.9)
            opt = lambda m: make_adam(m.parameters(), lr, betas, device_type)  # noqa: E731
        self.optimizers = {"generator": opt(generator), d_name: opt(critic)}
        self.d_name = d_name
        self.last_g_loss = None
        # What the step calls; compile() swaps in compiled versions. The penalty keeps the eager critic:
        # its double backward (create_graph) cannot go through a compiled graph.
        self.G_step, self.D_step = generator, critic

    def compile(self, **options):
        self.G_step, self.D_step = torch.compile(self.G, **options), torch.compile(self.D, **options)

    def noise(self, n, generator=None):
        return torch.randn(n, self.G.latent_dim, generator=generator)

    def train_step(self, x, step):
        real = x * 2 - 1 if self.image_data else x
        n = real.shape[0]
        z = torch.randn(n, self.G.latent_dim, device=real.device)
        g_step = (step + 1) % self.critic_iters == 0
        with self.precision.autocast():
            with torch.set_grad_enabled(g_step):  # critic-only steps need no generator graph
                fake = self.G_step(z)
            if self.kind == DCGAN:  # batch norm: real and fake batches keep their own statistics
                d_real, d_fake = self.D_step(real), self.D_step(fake.detach())
            else:  # the critic has no batch norm: one pass scores both (fewer, larger convolutions)
                d_real, d_fake = self.D_step(torch.cat([real, fake.detach().to(real.dtype)])).split(n)
            if self.kind == DCGAN:
                target = smoothed_real_labels(n, device=real.device) if self.label_smoothing else torch.ones_like(d_real)
                d_loss = (F.binary_cross_entropy_with_logits(d_real.float(), target)
                          + F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(target)))
            else:
                d_loss = d_fake.float().mean() - d_real.float().mean()
                if self.kind == WGAN_GP:
                    d_loss = d_loss + self.penalty(self.D, real, fake.to(real.dtype))
        self.precision.step(d_loss, self.optimizers[self.d_name])
        if self.kind == WGAN_CLIP:
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.clip, self.clip)
        out = {f"{self.d_name}_loss": d_loss.detach()}
        if g_step:
            with self.precision.autocast():
                g_out = self.D_step(fake).float()
                # Non-saturating loss for DCGAN: maximise log D(G(z)).
                g_loss = (F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
                          if self.kind == DCGAN else -g_out.mean())
            self.precision.step(g_loss, self.optimizers["generator"])
            self.last_g_loss = g_loss.detach()
            if self.G_ema is not None:
                self.update_ema()
        if self.last_g_loss is not None:
            out["generator_loss"] = self.last_g_loss
        return out

    @torch.no_grad()
    def update_ema(self):
        ema, trained = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema, trained, 1.0 - self.ema_decay)
        for mine, theirs in zip(self.G_ema.buffers(), self.G.buffers()):
            mine.copy_(theirs)

    @torch.no_grad()
    def sample(self, z):
        G = self.G if self.G_ema is None else self.G_ema
        training = G.training
        G.eval()
        with self.precision.autocast():
            out = G(z).float()
        G.train(training)
        return (out + 1) / 2 if self.image_data else out

    def evaluate(self, batches):
        return {}


class VAEObjective:
    def __init__(self, model, precision, lr, device_type, beta=1.0):
        self.model, self.precision, self.beta = model, precision, beta
        self.modules = {"vae": model}
        self.optimizers = {"vae": make_adam(model.parameters(), lr, (0.9, 0.999), device_type)}
        self.loss = self._loss

    def compile(self, **options):
        self.loss = torch.compile(self._loss, **options)

    def noise(self, n, generator=None):
        return torch.randn(n, self.model.latent_dim, generator=generator)

    def _loss(self, x, posterior_noise):
        with self.precision.autocast():
            logits, mu, logvar = self.model(x, posterior_noise)
        loss, bce, kl = vae_loss(logits, x, mu, logvar, self.beta)
        return loss, bce.mean(), kl.mean()

    def train_step(self, x, step):
        loss, bce, kl = self.loss(x, torch.randn(len(x), self.model.latent_dim, device=x.device))
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


class FlowObjective:
    """RealNVP trained by maximum likelihood on dequantized 8-bit images; the loss is bits/dim."""

    def __init__(self, model, precision, lr, device_type, clip_grad=100.0, seed=0, rank=0, world_size=1):
        self.model, self.precision, self.clip_grad = model, precision, clip_grad
        self.modules = {"realnvp": model}
        self.optimizers = {"realnvp": make_adam(model.parameters(), lr, (0.9, 0.999), device_type)}
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.loss = self._loss

    def compile(self, **options):
        self.loss = torch.compile(self._loss, **options)

    def dequantization_noise(self, x, step):
        """This rank's slice of the global batch's noise, drawn from (seed, step) alone: every
        number of ranks trains on the same numbers, and a resumed run on the same as before."""
        if x.device.type == "meta":  # genperf.memory's estimate of a step: no numbers, no generator
            return torch.empty_like(x)
        g = torch.Generator(x.device).manual_seed(self.seed * 1_000_003 + step)
        noise = torch.rand((len(x) * self.world_size, *x.shape[1:]), generator=g, device=x.device)
        return noise.tensor_split(self.world_size)[self.rank]

    def noise(self, n, generator=None):
        m = self.model
        return torch.randn(n, m.in_channels, m.image_size, m.image_size, generator=generator)

    def _loss(self, x, noise):
        with self.precision.autocast():
            return self.model.bits_per_dim(x, noise).mean()

    def train_step(self, x, step):
        bpd = self.loss(x, self.dequantization_noise(x, step))
        self.precision.step(bpd, self.optimizers["realnvp"], self.clip_grad)
        return {"bits_per_dim": bpd.detach()}

    @torch.no_grad()
    def sample(self, z):
        with self.precision.autocast():
            return self.model.sample(len(z), z=z)

    @torch.no_grad()
    def image_bits(self, batches):
        """Bits/dim of every image of `batches`, in order, dequantized with noise from the global stream."""
        out = []
        for x in batches.epoch(0):
            with self.precision.autocast():
                out.append(self.model.bits_per_dim(x).float())
        return torch.cat(out)

    def evaluate(self, batches):
        bpd = self.image_bits(batches)
        bpd_sum, n = all_reduce_sum(torch.stack([bpd.sum(), torch.tensor(float(len(bpd)), device=bpd.device)])).tolist()
        return {"bits_per_dim": bpd_sum / n}
