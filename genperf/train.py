"""python -m genperf.train MODEL [options]: train one of the study's models.

data -> model -> objective -> optimizer, top to bottom in `run`. Writes a run directory (--out)
with config.json, metrics.jsonl, samples/ (a grid per epoch from fixed latents), loss.png, an
atomically written checkpoint.pt that --resume continues from, and summary.json."""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import time
import uuid

import torch

from genperf import checkpoint, models, objectives, perf
from genperf.data import DATASETS, LOADERS, POINT_SETS, check_dataset, default_loader, load_dataset, make_batches
from genperf.errors import DataError, GenperfError, os_error_line
from genperf.faults import (EXIT_CODES, NonFinite, StepChecks, StopSignals, check_parameters, exit_with_launcher,
                            launcher_gone, lock_run_folder, say_launcher_gone, usable_compile_cache)
from genperf.ops.backends import NAMES, use_backend
from genperf.runlog import RunLog
from genperf.distributed import (all_reduce_sum, apply_fsdp, default_nproc, gather_objects, init_distributed,
                                 is_main_process, launch_workers, lost_a_peer, shutdown_distributed, under_torchrun)
from genperf.precision import Precision, keep_freed_cpu_memory

MODELS = ("dcgan", "wgan-gp", "wgan", "vae", "beta-vae", "realnvp")
GAN_MODELS = MODELS[:3]
DEFAULTS = {  # per model: learning rate, epochs, latent size, beta
    "dcgan": dict(lr=2e-4, epochs=5, latent_dim=100),
    "wgan-gp": dict(lr=1e-4, epochs=5, latent_dim=100),
    "wgan": dict(lr=5e-5, epochs=5, latent_dim=100),
    "vae": dict(lr=1e-3, epochs=10, latent_dim=20, beta=1.0),
    "beta-vae": dict(lr=1e-3, epochs=10, latent_dim=20, beta=4.0),
    "realnvp": dict(lr=1e-3, epochs=5),
}
NUM_SAMPLES = 64
# Options that may change when a run is resumed (they change neither the math nor the data order);
# any other difference is an error. --nproc may change: the sharded checkpoint is resharded on load.
RESUMABLE_CHANGES = {"epochs", "steps", "resume", "nproc", "log_every", "ckpt_every", "workers", "download", "backend",
                     "checkpointing", "invertible", "loader", "eval_every", "compile", "compile_mode", "channels_last",
                     "out", "tensorboard",
                     "data_root"}  # out: a run folder may be moved; data_root: so may the data (checked by content)
