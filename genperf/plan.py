"""python -m genperf.plan MODEL [training options] [--gpus 2x11GiB]: the peak memory per GPU of one training step
in every memory mode, and the largest batch per GPU that fits, predicted without a GPU.

How: genperf.trainer.step_cost builds the model on the meta device and takes one training step there (Adam
included) while genperf.perf.PeakMemory follows the bytes of every live tensor; two batch sizes give the fixed
part (weights, gradients, Adam state, what does not grow with the batch) and the part per sample (activations).
What the meta device cannot run is modelled:
  --amp      activations at half their fp32 bytes (bf16/fp16 autocast; weights, gradients and Adam state stay
             fp32; genperf.train, refusing a step that cannot fit, halves its whole estimate)
  --fsdp N   the fixed part divided by N (FSDP2 shards weights, gradients and Adam state), plus the largest
             module's parameters gathered twice (the unit in use and the one prefetched)
Each GPU keeps back --reserve-gib (default 1 GiB: the CUDA context, about 0.5 GiB, and cuDNN/cuBLAS workspaces;
none of it is counted by torch.cuda.max_memory_allocated, which is what the predictions are compared with) and
--fragmentation (default 5%) of the rest for the caching allocator's rounding and fragmentation.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from genperf import config as configs
from genperf.data import Data, planned_shape
from genperf.distributed import group_units
from genperf.errors import GenperfError
from genperf.trainer import step_cost

GIB = 2**30
# name -> genperf.train options; the --fsdp modes take the GPU count of --gpus
MODES = {
    "fp32": [],
    "--amp": ["--amp"],
    "--checkpointing coupling": ["--checkpointing", "coupling"],
    "--checkpointing block": ["--checkpointing", "block"],
    "--invertible": ["--invertible"],
    "--amp --checkpointing block --invertible": ["--amp", "--checkpointing", "block", "--invertible"],
    "--amp --fsdp": ["--amp", "--fsdp"],
    "--amp --checkpointing block --invertible --fsdp": ["--amp", "--checkpointing", "block", "--invertible", "--fsdp"],
}
REALNVP_ONLY = ("--checkpointing", "--invertible")


def parse_gpus(text):
    """'2x11GiB' -> (2, 11 * 2**30)."""
    m = re.fullmatch(r"(\d+)x(\d+(?:\.\d+)?)(GiB|GB)", text.strip())
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"--gpus wants COUNTxSIZE, e.g. 2x11GiB or 8x80GB, got {text!r}")
    return int(m.group(1)), float(m.group(2)) * (GIB if m.group(3) == "GiB" else 10**9)


def largest_unit_bytes(config, shape):
    """Bytes of the parameters of the largest unit FSDP2 gathers at once: a group of RealNVP's couplings
    (genperf.distributed.group_units), a whole network of the other models; in the --amp dtype under --amp."""
    from genperf.families import build_objective
    from genperf.precision import Precision

    meta = torch.device("meta")
    args = argparse.Namespace(**dict(vars(config), ddp=False, fsdp=False, compile=False))
    objective = build_objective(args, Data("planned", None, None, shape), Precision("cpu", False), meta)
    units = [u for m in objective.modules.values() for u in group_units(getattr(m, "couplings", lambda m=m: [m])())]
    bytes_per_value = 2 if config.amp else 4
    return max(sum(p.numel() for block in u for p in block.parameters()) * bytes_per_value for u in units)


def cost_line(flags, argv, gpus, batches):
    """(fixed bytes per GPU, bytes per sample) of one mode, from two meta-device steps."""
    config = configs.parse_args([*argv, *[f for f in flags if f != "--fsdp"]])
    shape = planned_shape(config.data, config.image_size, getattr(config, "channels", 3))
    data = Data("planned", None, None, shape)
    small, large = (step_cost(config, data, b).bytes for b in batches)
    per_sample = (large - small) / (batches[1] - batches[0])
    fixed = small - per_sample * batches[0]
    if config.amp:
        per_sample *= 0.5
    if "--fsdp" in flags:
        fixed = fixed / gpus + 2 * largest_unit_bytes(config, shape)
    return fixed, per_sample


def plan(argv, gpus, gpu_bytes, reserve, fragmentation, batches=(32, 128), modes=None):
    """Rows of the table: mode, fixed bytes per GPU, bytes per sample, largest batch per GPU. The two batches
    are large enough that activations, not the optimizer step's state, make the peak (at batches 2 and 6 the
    checkpointed modes' peaks were the optimizer's, which does not grow with the batch); the meta device
    allocates nothing, so their size costs no memory."""
    model = argv[0] if argv else ""
    rows = []
    usable = (gpu_bytes - reserve) * (1 - fragmentation)
    for mode, flags in (modes or MODES).items():
        if model != "realnvp" and any(f in flags for f in REALNVP_ONLY):
            continue
        fixed, per_sample = cost_line(flags, argv, gpus, batches)
        per_gpu = max(0, int((usable - fixed) // per_sample)) if per_sample > 0 else None
        rows.append(dict(mode=mode, fixed=fixed, per_sample=per_sample, per_gpu=per_gpu))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m genperf.plan",
        description=__doc__.split("\n")[0],
        epilog="Training options (after MODEL) are genperf.train's, e.g. --arch celeba64 --data celeba.",
    )
    p.add_argument("--gpus", type=parse_gpus, default="2x11GiB", help="COUNTxSIZE, e.g. 2x11GiB (default) or 8x80GB")
    p.add_argument("--reserve-gib", type=float, default=1.0, help="GiB kept back per GPU (default 1)")
    p.add_argument("--fragmentation", type=float, default=0.05, help="fraction of the rest (default 0.05)")
    p.add_argument(
        "--json", metavar="FILE", help="also write the rows to FILE (the selftest compares GPU peaks with them)"
    )
    args, train_argv = p.parse_known_args(argv)
    if not train_argv or train_argv[0].startswith("-"):
        p.error("name the model first, e.g. python -m genperf.plan realnvp --arch celeba64 --data celeba")
    if not 0 <= args.fragmentation < 1 or args.reserve_gib < 0:
        p.error("--fragmentation must be in [0, 1) and --reserve-gib at least 0")
    count, size = args.gpus
    try:
        rows = plan(train_argv, count, size, args.reserve_gib * GIB, args.fragmentation)
    except GenperfError as e:
        print(f"genperf.plan: error: {e}", file=sys.stderr)
        return 2
    print(
        f"# {' '.join(train_argv)}: one training step per GPU, {count} x {size / GIB:.1f} GiB, "
        f"{args.reserve_gib:g} GiB reserved and {100 * args.fragmentation:g}% for fragmentation per GPU"
    )
    print(f"{'mode':48s} {'fixed/GPU':>10s} {'per sample':>11s} {'batch/GPU':>10s} {'global':>7s}")
    for r in rows:
        per_gpu = "-" if r["per_gpu"] is None else str(r["per_gpu"])
        total = "-" if r["per_gpu"] is None else str(r["per_gpu"] * count)
        print(
            f"{r['mode']:48s} {r['fixed'] / GIB:6.2f} GiB {r['per_sample'] / 2**20:7.1f} MiB {per_gpu:>10s} {total:>7s}"
        )
    print("# global: the batch per GPU times the GPUs, data parallel (--ddp, as the study's two GPUs, or --fsdp)")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(options=train_argv, gpus=count, gpu_bytes=size, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
