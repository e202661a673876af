"""How large a batch RealNVP celeba64 trains at, per memory mode, measured.

    python benchmarks/bench_memory.py [--preset celeba64] [--batches 2 10] [--gpu-gib 11] [--gpus 2]

For each mode (fp32 baseline, +amp, +checkpointing, +invertible, all on, all on + FSDP over 2 ranks)
a fresh process trains the preset for a few steps at two batch sizes and reports:
  fixed      parameters + gradients + Adam state per rank (and, under AMP, the low-precision weight
             copies; under FSDP, the gathered parameters of the two largest couplings), from the
             parameter count;
  per sample the activation memory one more sample costs, measured: the growth of the peak of a
             forward + backward between the two batch sizes, on CPU the peak resident set (VmHWM,
             reset through /proc/self/clear_refs, with glibc unmapping freed blocks so that it follows
             live memory), on a GPU max_memory_allocated;
  step time  per sample, at the larger batch (a full step with Adam, allocator as in genperf.train).
From these it prints the largest global batch that fits --gpus GPUs of --gpu-gib GiB each (per GPU:
GiB - a reserve for the CUDA context and workspaces - fixed, divided by per sample; times the GPUs)
and each mode's time relative to the baseline.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

MODES = [  # name, options
    ("fp32 baseline", {}),
    ("+amp", {"amp": True}),
    ("+checkpointing", {"checkpointing": "coupling"}),
    ("+checkpointing block", {"checkpointing": "block"}),
    ("+invertible", {"invertible": True}),
    ("all on", {"amp": True, "checkpointing": "block", "invertible": True}),
    ("all on + FSDP x2", {"amp": True, "checkpointing": "block", "invertible": True, "fsdp": 2}),
]
RESERVE_GIB = 1.0  # CUDA context, cuDNN/cuBLAS workspaces, allocator slack


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak resident set (VmHWM)
            f.write("5")


def peak_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))  # KiB


def worker(opts):
    """One mode in this process (or this rank): prints a JSON line of measurements."""
    from genperf.distributed import apply_fsdp, init_distributed, shutdown_distributed
    from genperf.models import REALNVP_ARCHS, RealNVP
    from genperf.precision import Precision, keep_freed_cpu_memory, make_adam, set_malloc_thresholds

    if opts.device == "cpu":
        # The resident set then follows live tensor memory: every block of 64 KiB or more is mmapped and
        # unmapped on free, instead of freed heap memory that later tensors would reuse unseen by the peak.
        set_malloc_thresholds(64 << 10, 64 << 10)

    dist = init_distributed(opts.device)
    device, world = dist.device, dist.world_size
    torch.manual_seed(0)
    model = RealNVP(**REALNVP_ARCHS[opts.preset], checkpointing=opts.checkpointing, invertible=opts.invertible).to(
        device
    )
    n_params = sum(p.numel() for p in model.parameters())
    largest_unit = max(sum(p.numel() for p in c.parameters()) for c in model.couplings())
    precision = Precision(device.type, opts.amp)
    if world > 1:
        apply_fsdp(model, model.couplings(), precision.dtype, ("bits_per_dim",))
    optimizer = make_adam(model.parameters(), 1e-4, (0.9, 0.999), device.type)
    cfg = REALNVP_ARCHS[opts.preset]
    shape = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])

    def step(batch, update=True):
        """One training step (forward + backward, then Adam unless update is False); its seconds."""
        x = torch.rand(batch // world, *shape, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with precision.autocast():
            loss = model.bits_per_dim(x).mean()
        if update:
            precision.step(loss, optimizer)
        else:  # gradients accumulate into the buffers the first step allocated
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    small, large = opts.batches
    step(small)  # allocates gradients and Adam state: from here on only activations differ
    # Peaks of forward + backward alone: Adam's temporaries (foreach on CPU) could otherwise set the
    # peak at the small batch and hide part of the activations.
    peaks = {}
    for batch in (small, large):
        step(batch, update=False)  # first touch of this batch's buffers
        reset_peak(device)
        step(batch, update=False)
        peaks[batch] = peak_bytes(device)
    if device.type == "cpu":
        keep_freed_cpu_memory()  # time with the allocator settings genperf.train uses, not the tracking ones
    step(large)
    seconds = step(large)
    low = 2 if precision.dtype else 0  # bytes per parameter of autocast's (or FSDP's) low-precision weights
    if world > 1:
        fixed = 16 * n_params / world + 2 * largest_unit * (low or 4)
    else:
        fixed = 16 * n_params + low * n_params
    out = dict(
        rank=dist.rank,
        world=world,
        params=n_params,
        fixed=fixed,
        per_sample=(peaks[large] - peaks[small]) / ((large - small) / world),
        seconds_per_sample=seconds / large,
        device=str(device),
    )
    print("RESULT " + json.dumps(out), flush=True)
    shutdown_distributed()


def run_mode(name, mode, args):
    flags = ["--worker", "--preset", args.preset, "--device", args.device, "--batches", *map(str, args.batches)]
    flags += ["--amp"] * mode.get("amp", False) + ["--invertible"] * mode.get("invertible", False)
    flags += ["--checkpointing", mode.get("checkpointing", "none")]
    nproc = mode.get("fsdp", 1)
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            __file__,
            *flags,
        ]
    else:
        cmd = [sys.executable, __file__, *flags]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not results:
        raise SystemExit(f"{name}: worker failed:\n{proc.stderr[-3000:]}")
    return min(results, key=lambda r: r["rank"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="celeba64")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--batches",
        type=int,
        nargs=2,
        default=[2, 10],
        help="the two global batch sizes measured (far apart: the growth must dwarf transient buffers)",
    )
    p.add_argument("--gpu-gib", type=float, default=11.0)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--only", nargs="+", help="run these modes only (names as printed)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--invertible", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", default="none", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    gib = 2**30
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"# RealNVP {args.preset}, {args.device} ({machine}), "
        f"batches {args.batches[0]} and {args.batches[1]}; fit for {args.gpus} x {args.gpu_gib:g} GiB, "
        f"{RESERVE_GIB:g} GiB reserved per GPU",
        flush=True,
    )
    from genperf.precision import Precision

    note = Precision(args.device.split(":")[0], True).note  # the +amp modes are fp32 on a CPU without bf16 kernels
    if note:
        print(f"# {note}", flush=True)
    print(
        f"{'mode':18s} {'fixed/rank':>11s} {'per sample':>11s} {'max global batch':>17s} {'s/sample':>9s} "
        f"{'time vs base':>13s}"
    )
    base = None
    for name, mode in MODES:
        if args.only and name not in args.only:
            continue
        r = run_mode(name, mode, args)
        budget = args.gpu_gib * gib - RESERVE_GIB * gib - r["fixed"]
        fit = max(0, int(budget // r["per_sample"])) * args.gpus if r["per_sample"] > 0 else float("inf")
        base = base or r["seconds_per_sample"]
        print(
            f"{name:18s} {r['fixed'] / gib:8.2f} GiB {r['per_sample'] / 2**20:7.0f} MiB {fit:17} "
            f"{r['seconds_per_sample']:9.3f} {r['seconds_per_sample'] / base:12.2f}x",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