RANK_0_FIRST_S = 3.0  # how long other ranks wait, after an error all ranks meet, for rank 0 to say it and exit
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m genperf.train", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", choices=MODELS, help="the model to train; optional with --resume, which reads it "
                                                           "from the run folder")
    p.add_argument("--data", default="mnist", help=f"one of {', '.join(DATASETS)} (default mnist)")
    p.add_argument("--data-root", default="data", help="folder holding the data set (default ./data)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download missing data")
    p.add_argument("--image-size", type=int, help="resize images to this size (default: the data set's own)")
    p.add_argument("--channels", type=int, default=3, help="channels of --data synthetic (default 3)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: " + ", ".join(
        f"{m} {d['epochs']}" for m, d in DEFAULTS.items()) + ")")
    p.add_argument("--steps", type=int, help="total training steps; overrides --epochs. A step is one batch for the "
                                             "discriminator or critic: a WGAN's generator steps every --critic-iters")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size, split over the ranks")
    p.add_argument("--lr", type=float, help="learning rate (default depends on the model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the data order and the noise "
                                                        "(default 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when a GPU is visible)")
    p.add_argument("--arch", help="realnvp: mnist or celeba64 (default: the preset matching the data); "
                                  "vae: mlp or conv (default mlp up to 32x32, conv above)")
    p.add_argument("--num-scales", type=int, help="realnvp: override the preset's number of scales")
    p.add_argument("--mid-channels", type=int, help="realnvp: override the preset's s/t network width")
    p.add_argument("--num-blocks", type=int, help="realnvp: override the preset's residual blocks per s/t network")
    p.add_argument("--latent-dim", type=int, help="GAN and VAE latent size (default 100 for GANs, 20 for VAEs)")
    p.add_argument("--beta", type=float, help="KL weight of vae (1) and beta-vae (default 4, must be > 1)")
    p.add_argument("--label-smoothing", action="store_true", help="dcgan: real labels drawn from U[0.7, 0.9]")
    p.add_argument("--critic-iters", type=int, default=5, help="wgan, wgan-gp: critic steps per generator step")
    p.add_argument("--gp-weight", type=float, default=10.0, help="wgan-gp: gradient penalty weight")
    p.add_argument("--clip", type=float, default=0.01, help="wgan: weight clipping bound")
    p.add_argument("--out", help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with the options it was started with (only those that change "
                        "neither its math nor its data may be given again, e.g. --steps, --epochs, --nproc)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 autocast where the device has bf16 kernels, fp16 with a GradScaler on a "
                        "GPU without bf16; a CPU without bf16 kernels (no AVX-512) trains in fp32 and says so")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 over --nproc processes (self-launched unless under torchrun)")
    p.add_argument("--checkpointing", nargs="?", const="coupling", default="none", choices=models.CHECKPOINTING,
                   help="realnvp: recompute activations in backward per coupling or per residual block "
                        "(bare --checkpointing: coupling, the best time/memory trade measured by bench_memory.py)")
    p.add_argument("--invertible", action="store_true",
                   help="realnvp: backprop through the couplings by inverting them instead of keeping activations")
    p.add_argument("--nproc", type=int, help="processes for --fsdp (default: the GPU count, 2 on CPU)")
    p.add_argument("--backend", choices=NAMES, help="fused-op backend (default: the fastest available; "
                                                   "reference is pure torch, for comparison)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the forward passes of the training step (the fused ops compile into the graph); "
                        "the first steps then include the compilation, reported once")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="torch.compile mode (default: default)")
    p.add_argument("--channels-last", action="store_true", help="image models: weights and batches in NHWC layout")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="GANs: keep an exponential moving average of the generator weights with this decay "
                        "(e.g. 0.999) and draw samples and metrics from it (default 0: off)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the logged scalars and sample grids to a TensorBoard event file in the run folder")
    p.add_argument("--log-every", type=int, default=10, help="steps between metric lines")
    p.add_argument("--eval-every", type=int, default=0, help="steps between held-out evaluations (0: epoch ends only)")
    p.add_argument("--ckpt-every", type=int, default=0, help="steps between checkpoints (0: at epoch ends only)")
    p.add_argument("--workers", type=int, default=2, help="loader threads (dali) or processes (torch) for celeba")
    p.add_argument("--loader", choices=LOADERS, help="celeba: NVIDIA DALI or the torchvision DataLoader "
                                                     "(default: dali where it is installed)")
    return p


def given_options(argv):
    """The options argv sets explicitly (not by default), as {dest: value}."""
    p = build_parser()
    for action in p._actions:
        if action.option_strings:  # a suppressed positional would be checked against its choices
            action.default = argparse.SUPPRESS
    given = vars(p.parse_args(argv))
    if given["model"] is None:
        del given["model"]
    return given


