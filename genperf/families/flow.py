"""Normalizing flows: multi-scale RealNVP trained by maximum likelihood on dequantized 8-bit images (loss:
bits/dim), with the fused affine coupling and its memory modes (--checkpointing, --invertible)."""

from __future__ import annotations

import contextlib

import torch

from genperf import models
from genperf.compiled import compile_choice
from genperf.distributed import all_reduce_sum, apply_ddp, apply_fsdp, group_units
from genperf.errors import GenperfError
from genperf.families.base import Family, placer
from genperf.metrics import draws, mean_se
from genperf.options import Option
from genperf.precision import make_adam
from genperf.streams import DEQUANTIZATION, batch_noise


class BitsPerDim(torch.nn.Module):
    """A flow whose forward is its loss, bits/dim per image: what DDP wraps (it hooks a module's forward)."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x, noise):
        return self.flow.bits_per_dim(x, noise)


class FlowObjective:
    """RealNVP trained by maximum likelihood on dequantized 8-bit images; the loss is bits/dim. `replicated`: the
    model's BitsPerDim wrapped by DDP (--ddp), which the training step runs."""

    def __init__(
        self,
        model,
        precision,
        lr,
        device_type,
        clip_grad=100.0,
        seed=0,
        rank=0,
        world_size=1,
        weight_decay=0.0,
        replicated=None,
    ):
        self.model, self.precision, self.clip_grad = model, precision, clip_grad
        self.bits_per_dim = replicated or model.bits_per_dim
        self.modules = {"realnvp": model}
        self.optimizers = {"realnvp": make_adam(decayed_groups(model, weight_decay), lr, (0.9, 0.999), device_type)}
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.loss = self._loss

    def compile(self, **options):
        """torch.compile of each coupling's s/t network, where the step's work is: s/t networks of one shape share
        one compiled graph, so a cold compile costs about half the whole loss's and the step is as fast (see
        docs/performance.md). With --checkpointing coupling the compiled region is the coupling, which then holds
        what is recomputed (an eager recomputation through a compiled network would run it, and its batch norms' update,
        twice); a coupling's mask flip is part of its graph, so those need more graphs than dynamo's default
        limit of 8. The rest of the loss, sampling and evaluation run eagerly (`_eager`)."""
        couplings = self.model.couplings()
        if self.model.checkpointing == "coupling":
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, len(couplings))
            for c in couplings:
                c.compile(**options)
        else:
            for c in couplings:
                c.st_net.compile(**options)

    def dequantization_noise(self, x, step):
        """This rank's slice of the global batch's noise, drawn from (seed, step) alone: every
        number of ranks trains on the same numbers, and a resumed run on the same as before."""
        return batch_noise(
            torch.rand, len(x), x.shape[1:], self.seed, step, DEQUANTIZATION, self.rank, self.world_size, x.device
        )

    def noise(self, n, generator=None):
        m = self.model
        return torch.randn(n, m.in_channels, m.image_size, m.image_size, generator=generator)

    def _loss(self, x, noise):
        with self.precision.autocast():
            return self.bits_per_dim(x, noise).mean()

    def train_step(self, x, step):
        bpd = self.loss(x, self.dequantization_noise(x, step))
        self.precision.step(bpd, self.optimizers["realnvp"], self.clip_grad)
        return {"bits_per_dim": bpd.detach()}

    @torch.no_grad()
    def sample(self, z):
        with self.precision.autocast(), evaluating(self.model), _eager():
            return self.model.sample(len(z), z=z)

    @torch.no_grad()
    def image_bits(self, batches):
        """Bits/dim of every image of `batches`, in order, dequantized with noise from the global stream (in eval
        mode: batch norms use their running statistics, so an image's bits/dim does not depend on its batch)."""
        out = []
        with evaluating(self.model), _eager():
            for x in batches.epoch(0):
                with self.precision.autocast():
                    out.append(self.model.bits_per_dim(x).float())
        return torch.cat(out)

    def evaluate(self, batches):
        bpd = self.image_bits(batches)
        bpd_sum, n = all_reduce_sum(torch.stack([bpd.sum(), torch.tensor(float(len(bpd)), device=bpd.device)])).tolist()
        return {"bits_per_dim": bpd_sum / n}


def decayed_groups(model, weight_decay):
    """Adam's parameter groups: the study's weight decay on the weight-norm scales (parameters named weight_g)
    only; one group of everything without decay (what runs before --weight-decay have in their checkpoints)."""
    if not weight_decay:
        return model.parameters()
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight_g")], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not n.endswith("weight_g")], "weight_decay": 0.0},
    ]


def _eager():
    """Compiled modules run eagerly inside: the rare eval-mode passes would otherwise each compile a graph."""
    return torch.compiler.set_stance("force_eager")


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode inside the block, in the mode it was after."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def realnvp_config(config, shape):
    """The RealNVP constructor's arguments for images of `shape`: the --arch preset (default: the one built for
    that shape, else the mnist preset's widths), with --num-scales/--mid-channels/--num-blocks over it."""
    c, h, w = shape
    if h != w:
        raise GenperfError(f"realnvp needs square images, got {h}x{w}")
    arch = config.arch or next(
        (k for k, v in models.REALNVP_ARCHS.items() if (v["in_channels"], v["image_size"]) == (c, h)), None
    )
    if arch is None:
        cfg = dict(models.REALNVP_ARCHS["mnist"], in_channels=c, image_size=h)
    elif arch not in models.REALNVP_ARCHS:
        raise GenperfError(f"unknown realnvp --arch {arch!r}; choose one of {', '.join(models.REALNVP_ARCHS)}")
    else:
        cfg = dict(models.REALNVP_ARCHS[arch])
        if (cfg["in_channels"], cfg["image_size"]) != (c, h):
            raise GenperfError(
                f"--arch {arch} is built for {cfg['in_channels']}x{cfg['image_size']}x{cfg['image_size']} "
                f"images, {config.data} gives {c}x{h}x{w}; pass --image-size {cfg['image_size']} or another --arch"
            )
    for key in ("num_scales", "mid_channels", "num_blocks"):
        if getattr(config, key) is not None:
            cfg[key] = getattr(config, key)
    return cfg


