"""Every training option, once: the table below (and each model family's own, genperf.families) is what the
command line, the checks, config.json, the comparison on --resume, genperf.load, the Python API, the study, the
selftest and the benchmarks all derive from.

A config is an argparse.Namespace with one attribute per option plus `model`; `parse_args(argv)` makes one from
a command line, `make(model, **options)` from Python."""

from __future__ import annotations

import argparse
import os

import torch

from genperf import checkpoint
from genperf.compiled import COMPILE_CHOICES, compile_choice
from genperf.data import DATASETS, LOADERS, POINT_SETS, default_loader
from genperf.distributed import default_nproc, restart_count
from genperf.errors import GenperfError
from genperf.families import FAMILIES, FAMILY_OF, MODELS
from genperf.ops.backends import NAMES as BACKENDS
from genperf.options import PER_MODEL, Option
from genperf.schedule import SCHEDULES

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
IMAGE_MODELS_WITH_ARCH = ("vae", "beta-vae", "realnvp")
BATCH_SIZE = 64  # the global batch of a model whose family sets none


def _batch_size_help():
    on_cpu = [
        f"{m} on a CPU {f.models[m]['cpu']['batch_size']}"
        for f in FAMILIES
        for m in f.models
        if "batch_size" in f.models[m].get("cpu", {})
    ]
    return (
        f"global batch size, split over the ranks (default {BATCH_SIZE}; {', '.join(on_cpu)}: a CPU step costs in "
        "proportion to its images, so smaller batches make more updates a second there)"
    )


def _image_data(config):
    return config.data not in POINT_SETS