def parse_args(argv=None):
    """The training options of argv. With --resume they start from those stored in the run's
    checkpoint, and argv overrides only what it names (checkpoint.restore refuses what may not change)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = build_parser()
    args = p.parse_args(argv)
    if args.resume:
        out = args.out or (os.path.join("runs", args.model) if args.model else None)
        if out is None:
            p.error("--resume needs --out RUN_DIR (or MODEL, for the default runs/MODEL)")
        stored = checkpoint.stored_config(out)
        model = args.model or stored["model"]
        args = build_parser().parse_args([model])  # defaults of options added since the run was made
        vars(args).update(stored)
        vars(args).update(given_options(argv), out=out, resume=True)
        return args
    if args.model is None:
        p.error("MODEL is required (or --resume --out RUN_DIR to continue a run)")
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or os.path.join("runs", args.model)
    args.nproc = default_nproc() if args.nproc is None else args.nproc
    args.loader = args.loader or default_loader(args.data)
    return args


def check_args(args):
    """Refusals that need only the options, so that they come before any worker is started."""
    is_image = args.data not in POINT_SETS
    if args.model == "beta-vae" and args.beta <= 1:
        raise GenperfError(f"beta-vae needs --beta > 1 (got {args.beta}); use vae for beta = 1")
    if not is_image and args.model not in GAN_MODELS:
        raise GenperfError(f"{args.model} needs image data; {args.data} is 2-D points (GANs only)")
    if args.fsdp and args.model == "wgan-gp":
        raise GenperfError("wgan-gp does not run under --fsdp yet: FSDP2 frees the critic's gathered parameters "
                           "before the gradient penalty's double backward; train wgan-gp without --fsdp")
    if (args.checkpointing != "none" or args.invertible) and args.model != "realnvp":
        raise GenperfError("--checkpointing and --invertible apply to realnvp only")
    if args.compile and args.invertible:
        raise GenperfError("--compile does not combine with --invertible, whose backward runs autograd itself for each "
                           "coupling; use --checkpointing to save memory under --compile")
    if args.channels_last and not is_image:
        raise GenperfError(f"--channels-last applies to image data; {args.data} is 2-D points")
    if args.label_smoothing and args.model != "dcgan":
        raise GenperfError("--label-smoothing applies to dcgan only")
    if args.ema and (args.model not in GAN_MODELS or not 0 < args.ema < 1):
        raise GenperfError(f"--ema takes a decay in (0, 1) and applies to GANs (got --ema {args.ema} for {args.model})")
    if args.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise GenperfError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    for name in ("batch_size", "critic_iters", "log_every", "steps", "epochs", "latent_dim", "image_size", "channels",
                 "num_scales", "mid_channels", "num_blocks", "nproc"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise GenperfError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    for name in ("ckpt_every", "eval_every", "workers", "gp_weight"):
        if getattr(args, name) < 0:
            raise GenperfError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(args, name)})")
    for name in ("lr", "clip"):
        if not math.isfinite(getattr(args, name)) or getattr(args, name) <= 0:
            raise GenperfError(f"--{name} must be a number > 0 (got {getattr(args, name)})")
    if args.model == "vae" and not (math.isfinite(args.beta) and args.beta >= 0):
        raise GenperfError(f"--beta must be >= 0 (got {args.beta}): a negative KL weight rewards the KL term")
    if args.fsdp:
        check_nproc(args.nproc, args.device)


def check_nproc(nproc, device):
    """--nproc within what the machine has: a GPU per rank on CUDA, a core per rank on CPU."""
    if torch.device(device).type == "cuda":
        have, what = torch.cuda.device_count(), "GPU"
    else:
        have, what = os.cpu_count() or 1, "CPU core"
    if nproc > have:
        raise GenperfError(f"--nproc {nproc} asks for more ranks than this machine's {have} {what}s (one {what} "
                           f"per rank)")


# Options that apply only to some models or data sets: config.json leaves them out elsewhere.
APPLIES_TO = {
    "channels": lambda a: a.data == "synthetic", "loader": lambda a: a.data == "celeba",
    "workers": lambda a: a.data == "celeba", "image_size": lambda a: a.data not in POINT_SETS,
    "channels_last": lambda a: a.data not in POINT_SETS,
    "label_smoothing": lambda a: a.model == "dcgan", "critic_iters": lambda a: a.model in ("wgan-gp", "wgan"),
    "gp_weight": lambda a: a.model == "wgan-gp", "clip": lambda a: a.model == "wgan",
    "ema": lambda a: a.model in GAN_MODELS, "latent_dim": lambda a: a.model != "realnvp",
    "beta": lambda a: a.model in ("vae", "beta-vae"), "arch": lambda a: a.model in ("vae", "beta-vae", "realnvp"),
    **{k: (lambda a: a.model == "realnvp") for k in ("num_scales", "mid_channels", "num_blocks", "checkpointing",
                                                      "invertible")},
}


def applicable_options(args):
    """The options of `args` that mean something for its model and data (for config.json)."""
    return {k: v for k, v in vars(args).items() if k not in APPLIES_TO or APPLIES_TO[k](args)}


def realnvp_config(args, shape):
    c, h, w = shape
    if h != w:
        raise GenperfError(f"realnvp needs square images, got {h}x{w}")
    arch = args.arch or next((k for k, v in models.REALNVP_ARCHS.items()
                              if (v["in_channels"], v["image_size"]) == (c, h)), None)
    if arch is None:
        cfg = dict(models.REALNVP_ARCHS["mnist"], in_channels=c, image_size=h)
    elif arch not in models.REALNVP_ARCHS:
        raise GenperfError(f"unknown realnvp --arch {arch!r}; choose one of {', '.join(models.REALNVP_ARCHS)}")
    else:
        cfg = dict(models.REALNVP_ARCHS[arch])
        if (cfg["in_channels"], cfg["image_size"]) != (c, h):
            raise GenperfError(f"--arch {arch} is built for {cfg['in_channels']}x{cfg['image_size']}x{cfg['image_size']} "
                               f"images, {args.data} gives {c}x{h}x{w}; pass --image-size {cfg['image_size']} or another --arch")
    for key in ("num_scales", "mid_channels", "num_blocks"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def build_objective(args, data, precision, device, rank=0, world_size=1):
    """The model of `args.model` for data of `data.shape`, on `device` in the layout of
    --channels-last, sharded under --fsdp, wrapped in its training objective (which builds the
    optimizers, so after sharding)."""
    dt = device.type
    layout = torch.channels_last if args.channels_last else torch.preserve_format
    place = lambda module: module.to(device, memory_format=layout)  # noqa: E731
    try:
        if args.model == "realnvp":
            model = place(models.RealNVP(**realnvp_config(args, data.shape), checkpointing=args.checkpointing,
                                         invertible=args.invertible))
            if args.fsdp:
                apply_fsdp(model, model.couplings(), precision.dtype, ("inverse", "bits_per_dim"))
            return objectives.FlowObjective(model, precision, args.lr, dt, seed=args.seed, rank=rank,
                                            world_size=world_size)
        if args.model in ("vae", "beta-vae"):
            c, s, _ = data.shape
            arch = args.arch or ("mlp" if s <= 32 else "conv")
            model = place(models.VAE(c, s, args.latent_dim, arch))
            if args.fsdp:
                apply_fsdp(model, [], precision.dtype, ("sample",))
            return objectives.VAEObjective(model, precision, args.lr, dt, args.beta)
        if data.is_image:
            c, s, _ = data.shape
            G = place(models.DCGANGenerator(args.latent_dim, c, s))
            D = place(models.DCGANDiscriminator(c, s, batch_norm=args.model == "dcgan"))
        else:
            G = place(models.MLPGenerator(args.latent_dim, data.shape[0]))
            D = place(models.MLPDiscriminator(data.shape[0]))
        G_ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        if args.fsdp:
            for m in (G, D, G_ema):
                if m is not None:
                    apply_fsdp(m, [], precision.dtype)
        return objectives.GANObjective(args.model, G, D, precision, args.lr, dt, args.label_smoothing,
                                       args.critic_iters, args.gp_weight, args.clip, data.is_image, G_ema, args.ema)
    except ValueError as e:  # shapes a model cannot take
        raise GenperfError(str(e)) from None


@dataclasses.dataclass
class StepCost:
    flops_per_image: float  # model FLOPs per image of a step (averaged over a WGAN's generator cycle)
    bytes: int  # peak memory of one rank's step: weights, gradients, optimizer state, activations (fp32)


def step_cost(args, data, batch):
    """What one training step of `args`' model costs at `batch` images, counted on the meta device (shapes,
    no arithmetic, no memory) over one step (a whole generator cycle of critic steps for WGANs) of a throwaway
    single-process copy: its model FLOPs by FlopCounterMode and its peak memory by perf.PeakMemory. Meta
    tensors take no autocast, so the bytes are fp32's. Recomputation (--checkpointing, --invertible) saves
    memory but is not model work, so the FLOPs are counted on a copy without it. Random streams are untouched."""
    flops, peak = _count_step(args, data, batch)
    if args.model == "realnvp" and (args.checkpointing != "none" or args.invertible):
        flops = _count_step(argparse.Namespace(**dict(vars(args), checkpointing="none", invertible=False)), data,
                            batch)[0]
    return StepCost(flops, peak)


def _count_step(args, data, batch):
    """(model FLOPs per image, peak bytes) of one step of `args`' model on the meta device."""
    meta = torch.device("meta")
    with torch.random.fork_rng(devices=[]):
        objective = build_objective(argparse.Namespace(**dict(vars(args), fsdp=False, compile=False)), data,
                                    Precision("cpu", False), meta)
        weights = sum(t.untyped_storage().nbytes() for m in objective.modules.values()
                      for t in (*m.parameters(), *m.buffers()))
        x = torch.empty(batch, *data.shape, device=meta)
        with perf.PeakMemory() as memory:
            flops = perf.step_flops(lambda i: objective.train_step(x, i), getattr(objective, "critic_iters", 1))
    return flops / batch, weights + memory.peak


