"""GANs: DCGAN (non-saturating generator loss, optional one-sided label smoothing), WGAN-GP (gradient penalty) and
WGAN (weight clipping), on images (DCGAN networks) or on the 2-D mixtures (MLPs of 3 ReLU layers of 512 units)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from genperf import models
from genperf.compiled import compile_batch_dynamic
from genperf.distributed import apply_ddp, apply_fsdp
from genperf.errors import GenperfError
from genperf.families.base import Family, placer
from genperf.layers import GradientPenalty
from genperf.options import Option
from genperf.precision import make_adam
from genperf.streams import LATENTS, PENALTY_MIX, REAL_LABELS, batch_noise

DCGAN, WGAN_GP, WGAN_CLIP = "dcgan", "wgan-gp", "wgan"


def smoothed_real_labels(uniform, low=0.7, high=0.9):
    """One-sided label smoothing: targets for real images from U[low, high], given U[0, 1) draws; fakes stay
    at 0."""
    return low + (high - low) * uniform


class GANObjective:
    """DCGAN (non-saturating generator loss, optional one-sided label smoothing), WGAN-GP (gradient
    penalty, Adam(0.5, 0.9)) and WGAN (weight clipping, RMSprop). One step = one batch for the
    discriminator/critic; the generator steps every `critic_iters` steps (every step for DCGAN). `replicated`:
    (generator, critic) wrapped by DDP (--ddp), which the step runs; the gradient penalty's double backward
    goes through the wrapped critic too, so its parameter gradients are averaged over ranks like the rest."""

    def __init__(
        self,
        kind,
        generator,
        critic,
        precision,
        lr,
        device_type,
        label_smoothing=False,
        critic_iters=5,
        gp_weight=10.0,
        clip=0.01,
        image_data=True,
        generator_ema=None,
        ema_decay=0.0,
        replicated=None,
        seed=0,
        rank=0,
        world_size=1,
    ):
        self.kind, self.precision, self.image_data = kind, precision, image_data
        self.seed, self.rank, self.world_size = seed, rank, world_size
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
        self.G_train, self.D_train = replicated or (generator, critic)
        self.G_step, self.D_step = self.G_train, self.D_train

    def compile(self, **options):
        self.G_step, self.D_step = (compile_batch_dynamic(m, **options) for m in (self.G_train, self.D_train))

    def noise(self, n, generator=None):
        return torch.randn(n, self.G.latent_dim, generator=generator)

    def train_step(self, x, step):
        real = x * 2 - 1 if self.image_data else x
        n = real.shape[0]
        z = self.step_noise(torch.randn, n, (self.G.latent_dim,), step, LATENTS, real.device)
        g_step = (step + 1) % self.critic_iters == 0
        with self.precision.autocast():
            with torch.set_grad_enabled(g_step):  # critic-only steps need no generator graph
                fake = self.G_step(z)
            if self.kind == DCGAN:  # batch norm: real and fake batches keep their own statistics
                d_real, d_fake = self.D_step(real), self.D_step(fake.detach())
            else:  # the critic has no batch norm: one pass scores both (fewer, larger convolutions)
                d_real, d_fake = self.D_step(torch.cat([real, fake.detach().to(real.dtype)])).split(n)
            if self.kind == DCGAN:
                target = (
                    smoothed_real_labels(self.step_noise(torch.rand, n, (), step, REAL_LABELS, real.device))
                    if self.label_smoothing
                    else torch.ones_like(d_real)
                )
                d_loss = F.binary_cross_entropy_with_logits(
                    d_real.float(), target
                ) + F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(target))
            else:
                d_loss = d_fake.float().mean() - d_real.float().mean()
                if self.kind == WGAN_GP:
                    mix = self.step_noise(torch.rand, n, (), step, PENALTY_MIX, real.device)
                    d_loss = d_loss + self.penalty(self.D_train, real, fake.to(real.dtype), mix)
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
                g_loss = (
                    F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
                    if self.kind == DCGAN
                    else -g_out.mean()
                )
            self.precision.step(g_loss, self.optimizers["generator"])
            self.last_g_loss = g_loss.detach()
            if self.G_ema is not None:
                self.update_ema()
        if self.last_g_loss is not None:
            out["generator_loss"] = self.last_g_loss
        return out

    def step_noise(self, draw, n, shape, step, stream, device):
        return batch_noise(draw, n, shape, self.seed, step, stream, self.rank, self.world_size, device)

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


def build(config, data, precision, device, rank=0, world_size=1):
    place = placer(config, device)
    if data.is_image:
        c, s, _ = data.shape
        G = place(models.DCGANGenerator(config.latent_dim, c, s))
        D = place(models.DCGANDiscriminator(c, s, batch_norm=config.model == DCGAN))
    else:
        G = place(models.MLPGenerator(config.latent_dim, data.shape[0]))
        D = place(models.MLPDiscriminator(data.shape[0]))
    G_ema = copy.deepcopy(G).requires_grad_(False) if config.ema else None
    if config.fsdp:
        for m in (G, D, G_ema):
            if m is not None:
                apply_fsdp(m, [], precision.dtype)
    replicated = (apply_ddp(G, device), apply_ddp(D, device)) if config.ddp else None
    return GANObjective(
        config.model,
        G,
        D,
        precision,
        config.lr,
        device.type,
        config.label_smoothing,
        config.critic_iters,
        config.gp_weight,
        config.clip,
        data.is_image,
        G_ema,
        config.ema,
        replicated,
        config.seed,
        rank,
        world_size,
    )


def check(config):
    if config.ema and not 0 < config.ema < 1:
        raise GenperfError(f"--ema takes a decay in (0, 1) (got --ema {config.ema})")


GANS = (DCGAN, WGAN_GP, WGAN_CLIP)
FAMILY = Family(
    name="gan",
    order=0,
    models={
        DCGAN: dict(
            help="DCGAN, non-saturating generator loss; --label-smoothing draws real labels from U[0.7, 0.9]",
            lr=2e-4,
            epochs=5,
            latent_dim=100,
        ),
        WGAN_GP: dict(
            help="WGAN-GP: critic without batch norm, penalty weight --gp-weight, --critic-iters",
            lr=1e-4,
            epochs=5,
            latent_dim=100,
        ),
        WGAN_CLIP: dict(
            help="WGAN with weight clipping --clip, --critic-iters; RMSprop", lr=5e-5, epochs=5, latent_dim=100
        ),
    },
    options=(
        Option("label_smoothing", "dcgan: real labels drawn from U[0.7, 0.9]", default=False, models=(DCGAN,)),
        Option(
            "critic_iters",
            "wgan, wgan-gp: critic steps per generator step",
            default=5,
            type=int,
            models=(WGAN_GP, WGAN_CLIP),
            at_least=1,
        ),
        Option(
            "gp_weight", "wgan-gp: gradient penalty weight", default=10.0, type=float, models=(WGAN_GP,), at_least=0
        ),
        Option("clip", "wgan: weight clipping bound", default=0.01, type=float, models=(WGAN_CLIP,), above=0),
        Option(
            "ema",
            "GANs: keep an exponential moving average of the generator weights with this decay (e.g. "
            "0.999) and draw samples and metrics from it (default 0: off)",
            default=0.0,
            type=float,
            models=GANS,
            metavar="DECAY",
            at_least=0,
        ),
    ),
    build=build,
    check=check,
    # Keeping the critic gathered (reshard after neither forward nor backward) runs, but its loss does not move: the
    # penalty's inner autograd.grad ends FSDP2's backward, so the outer backward's gradients never reach the shards.
    # The critic is small (2.8M parameters at 64x64): sharding it would save about 45 MB with Adam's state.
    fused_ops={WGAN_GP: ("gradient_penalty",)},
    no_fsdp={
        WGAN_GP: "FSDP2 ends its backward inside the gradient penalty's double backward, so the critic's "
        "gradients never reach its shards; the critic (2.8M parameters) fits any GPU, so use --ddp"
    },
    heldout_reading="GANs have no held-out likelihood: genperf.evaluate measures FID",
)