COMMON = (
    Option("data", f"one of {', '.join(DATASETS)} (default mnist)", default="mnist", type=str),
    Option("data_root", "folder holding the data set (default ./data)", default="data", type=str, resumable=True),
    Option("download", "never download missing data", default=True, flag="--no-download", resumable=True),
    Option(
        "image_size",
        "resize images to this size (default: the data set's own)",
        type=int,
        applies=_image_data,
        at_least=1,
    ),
    Option(
        "channels",
        "channels of --data synthetic (default 3)",
        default=3,
        type=int,
        applies=lambda c: c.data == "synthetic",
        at_least=1,
    ),
    Option(
        "epochs",
        "epochs to train (default: "
        + ", ".join(f"{m} {f.models[m]['epochs']}" for f in FAMILIES for m in f.models)
        + ")",
        default=PER_MODEL,
        type=int,
        resumable=True,
        at_least=1,
    ),
    Option(
        "steps",
        "total training steps; overrides --epochs. A step is one batch for the discriminator or critic: "
        "a WGAN's generator steps every --critic-iters",
        type=int,
        resumable=True,
        at_least=1,
    ),
    Option("batch_size", _batch_size_help(), default=PER_MODEL, type=int, at_least=1),
    Option("lr", "learning rate (default depends on the model)", default=PER_MODEL, type=float, above=0),
    Option(
        "warmup",
        "steps over which the learning rate rises linearly to --lr (default: realnvp 100, 0 for the other models)",
        default=PER_MODEL,
        type=int,
        at_least=0,
        absent=0,
    ),
    Option(
        "lr_schedule",
        "the learning rate's course over the run, times the warm-up's ramp: constant, or cosine (from --lr at the "
        "first step to zero at the last, so --steps/--epochs given on --resume reshape it; default: realnvp cosine, "
        "constant for the other models)",
        default=PER_MODEL,
        type=str,
        choices=SCHEDULES,
        absent="constant",
    ),
    Option("seed", "seed of the initial weights, the data order and the noise (default 0)", default=0, type=int),
    Option(
        "device",
        "cpu, cuda or cuda:N (default: cuda when a GPU is visible)",
        default="cuda" if torch.cuda.is_available() else "cpu",
        type=str,
    ),
    Option(
        "arch",
        "realnvp: mnist or celeba64 (default: the preset matching the data); vae: mlp or conv (default mlp "
        "up to 32x32, conv above)",
        type=str,
        models=IMAGE_MODELS_WITH_ARCH,
    ),
    Option(
        "latent_dim",
        "GAN and VAE latent size (default 100 for GANs, 20 for VAEs)",
        default=PER_MODEL,
        type=int,
        models=tuple(m for f in FAMILIES for m in f.models if "latent_dim" in f.models[m]),
        at_least=1,
    ),
    Option("out", "run directory (default runs/MODEL)", type=str, resumable=True),
    Option(
        "resume",
        "continue the run in --out with the options it was started with (only those that change neither "
        "its math nor its data may be given again, e.g. --steps, --epochs, --nproc, --data-root)",
        default=False,
        resumable=True,
    ),
    Option(
        "amp",
        "mixed precision: bf16 autocast where the device has bf16 kernels, fp16 with a GradScaler on a GPU "
        "without bf16; a CPU without bf16 kernels (no AVX-512) trains in fp32 and says so",
        default=False,
    ),
    Option(
        "ddp",
        "data parallel over --nproc processes (DistributedDataParallel: each rank holds the whole model and "
        "trains on its slice of the batch, gradients all-reduced in buckets); the mode for models that fit one "
        "device, which all of the study's do. Self-launched unless under torchrun; a resumed run may switch "
        "between --ddp, --fsdp and one process",
        default=False,
        resumable=True,
    ),
    Option(
        "fsdp",
        "FSDP2 over --nproc processes: parameters, gradients and Adam's state sharded across ranks, for models or "
        "batches that do not fit one device (self-launched unless under torchrun)",
        default=False,
        resumable=True,
    ),
    Option(
        "nproc",
        "processes for --ddp or --fsdp (default: the GPU count, 2 on CPU); --nproc N > 1 alone means --ddp, "
        "--nproc 1 alone one process",
        type=int,
        resumable=True,
        at_least=1,
    ),
    Option(
        "comm_init_timeout",
        "seconds a collective may wait on the other ranks while the run starts (compile, data warm-up, the first "
        "steps), before the job ends with one line",
        default=900,
        type=int,
        resumable=True,
        at_least=1,
        applies=lambda c: c.ddp or c.fsdp,
    ),
    Option(
        "comm_timeout",
        "seconds a collective may wait on the other ranks once steps are steady (from the third step): a rank "
        "that hangs or is stopped ends the job this long after, naming it",
        default=300,
        type=int,
        resumable=True,
        at_least=1,
        applies=lambda c: c.ddp or c.fsdp,
    ),
    Option(
        "elastic_batch",
        "what a run continued on another number of ranks (an elastic job that lost a node, --resume --nproc N) keeps: "
        "global (the global batch, each rank taking its share; default) or per-rank (each rank's batch, the global "
        "batch changing with the ranks)",
        default="global",
        type=str,
        choices=("global", "per-rank"),
        resumable=True,
        absent="global",
    ),
    Option(
        "backend",
        "fused-op backend (default: the fastest available; reference is pure torch, for comparison)",
        type=str,
        choices=BACKENDS,
        resumable=True,
    ),
    Option(
        "compile",
        "torch.compile the step's networks (RealNVP: each coupling's s/t network; the fused ops compile into "
        "the graphs): auto (the default) times two eager steps and compiles only where the gain measured for "
        "this model and CPU kind, over the steps left, outlasts the compile (cold: about a minute on a 2-core "
        "CPU; warm, once torch's on-disk cache holds the graphs, seconds), and says so in one line; --compile "
        "(on) always, --no-compile (off) never",
        default="auto",
        type=str,
        choices=COMPILE_CHOICES,
        nargs="?",
        const="on",
        resumable=True,
        absent="off",
    ),
    Option(
        "compile_mode",
        "torch.compile mode (default: default)",
        default="default",
        type=str,
        choices=COMPILE_MODES,
        resumable=True,
    ),
    Option(
        "channels_last",
        "image models: weights and batches in NHWC layout",
        default=False,
        applies=_image_data,
        resumable=True,
    ),
    Option(
        "tensorboard",
        "also write the logged scalars and sample grids to a TensorBoard event file in the run folder",
        default=False,
        resumable=True,
    ),
    Option(
        "sample_temperature",
        "latent temperature of the sample grids the run draws (latents from N(0, T^2 I); T < 1 trades diversity for "
        "fidelity; default: realnvp 0.7, the convention of Glow and later flows, 1 for the other models)",
        default=PER_MODEL,
        type=float,
        resumable=True,
        above=0,
        absent=1.0,
    ),
    Option("log_every", "steps between metric lines", default=10, type=int, resumable=True, at_least=1),
    Option(
        "eval_every",
        "steps between held-out evaluations (0: epoch ends only)",
        default=0,
        type=int,
        resumable=True,
        at_least=0,
    ),
    Option(
        "ckpt_every",
        "steps between checkpoints (0: at epoch ends only)",
        default=0,
        type=int,
        resumable=True,
        at_least=0,
    ),
    Option(
        "workers",
        "loader threads (dali) or processes (torch) for celeba",
        default=2,
        type=int,
        applies=lambda c: c.data == "celeba",
        resumable=True,
        at_least=0,
    ),
    Option(
        "loader",
        "celeba: NVIDIA DALI or the torchvision DataLoader (default: dali where it is installed)",
        type=str,
        choices=LOADERS,
        applies=lambda c: c.data == "celeba",
        resumable=True,
    ),
)
OPTIONS = COMMON + tuple(option for family in FAMILIES for option in family.options)
OPTION = {option.name: option for option in OPTIONS}
RESUMABLE = frozenset(o.name for o in OPTIONS if o.resumable)
MODEL_HELP = {model: family.models[model]["help"] for family in FAMILIES for model in family.models}