def check_memory(cost, args, data, precision, device, world_size):
    """Refuses a step that cannot fit the device's free memory (all ranks' steps, on a CPU); returns the line the
    run prints about it."""
    need = cost.bytes * (0.5 if precision.dtype else 1)  # bf16/fp16 activations: at most half of fp32's
    need *= world_size if device.type == "cpu" else 1  # CPU ranks share the machine's memory
    if device.type != "cpu":  # in-memory data sets move to the device (on a CPU they are loaded already)
        need += sum(t.nbytes for t in (data.train, data.heldout) if torch.is_tensor(t))
    free = perf.free_memory(device)
    what = f"about {need / 2**30:.2f} GiB" + (" (half the fp32 estimate, under --amp)" if precision.dtype else "")
    if free is not None and need > free:
        raise GenperfError(f"a training step at --batch-size {args.batch_size} needs {what}, more than the "
                           f"{free / 2**30:.1f} GiB free on {device.type}; lower --batch-size or --image-size, or save "
                           f"memory with --amp" + (", --checkpointing or --invertible" if args.model == "realnvp" else ""))
    return f"a step needs {what} of the {free / 2**30:.1f} GiB free" if free is not None else f"a step needs {what}"


def compiled_graphs():
    """Graphs torch.compile has compiled in this process so far (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def evaluate(objective, batches, seed):
    """Held-out metrics with their own fixed random stream, leaving the training stream untouched."""
    with objectives.seeded(seed, batches.device):
        return objective.evaluate(batches)


def run(args, argv):
    check_args(args)
    if args.fsdp and not under_torchrun():
        # Errors every worker would meet come before any starts: the data's (and a download), a damaged checkpoint's.
        check_dataset(args.data, args.data_root, args.download)
        found = checkpoint.find(args.out) if args.resume else None
        if found and checkpoint.is_sharded(found):
            checkpoint.check_shards(found)
        return launch_workers(args.nproc, "genperf.train", argv)
    exit_with_launcher()
    dist = init_distributed(args.device)
    lock = lock_run_folder(args.out, dist.is_main)  # before anything in the folder is read or written
    try:
        return fit(args, dist)
    finally:
        if lock is not None:
            lock.release()


def fit(args, dist):
    device = dist.device
    if device.type == "cpu":
        keep_freed_cpu_memory()
    data = load_dataset(args.data, args.data_root, args.image_size, args.channels, args.download, args.seed)
    precision = Precision(device.type, args.amp)
    torch.manual_seed(args.seed)  # the same initial weights on every rank (FSDP2 keeps each rank's own shard)
    objective = build_objective(args, data, precision, device, dist.rank, dist.world_size)
    if args.compile:  # FSDP2's hooks break the graph at every sharded unit
        objective.compile(fullgraph=not args.fsdp, dynamic=False, mode=None if args.compile_mode == "default" else args.compile_mode)
    torch.manual_seed(args.seed * 1000 + dist.rank)  # then a stream of its own per rank
    # What a step costs, before any is taken: the memory it needs (refused where it cannot fit), and for MFU its
    # model FLOPs per image against the measured matmul peak of every rank's device.
    flops, peak, memory_line = 0.0, 0.0, None
    try:
        cost = step_cost(args, data, args.batch_size // dist.world_size)
    except Exception as e:  # accounting must never stop a run
        cost = None
        if dist.is_main:
            print(f"genperf: no MFU or memory estimate: counting the step failed ({type(e).__name__}: {e})", flush=True)
    if cost is not None:
        memory_line = check_memory(cost, args, data, precision, device, dist.world_size)
        if dist.is_main:
            flops = cost.flops_per_image
            peak = perf.peak_flops(device.type, precision.dtype or torch.float32) * dist.world_size

    train = make_batches(data.train, args.batch_size, args.seed, dist.rank, dist.world_size, device,
                         loader=args.loader, workers=args.workers)
    heldout = make_batches(data.heldout, args.batch_size, 0, dist.rank, dist.world_size, device, shuffle=False,
                           drop_last=False, loader=args.loader, workers=args.workers)
    steps_per_epoch = len(train)
    total_steps = args.steps if args.steps is not None else args.epochs * steps_per_epoch
    fixed_noise = objective.noise(NUM_SAMPLES, torch.Generator().manual_seed(args.seed)).to(device)
    data_print = data.fingerprint()

    ckpt = os.path.join(args.out, checkpoint.SHARDED_CHECKPOINT if args.fsdp else checkpoint.CHECKPOINT)
    found = checkpoint.find(args.out)
    step = 0
    if args.resume:
        if found is None:
            raise GenperfError(f"--resume: no checkpoint at {ckpt}")
        checkpoint.check_belongs(args.out, found)
        step = checkpoint.restore(found, objective, precision, args, data, dist.rank, dist.world_size, device,
                                  RESUMABLE_CHANGES, old_names=models.WeightNormConv2d.OLD_KEYS)
        if step > total_steps:
            raise GenperfError(f"--resume: the checkpoint in {args.out} is at step {step}, beyond the {total_steps} "
                               f"steps asked for; pass a larger --steps or --epochs")
        if step == total_steps:  # nothing to train: leave the run folder as it is
            if dist.is_main:
                print(f"genperf: {args.out} has already finished its {total_steps} steps; nothing to do (pass a "
                      f"larger --steps or --epochs to train further)", flush=True)
            shutdown_distributed()
            return 0
    elif found:
        raise GenperfError(f"{args.out} already holds a run; pass --resume to continue it or choose another --out")
    else:  # the run's identity, kept in config.json and every checkpoint, so that a stranger's checkpoint is refused
        args.run_id = uuid.uuid4().hex
    log = RunLog(args.out, dist.is_main, resume_step=step if args.resume else None, tensorboard=args.tensorboard)
    n_params = sum(p.numel() for m in objective.modules.values() for p in m.parameters())
    log.write_json("config.json", dict(applicable_options(args), world_size=dist.world_size, parameters=n_params,
                                       steps_per_epoch=steps_per_epoch, total_steps=total_steps, data_notes=data.notes,
                                       autocast_dtype=str(precision.dtype) if precision.dtype else None,
                                       precision_note=precision.note))
    if dist.is_main:
        for note in data.notes + ([precision.note] if precision.note else []):
            print(f"genperf: {note}", flush=True)
        print(f"genperf: {args.model} on {args.data} {'x'.join(map(str, data.shape))}, {n_params / 1e6:.2f}M parameters, "
              f"{dist.world_size} rank(s) on {device.type}, {steps_per_epoch} steps/epoch, {total_steps} steps"
              + (f", resuming at step {step}" if step else "") + (f"; {memory_line}" if memory_line else ""), flush=True)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not dist.is_main, dynamic_ncols=True, unit="step")
    window, window_start, t_start, start_step = {}, time.perf_counter(), time.perf_counter(), step
    last, held, artifacts_step = {}, {}, None
    compile_s, compile_reported = 0.0, 0.0  # seconds of the steps in which torch.compile compiled something

    def report_compile():
        """One line when torch.compile first compiled, and one more for each later recompilation."""
        nonlocal compile_reported
        if compile_s > compile_reported and dist.is_main:
            what = "compiled" if compile_reported == 0 else "recompiled: now"
            print(f"genperf: torch.compile {what} {compiled_graphs()} graph(s) by step {step}, "
                  f"{compile_s:.1f} s of steps spent compiling", flush=True)
        compile_reported = compile_s

    def flush_window():
        """Logs the mean of every metric since the last flush."""
        nonlocal window, window_start, last
        report_compile()
        if not window:
            return
        elapsed = time.perf_counter() - window_start
        # The mean over all ranks, so the log shows the global batch's loss whatever the number of ranks.
        means = all_reduce_sum(torch.stack([torch.stack(v).float().mean() for v in window.values()]))
        last = dict(zip(window, (means / dist.world_size).tolist()))
        ips = len(next(iter(window.values()))) * args.batch_size / max(elapsed, 1e-9)
        mfu = ips * flops / peak if peak else 0.0
        log.log(dict(step=step, epoch=step / steps_per_epoch, split="train", images_per_s=ips, mfu=mfu, **last))
        bar.set_postfix({**{k: f"{v:.4g}" for k, v in last.items()}, "img/s": f"{ips:.0f}", "mfu": f"{100 * mfu:.1f}%"})
        window, window_start = {}, time.perf_counter()

    def verify():
        """Before anything is made from the weights (samples, held-out metrics, a checkpoint): every
        step's losses so far were finite and so are the weights."""
        nonlocal stop
        stop = checks.resolve() or stop
        check_parameters(objective.modules, step, device)

    def save_checkpoint():
        nonlocal kept_step
        verify()
        flush_window()
        checkpoint.save(args.out, objective, precision, step, args, dist.is_main, data_print, kept_step)
        kept_step = step

    def epoch_artifacts(name):
        """Sample grid, held-out metrics, checkpoint and plot."""
        verify()
        samples = objective.sample(fixed_noise)  # all ranks: sharded modules gather parameters collectively
        log.save_samples(samples, name, step, real=None if data.is_image else data.heldout[:2000])
        held = evaluate(objective, heldout, args.seed)
        if held:
            log.log(dict(step=step, epoch=step / steps_per_epoch, split="heldout", **held))
        save_checkpoint()
        log.plot_losses()
        return held

    kept_step = step if args.resume else None  # the step of the checkpoint on disk
    stop, finished = None, False  # the signal that asked the run to stop; whether it ran to its end
    signals = StopSignals(verbose=dist.is_main)
    checks = StepChecks(device, signals)
    try:
        # Signals stay deferred until the run has stopped or finished, so a stop always ends with a checkpoint;
        # one during the final grid, evaluation and checkpoint lets them finish.
        with signals:
            while step < total_steps and not stop:
                epoch, epoch_start = step // steps_per_epoch, step
                for x in train.epoch(epoch, start=step % steps_per_epoch):
                    if args.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    graphs, step_start = compiled_graphs() if args.compile else 0, time.perf_counter()
                    metrics = objective.train_step(x, step)
                    if args.compile and compiled_graphs() > graphs:
                        compile_s += time.perf_counter() - step_start
                    step += 1
                    bar.update(1)
                    stop = checks.after_step(step, metrics) or stop
                    for k, v in metrics.items():
                        window.setdefault(k, []).append(v)
                    if step % args.log_every == 0 or step == total_steps:
                        flush_window()
                    if args.eval_every and step % args.eval_every == 0 and step % steps_per_epoch:
                        verify()
                        flush_window()
                        held = evaluate(objective, heldout, args.seed)
                        if held:
                            log.log(dict(step=step, epoch=step / steps_per_epoch, split="heldout", **held))
                    if stop:
                        break
                    if args.ckpt_every and step % args.ckpt_every == 0:
                        save_checkpoint()
                    if step >= total_steps:
                        break
                if step == epoch_start:  # a loader that yields nothing would otherwise loop over empty epochs
                    raise DataError(f"epoch {epoch} gave no batch: every image of it was unreadable")
                if step % steps_per_epoch == 0 and not stop:
                    held, artifacts_step = epoch_artifacts(f"epoch_{step // steps_per_epoch:03d}"), step
            if stop:
                save_checkpoint()
            else:
                report_compile()
                if artifacts_step != step:
                    held = epoch_artifacts(f"step_{step:06d}")
                finish_run(args, dist, log, step, start_step, t_start, steps_per_epoch, n_params, precision,
                           flops, peak, compile_s, last, held, train, heldout)
                finished, stop = True, signals.requested
    except NonFinite as e:
        kept = f"The last good checkpoint (step {kept_step}) is kept at {ckpt}" if kept_step is not None else \
            "No checkpoint was written before it"
        raise GenperfError(f"{e}; stopping. {kept}") from None
    except DataError as e:
        # The weights are fine: a single process keeps its steps (under FSDP the ranks fail at different steps,
        # so a collective save is not attempted; the last checkpoint stays).
        if dist.world_size == 1 and step and step != kept_step:
            save_checkpoint()
        kept = f"checkpoint of step {kept_step} at {ckpt}" if kept_step is not None else "no checkpoint was written"
        raise DataError(f"{e} ({kept})") from None
    finally:
        bar.close()  # ends the bar's line, so a message after it starts a line of its own
    if stop and finished:
        if dist.is_main:
            print(f"genperf: {signal.Signals(stop).name} arrived as the run finished; it finished (step {step}, "
                  f"checkpoint {ckpt})", file=sys.stderr, flush=True)
    elif stop:
        log.plot_losses(final=True)
        log.close()
        if dist.is_main:
            print(f"genperf: stopped by {signal.Signals(stop).name} at step {step}; checkpoint written to {ckpt}; continue "
                  f"with: python -m genperf.train --resume --out {args.out}", file=sys.stderr, flush=True)
    shutdown_distributed()
    return EXIT_CODES[stop] if stop else 0