def build(config, data, precision, device, rank=0, world_size=1):
    model = placer(config, device)(
        models.RealNVP(
            **realnvp_config(config, data.shape),
            checkpointing=config.checkpointing,
            invertible=config.invertible,
            st_norm=config.st_norm,
        )
    )
    if config.fsdp:
        apply_fsdp(model, group_units(model.couplings()), precision.dtype, ("inverse", "bits_per_dim"))
    replicated = apply_ddp(BitsPerDim(model), device) if config.ddp else None
    return FlowObjective(
        model,
        precision,
        config.lr,
        device.type,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        weight_decay=config.weight_decay,
        replicated=replicated,
    )


def check(config):
    if compile_choice(config) == "on" and config.invertible:
        raise GenperfError(
            "--compile does not combine with --invertible, whose backward runs autograd itself for each "
            "coupling; use --checkpointing to save memory under --compile"
        )


def likelihood(run, batches, samples, wanted, progress):
    """Bits/dim of the split over `samples` dequantization draws; draw 0 uses the training log's noise, so for the
    same checkpoint `bits_per_dim_draw0` is the figure the log shows."""
    bpd = draws(run.config.seed, batches, samples, run.objective.image_bits, "bits/dim draws", progress)
    out = {}
    out["bits_per_dim"], out["bits_per_dim_se"] = mean_se(bpd)
    out["bits_per_dim_draw0"] = bpd[0].double().mean().item()
    out["bits_per_dim_draw_sd"] = bpd.double().mean(1).std().item() if samples > 1 else 0.0
    out["dequantization_draws"], out["images"] = samples, bpd.shape[1]
    return out


def summary(result):
    return [
        f"  bits/dim        {result['bits_per_dim']:.4f} +- {result['bits_per_dim_se']:.4f} "
        f"({result['dequantization_draws']} dequantization draws; draw 0 {result['bits_per_dim_draw0']:.4f})"
    ]


FLOW_ONLY = ("realnvp",)
# RealNVP's published training recipe (Adam at 1e-3, held constant), which genperf's default replaces (docs/quality.md)
PUBLISHED_RECIPE = {"lr": 1e-3, "warmup": 0, "lr_schedule": "constant"}
STUDY_BATCH_SIZE = 64  # the study's RealNVP batch; genperf's default on a CPU is 16 (docs/quality.md)
FAMILY = Family(
    name="flow",
    order=2,
    image_only=True,
    models={
        "realnvp": dict(
            help="multi-scale RealNVP; --arch mnist (1x28x28, 2 scales, 64 features, 8 blocks, "
            "19.6M parameters) or celeba64 (3x64x64, 3 scales, 87.9M)",
            lr=5e-3,
            warmup=100,
            lr_schedule="cosine",
            epochs=5,
            sample_temperature=0.7,
            # On a CPU a step costs in proportion to its images: batch 16 reaches a held-out bits/dim in far less
            # time than the study's 64 (docs/quality.md); a GPU needs large batches to be busy.
            cpu=dict(batch_size=16),
        )
    },
    options=(
        Option(
            "st_norm",
            "realnvp: the s/t networks' normalisation: batch (the study's network: batch norm, relu(concat(x, -x)) "
            "input, weight-normed rescale of tanh(s)) or none (the normalisation-free network of earlier genperf "
            "versions, whose runs load as it)",
            default="batch",
            type=str,
            choices=models.ST_NORMS,
            models=FLOW_ONLY,
            absent="none",
        ),
        Option(
            "weight_decay",
            "realnvp: L2 weight decay of Adam on the weight-norm scales (weight_g), the study's 5e-5 by default",
            default=5e-5,
            type=float,
            models=FLOW_ONLY,
            at_least=0,
            absent=0.0,
        ),
        Option("num_scales", "realnvp: override the preset's number of scales", type=int, models=FLOW_ONLY, at_least=1),
        Option(
            "mid_channels", "realnvp: override the preset's s/t network width", type=int, models=FLOW_ONLY, at_least=1
        ),
        Option(
            "num_blocks",
            "realnvp: override the preset's residual blocks per s/t network",
            type=int,
            models=FLOW_ONLY,
            at_least=1,
        ),
        Option(
            "checkpointing",
            "realnvp: recompute activations in backward per coupling or per residual block (bare "
            "--checkpointing: coupling, the best time/memory trade measured by bench_memory.py)",
            default="none",
            type=str,
            choices=models.CHECKPOINTING,
            nargs="?",
            const="coupling",
            models=FLOW_ONLY,
            resumable=True,
        ),
        Option(
            "invertible",
            "realnvp: backprop through the couplings by inverting them instead of keeping activations",
            default=False,
            models=FLOW_ONLY,
            resumable=True,
        ),
    ),
    build=build,
    check=check,
    likelihood=likelihood,
    likelihood_metrics=("bits_per_dim",),
    default_samples=4,
    summary=summary,
    fused_ops={"realnvp": ("affine_coupling",)},
    heldout_reading=(
        "bits/dim: 8 is uniform noise, about 1.1 a well-trained RealNVP on MNIST at 28x28 (shrunken digits cost more "
        "per pixel); lower is better"
    ),
)