def model_defaults(model, device):
    """The options whose default the model's family sets (lr, epochs, latent size, beta, ...; the batch, BATCH_SIZE
    where it sets none), with its defaults for a CPU (the entry "cpu") over them when `device` is one."""
    table = {"batch_size": BATCH_SIZE} | {k: v for k, v in FAMILY_OF[model].models[model].items() if k != "help"}
    on_cpu = table.pop("cpu", {})
    return table | on_cpu if str(device).split(":")[0] == "cpu" else table


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m genperf.train",
        description="train one of the study's models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="models:\n" + "\n".join(f"  {m:10s} {h}" for m, h in MODEL_HELP.items()),
    )
    p.add_argument(
        "model",
        nargs="?",
        choices=MODELS,
        help="the model to train; optional with --resume, which reads it from the run folder",
    )
    for option in OPTIONS:
        option.add_to(p, None if option.default is PER_MODEL else option.default)
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off", help="the same as --compile off")
    return p


def given_options(argv):
    """The options `argv` sets explicitly (not by default), as {name: value}."""
    p = build_parser()
    for action in p._actions:
        if action.option_strings:  # a suppressed positional would be checked against its choices
            action.default = argparse.SUPPRESS
    given = vars(p.parse_args(argv))
    if given["model"] is None:
        del given["model"]
    return given


def complete(config, given=()):
    """Fills in what depends on the model or the machine: per-model defaults, --out, the parallel mode and
    --nproc, --loader. `given`: the names of the options the user gave."""
    for key, value in model_defaults(config.model, config.device).items():
        if getattr(config, key) is None:
            setattr(config, key, value)
    config.out = config.out or os.path.join("runs", config.model)
    config.compile = compile_choice(config)  # genperf.fit(compile=True) means on
    choose_parallel(config, given)
    config.nproc = default_nproc() if config.nproc is None else config.nproc
    config.loader = config.loader or default_loader(config.data)
    return config


def parse_args(argv):
    """The config of a command line. With --resume it starts from the options stored in the run's checkpoint, and
    argv overrides only what it names (checkpoint.restore refuses what may not change). A job started again by
    torchrun (--max-restarts) or Slurm (--requeue) continues the run it had checkpointed, as if given --resume."""
    argv = list(argv)
    p = build_parser()
    config = p.parse_args(argv)
    if config.resume or continues_after_restart(config):
        out = run_folder(config)
        if out is None:
            p.error("--resume needs --out RUN_DIR (or MODEL, for the default runs/MODEL)")
        return resumed(out, given_options(argv))
    if config.model is None:
        p.error("MODEL is required (or --resume --out RUN_DIR to continue a run)")
    return complete(config, given_options(argv))


def run_folder(config):
    """--out, else runs/MODEL; None when neither is given."""
    return config.out or (os.path.join("runs", config.model) if config.model else None)


def continues_after_restart(config):
    """Whether this job was started again (genperf.distributed.restart_count) and its run folder holds a checkpoint."""
    out = run_folder(config)
    return restart_count() > 0 and out is not None and checkpoint.find(out) is not None


def resumed(out, given):
    """The config of the run in `out`: the options stored in its checkpoint, with `given` over them."""
    meta = checkpoint.stored_meta(out)
    config = stored(meta["config"], given.get("model"))
    vars(config).update(given, out=out, resume=True)
    choose_parallel(config, given)
    if config.elastic_batch == "per-rank" and "batch_size" not in given:
        config.batch_size = config.batch_size // len(meta["rng"]) * ranks_of(config)  # each rank's share stays
    return config