def finish_run(args, dist, log, step, start_step, t_start, steps_per_epoch, n_params, precision, flops, peak,
               compile_s, last, held, train, heldout):
    """The end of a finished run: skipped images reported, summary.json, the final loss plot, one line."""
    elapsed = time.perf_counter() - t_start
    skipped_images = sum(gather_objects(train.skipped + heldout.skipped))  # found while decoding, on any rank
    if skipped_images and dist.is_main:
        print(f"genperf: skipped {skipped_images} images that failed to decode (named above)", flush=True)
    images_per_s = (step - start_step) * args.batch_size / max(elapsed, 1e-9)
    summary = dict(model=args.model, data=args.data, steps=step, epochs=step / steps_per_epoch, parameters=n_params,
                   world_size=dist.world_size, amp=str(precision.dtype) if precision.dtype else None,
                   skipped_steps=precision.skipped_steps, skipped_images=skipped_images, train=last, heldout=held,
                   wall_time_s=elapsed, images_per_s=images_per_s, flops_per_image=flops, peak_flops=peak,
                   mfu=images_per_s * flops / peak if peak else None, compile_s=compile_s if args.compile else None,
                   samples=sorted(os.listdir(log.path("samples"))) if dist.is_main else None)
    log.write_json("summary.json", summary)
    log.plot_losses(final=True)
    log.close()
    if dist.is_main:
        print(f"genperf: done. held-out {json.dumps(held)}; run directory {args.out}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    usable_compile_cache()
    try:
        args = parse_args(argv)
        with use_backend(args.backend) if args.backend else contextlib.nullcontext():
            return run(args, argv)
    except GenperfError as e:
        if launcher_gone():  # e.g. a save whose collective failed because another rank stopped with the launcher
            say_launcher_gone()
            return 1
        if is_main_process():  # every rank meets the same error; the first says it
            print(f"genperf: error: {e}", file=sys.stderr, flush=True)
        else:  # the launcher stops every rank once one exits: rank 0 must have said why first
            time.sleep(RANK_0_FIRST_S)
        shutdown_distributed()
        return 2
    except OSError as e:  # a file or folder the run needs (outside the writes that say so themselves)
        if lost_a_peer(e) and launcher_gone():
            say_launcher_gone()
            return 1
        if is_main_process():
            print(f"genperf: error: {os_error_line(e)}", file=sys.stderr, flush=True)
        shutdown_distributed()
        return 2
    except Exception as e:
        if lost_a_peer(e) and launcher_gone():  # another rank saw the launcher killed and stopped first
            say_launcher_gone()
            return 1
        if not is_main_process() and lost_a_peer(e):
            return 1  # another rank failed first and says why; a traceback here would only bury that
        raise
    except KeyboardInterrupt:  # outside the training loop, which handles SIGINT itself
        print("\ngenperf: interrupted by SIGINT; the last checkpoint, if any, is kept", file=sys.stderr, flush=True)
        return EXIT_CODES[signal.SIGINT]


if __name__ == "__main__":
    sys.exit(main())