def ranks_of(config):
    """The number of ranks `config` trains on: torchrun's world, else --nproc under --ddp/--fsdp, else one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["WORLD_SIZE"])
    return (config.nproc or default_nproc()) if config.ddp or config.fsdp else 1


def choose_parallel(config, given):
    """--ddp, --fsdp or one process, from what the user gave (`given`: option names) over what `config` holds
    (a resumed run's stored mode): a named mode replaces the other; --nproc alone picks one process (1) or,
    unless the run is --fsdp, --ddp; a torchrun job of several processes with no mode named is --ddp (each
    rank training on its own, unsynchronised, would be no use)."""
    modes = {"ddp", "fsdp"} & set(given)
    if len(modes) == 1:
        other = ({"ddp", "fsdp"} - modes).pop()
        setattr(config, other, False)
    elif not modes and "nproc" in given and config.nproc is not None:
        if config.nproc == 1:
            config.ddp = config.fsdp = False
        elif not config.fsdp:
            config.ddp = True
    elif not modes and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not config.fsdp:
        config.ddp = True


def stored(options, model=None):
    """The config a run stored in its checkpoint (`options`, a dict): options added to genperf since take the value
    that means what the run did (Option.absent), else their default."""
    config = build_parser().parse_args([model or options["model"]])
    vars(config).update(options)
    config.compile = compile_choice(config)  # runs stored before --compile auto hold True or False
    for option in OPTIONS:
        if option.name not in options and option.absent is not PER_MODEL and option.applies_to(config):
            setattr(config, option.name, option.absent)
    return config


def make(model=None, **options):
    """The config of a Python call: `model` and options by name (genperf.fit's arguments); with resume=True and
    out=RUN_DIR, the run's stored options with these over them."""
    unknown = sorted(set(options) - set(OPTION))
    if unknown:
        raise GenperfError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; see python -m genperf.train --help"
        )
    if options.get("resume"):
        if not options.get("out"):
            raise GenperfError("resume=True needs out=RUN_DIR")
        return resumed(options["out"], dict(options, **({"model": model} if model else {})))
    if model not in FAMILY_OF:
        raise GenperfError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    config = build_parser().parse_args([model])
    vars(config).update(options)
    return complete(config, options)


def defaults_for(config):
    """What every option would be for `config`'s model if none were given (the loader: for its data)."""
    defaults = complete(build_parser().parse_args([config.model]))
    defaults.loader = default_loader(config.data)
    return defaults


def to_argv(config):
    """The command line of `config` (its model and every option that differs from the default): what a worker
    process of --ddp or --fsdp parses, and what the study prints."""
    defaults = defaults_for(config)
    argv = [config.model]
    for option in OPTIONS:
        value = getattr(config, option.name, None)
        if value == getattr(defaults, option.name) or value is None:
            continue
        if option.type is None:  # a flag: its presence says the non-default value
            argv.append(option.cli)
        else:
            argv += [option.cli, str(value)]
    return argv


def check(config):
    """Refusals that need only the options, so that they come before any worker is started or file written."""
    for option in OPTIONS:
        reason = option.check(getattr(config, option.name, None))
        if reason:
            raise GenperfError(reason)
    family = FAMILY_OF[config.model]
    if family.image_only and not _image_data(config):
        raise GenperfError(f"{config.model} needs image data; {config.data} is 2-D points (GANs only)")
    defaults = defaults_for(config)
    for option in OPTIONS:  # set to something other than its default where it means nothing
        if getattr(config, option.name, None) != getattr(defaults, option.name) and not option.applies_to(config):
            raise GenperfError(f"{option.cli} does not apply to {config.model} on {config.data}")
    if config.ddp and config.fsdp:
        raise GenperfError("--ddp and --fsdp are two ways to train on several processes; choose one")
    if config.elastic_batch == "per-rank" and config.steps is None:
        raise GenperfError(
            "--elastic-batch per-rank needs a run sized by --steps: an epoch's steps change with the global batch"
        )
    if config.fsdp and config.model in family.no_fsdp:
        raise GenperfError(
            f"{config.model} does not run under --fsdp: {family.no_fsdp[config.model]} (--ddp --nproc "
            f"{config.nproc} in place of --fsdp)"
        )
    if family.check:
        family.check(config)
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise GenperfError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    if config.ddp or config.fsdp:
        check_nproc(config.nproc, config.device)


def check_nproc(nproc, device):
    """--nproc within what the machine has: a GPU per rank on CUDA, a core per rank on CPU."""
    if torch.device(device).type == "cuda":
        have, what = torch.cuda.device_count(), "GPU"
    else:
        have, what = os.cpu_count() or 1, "CPU core"
    if nproc > have:
        raise GenperfError(
            f"--nproc {nproc} asks for more ranks than this machine's {have} {what}s (one {what} per rank)"
        )


def applicable(config):
    """The options of `config` that mean something for its model and data (config.json's)."""
    return {k: v for k, v in vars(config).items() if k not in OPTION or OPTION[k].applies_to(config)}
