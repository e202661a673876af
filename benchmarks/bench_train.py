"""Images per second of the whole training step, every model, a plain-PyTorch baseline beside each
genperf option, measured side by side in one run.

    python benchmarks/bench_train.py [--models realnvp-mnist-b16 dcgan-64 ...] [--rounds 5]
                                     [--batches 64 128 256] [--profile FOLDER]
                                     [--csv benchmarks/results/train.csv]

Each model configuration runs in a process of its own (a fresh allocator and compile cache: after
the 87.5M-parameter celeba64 preset, small models ran up to 2x slower in the same process); in it
every variant is built from the same seed (genperf.train's own
build_objective, so these are the models `python -m genperf.train` trains), warmed up (compiled
variants compile there), then timed in alternating rounds so that machine noise falls on all of
them alike; a round is one generator cycle (critic_iters steps for the WGANs, one step otherwise).
Reported per variant: median step time, images/s, speedup over the baseline, model FLOP/s and MFU.
FLOPs per image are counted by FlopCounterMode (genperf.perf) on one eager step; the peaks are an
fp32 and a bf16 matmul timed in the same run on the same device, and each variant's MFU is taken
against the peak of its own compute dtype (bf16 under --amp, else fp32; --amp is fp32 on a CPU without
bf16 kernels, as in genperf.train, and the header says so).

Variants:
  baseline       plain PyTorch: the pure-torch reference ops (--backend reference), fp32, eager,
                 torch.optim.Adam with its default (foreach) implementation
  fused          genperf's default: fused coupling / penalty kernels, fused Adam
  +amp           fused, bf16 autocast (--amp)
  +compile       fused, torch.compile (--compile)
  +channels_last fused, NHWC weights and batches (--channels-last)
  amp+channels_last  --amp --channels-last
  amp+compile    --amp --compile
  all on         --amp --compile --channels-last
  all on+cudagraphs  all on with --compile-mode reduce-overhead (CUDA graphs; on a CPU the same as all on)
Batches are random 8-bit images of the data set's shape (data loading is not timed: in-memory
data sets are sliced on the device, see genperf.data.loader). cuDNN's autotuner is on for every variant
(torch.backends.cudnn.benchmark, process-wide, as genperf.train sets it on CUDA).

--batches B1 B2 ... measures every variant at each batch size in turn, in this one process (compiled graphs
have a symbolic batch dimension, so a new size recompiles little); a variant that runs out of device memory
at a size is said to and left out of the larger ones. --profile FOLDER profiles one cycle of each variant at
the first size: genperf.audit's counts (ops, kernel launches, casts, convolutions fed NCHW) and the profiler's
table of the 20 kernels (on a CPU: ops) with the most time.
"""

import argparse
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import time

import torch

from genperf import audit, config, trainer
from genperf.compiled import compile_choice
from genperf.data import Data
from genperf.families import build_objective
from genperf.ops import use_backend
from genperf.perf import append_csv, peak_flops
from genperf.precision import Precision, keep_freed_cpu_memory

# name -> (model, image shape (C, H, W), batch, extra genperf.train options)
CONFIGS = {
    "realnvp-mnist-b16": ("realnvp", (1, 28, 28), 16, []),
    "realnvp-mnist-b64": ("realnvp", (1, 28, 28), 64, []),
    # the model of benchmarks/bench_quality.py's race: whose compile gain and cold seconds genperf.compiled records
    "realnvp-race": ("realnvp", (1, 28, 28), 64, ["--num-scales", "2", "--mid-channels", "32", "--num-blocks", "4"]),
    "realnvp-celeba64-b8": ("realnvp", (3, 64, 64), 8, []),
    "realnvp-celeba64-b64": ("realnvp", (3, 64, 64), 64, []),  # a GPU size (about 0.9 s/image fp32 on a 2-core Xeon)
    "dcgan-28": ("dcgan", (1, 28, 28), 64, []),
    "dcgan-64": ("dcgan", (3, 64, 64), 64, []),
    "wgan-gp-28": ("wgan-gp", (1, 28, 28), 64, []),
    "wgan-gp-64": ("wgan-gp", (3, 64, 64), 64, []),
    "wgan-28": ("wgan", (1, 28, 28), 64, []),
    "vae-mlp-28": ("vae", (1, 28, 28), 128, []),
    "vae-conv-64": ("vae", (3, 64, 64), 64, []),
    # tiny versions, for checking the benchmark paths end to end on a CPU (selftest --quick, gpu_probe --device cpu)
    "realnvp-tiny": ("realnvp", (3, 16, 16), 8, ["--mid-channels", "8", "--num-blocks", "1"]),
    "dcgan-tiny": ("dcgan", (3, 16, 16), 8, ["--latent-dim", "8"]),
    "wgan-gp-tiny": ("wgan-gp", (3, 16, 16), 8, ["--latent-dim", "8", "--critic-iters", "2"]),
}
VARIANTS = {  # name -> genperf.train options
    "baseline": ["--backend", "reference"],
    "fused": [],
    "+amp": ["--amp"],
    "amp, torch ops": ["--amp", "--backend", "reference"],  # what the fused ops give under amp
    "+compile": ["--compile"],
    "+channels_last": ["--channels-last"],
    "amp+channels_last": ["--amp", "--channels-last"],
    "amp+compile": ["--amp", "--compile"],
    "all on": ["--amp", "--compile", "--channels-last"],
    "all on+cudagraphs": ["--amp", "--compile", "--channels-last", "--compile-mode", "reduce-overhead"],
}


def plain_adam(objective):
    """Each Adam of `objective` as a plain script would make it (foreach, not fused), with every parameter group
    (RealNVP's weight-norm scales are a group of their own, with weight decay)."""
    for key, opt in objective.optimizers.items():
        if isinstance(opt, torch.optim.Adam):
            groups = [{k: g[k] for k in ("params", "lr", "betas", "weight_decay")} for g in opt.param_groups]
            objective.optimizers[key] = torch.optim.Adam(groups)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One model configuration trained with one set of options, at one batch size at a time."""

    def __init__(self, name, model, shape, batch, extra, device):
        self.name, self.shape, self.device = name, shape, device
        self.args = config.parse_args([model, "--batch-size", str(batch), *extra, *VARIANTS[name]])
        data = Data("random", None, None, shape)
        torch.manual_seed(0)
        self.precision = Precision(device.type, self.args.amp)
        self.objective = build_objective(self.args, data, self.precision, device)
        if name == "baseline":
            plain_adam(self.objective)
        mode = self.args.compile_mode
        # A variant compiles when it says --compile (not --compile auto, the default: its variants are fixed).
        compiled = compile_choice(self.args) == "on"
        if compiled:  # as genperf.train compiles: the batch dimension symbolic, one graph for every batch
            self.objective.compile(fullgraph=True, mode=None if mode == "default" else mode)
        self.cuda_graphs = compiled and mode == "reduce-overhead" and device.type == "cuda"
        self.cycle = getattr(self.objective, "critic_iters", 1)
        self.step, self.times = 0, {}
        self.use_batch(batch)

    def use_batch(self, batch):
        """Random 8-bit images, a generator cycle's worth, of `batch` each (the same for every variant)."""
        g = torch.Generator().manual_seed(1)
        self.batch, self.batches = batch, None  # the old batches go before the new ones are made
        batches = [(torch.randint(0, 256, (batch, *self.shape), generator=g) / 255) for _ in range(self.cycle)]
        layout = torch.channels_last if self.args.channels_last else torch.contiguous_format
        self.batches = [x.to(self.device).contiguous(memory_format=layout) for x in batches]

    def backend(self):
        return use_backend(self.args.backend) if self.args.backend else contextlib.nullcontext()

    def run_cycle(self):
        """One generator cycle of steps; returns its seconds."""
        sync(self.device)
        t0 = time.perf_counter()
        with self.backend():
            for x in self.batches:
                if self.cuda_graphs:  # as genperf.train: a new step for CUDA graph trees
                    torch.compiler.cudagraph_mark_step_begin()
                self.objective.train_step(x, self.step)
                self.step += 1
        sync(self.device)
        return time.perf_counter() - t0


def out_of_memory(variant, batch, error):
    """Drops `variant`'s batches after it ran out of device memory at `batch`; says so."""
    variant.batches = []
    if variant.device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"  {variant.name:17s} out of memory at batch {batch} ({str(error).splitlines()[0][:80]})", flush=True)


def warm_up(variants, batch, first):
    """Two cycles of each variant at `batch` (the first compiles compiled variants, or recompiles what a new batch
    size needs); returns the variants that fit."""
    fit = []
    for variant in variants:
        t0 = time.perf_counter()
        try:
            if not first:
                variant.use_batch(batch)
            for _ in range(2):
                variant.run_cycle()
        except torch.OutOfMemoryError as e:
            out_of_memory(variant, batch, e)
            continue
        fit.append(variant)
        what = "built and warmed up" if first else f"warmed up at batch {batch}"
        print(f"  {what} {variant.name:17s} in {time.perf_counter() - t0:6.1f} s", file=sys.stderr, flush=True)
    return fit


def profile(variant, folder, name, rows=20):
    """One profiled cycle of `variant`: genperf.audit's counts (printed) and the profiler's table of the `rows`
    kernels (on a CPU: ops) with the most device time, written to FOLDER/profile-NAME-VARIANT.txt."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if variant.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        seconds = variant.run_cycle()
    counts = audit.read_profile(prof.events(), variant.cycle, variant.device.type)
    busy = (
        f", kernels busy {counts['device_ms']:.1f} of {1e3 * seconds / variant.cycle:.1f} ms"
        if counts["device_ms"]
        else ""
    )
    line = (
        f"{counts['ops']:.0f} ops, {counts['kernel_launches']:.0f} kernel launches, {counts['casts']:.0f} casts, "
        f"{counts['convolutions']:.0f} convolutions ({sum(counts['convs_fed_nchw'].values()):.0f} fed NCHW) per step"
        + busy
    )
    path = os.path.join(folder, f"profile-{name}-{variant.name.replace(' ', '-').replace('+', '')}.txt")
    with open(path, "w") as f:
        f.write(f"# {name}, {variant.name}, batch {variant.batch}, a cycle of {seconds * 1e3:.1f} ms; {line}\n")
        f.write(audit.kernel_table(prof, variant.device.type, rows, variant.cycle) + "\n")
    print(f"  {variant.name:17s} profiled: {line}; table in {path}", flush=True)


def bench_config(name, device, rounds, variants, peaks, csv_path=None, batches=None, profile_folder=None):
    """Measures configuration `name` with each of `variants` at each of `batches`; appends each batch's rows to
    `csv_path` as soon as they are measured (a run cut short keeps what it measured). Returns the rows."""
    model, shape, default_batch, extra = CONFIGS[name]
    batches = batches or [default_batch]
    built = []
    for v in variants:
        try:
            built.append(Variant(v, model, shape, batches[0], extra, device))
        except torch.OutOfMemoryError as e:
            print(f"  {v:17s} out of memory building it ({str(e).splitlines()[0][:80]})", flush=True)
    flops = trainer.step_cost(built[0].args, Data("random", None, None, shape), batches[0]).flops_per_image
    measured = []
    for i, batch in enumerate(batches):
        live = warm_up(built, batch, first=i == 0)
        if profile_folder and i == 0:
            os.makedirs(profile_folder, exist_ok=True)
            for variant in live:
                profile(variant, profile_folder, name)
        for variant in live:
            variant.times[batch] = []
        for _ in range(rounds):
            for variant in list(live):
                try:
                    variant.times[batch].append(variant.run_cycle())
                except torch.OutOfMemoryError as e:
                    out_of_memory(variant, batch, e)
                    live.remove(variant)
        rows = report(name, model, shape, batch, rounds, [v for v in live if v.times[batch]], flops, peaks)
        if csv_path and rows:
            append_csv(csv_path, rows)
            print(f"# {len(rows)} rows appended to {csv_path}", flush=True)
        measured += rows
        built = live
    return measured


def report(name, model, shape, batch, rounds, measured, flops, peaks):
    """Prints the table of one configuration at one batch size; returns its rows."""
    rows = []
    first = measured[0] if measured else None
    base = (
        statistics.median(first.times[batch]) / first.cycle if first is not None and first.name == "baseline" else None
    )
    print(
        f"\n{name}: {model} {'x'.join(map(str, shape))}, batch {batch}, {flops / 1e9:.3f} GFLOP per image "
        f"(model FLOPs of a step, forward + backward), {rounds} rounds",
        flush=True,
    )
    print(
        f"  {'variant':17s} {'ms/step':>9s} {'spread':>15s} {'images/s':>9s} {'vs base':>8s} {'GFLOP/s':>8s} "
        f"{'MFU':>6s}"
    )
    for variant in measured:
        per_step = [t / variant.cycle for t in variant.times[batch]]
        p50 = statistics.median(per_step)
        ips = batch / p50
        dtype = variant.precision.dtype or torch.float32
        mfu = ips * flops / peaks[dtype]
        speedup = base / p50 if base else float("nan")
        print(
            f"  {variant.name:17s} {1e3 * p50:9.1f} [{1e3 * min(per_step):6.1f}-{1e3 * max(per_step):6.1f}] "
            f"{ips:9.1f} {speedup:7.2f}x {ips * flops / 1e9:8.1f} {100 * mfu:5.1f}%",
            flush=True,
        )
        rows.append(
            dict(
                config=name,
                model=model,
                shape="x".join(map(str, shape)),
                batch=batch,
                variant=variant.name,
                ms_per_step=1e3 * p50,
                ms_min=1e3 * min(per_step),
                ms_max=1e3 * max(per_step),
                images_per_s=ips,
                speedup=speedup,
                gflop_per_image=flops / 1e9,
                gflops=ips * flops / 1e9,
                mfu=mfu,
                peak_gflops=peaks[dtype] / 1e9,
                dtype=str(dtype).replace("torch.", ""),
                device=device_name(variant.device),
                version=torch.__version__,
                time=datetime.datetime.now().isoformat(timespec="seconds"),
            )
        )
    return rows


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(CONFIGS),
        default=[
            c for c in CONFIGS if not c.endswith("-tiny") and (c != "realnvp-celeba64-b64" or torch.cuda.is_available())
        ],
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="the first is the baseline of the speedups when it is 'baseline'",
    )
    p.add_argument("--rounds", type=int, default=5, help="timed generator cycles per variant (after 2 of warm-up)")
    p.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=None,
        help="batch sizes to measure, each after the last, with the same variants (default: the configuration's)",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="FOLDER",
        help="profile one cycle of each variant at the first batch: counts and the top 20 kernels, into FOLDER",
    )
    p.add_argument(
        "--csv",
        default=os.path.join(os.path.dirname(__file__), "results", "train.csv"),
        help="append one row per measurement here ('' for none)",
    )
    args = p.parse_args(argv)
    if len(args.models) > 1:  # one process per configuration, each appending its own rows
        failed = [
            name
            for name in args.models
            if subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--models",
                    name,
                    "--variants",
                    *args.variants,
                    "--rounds",
                    str(args.rounds),
                    "--csv",
                    args.csv,
                    *(["--batches", *map(str, args.batches)] if args.batches else []),
                    *(["--profile", args.profile] if args.profile else []),
                ]
            ).returncode
        ]
        if failed:
            print(f"# failed: {', '.join(failed)}", flush=True)
        return 1 if failed else 0
    device = torch.device(args.device)
    # Three compiled variants of one model live side by side here, each with its own graphs (dtype,
    # layout, grad mode); one training run needs a handful, within dynamo's default limit of 8.
    config = torch._dynamo.config  # the limit's name before torch 2.7 was cache_size_limit
    setattr(config, "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit", 64)
    kept = device.type == "cpu" and keep_freed_cpu_memory()  # as genperf.train does
    torch.backends.cudnn.benchmark = True  # as genperf.train does on CUDA; for every variant, the baseline too
    peaks = {dtype: peak_flops(device.type, dtype, seconds=1.0) for dtype in (torch.float32, torch.bfloat16)}
    note = Precision(device.type, True).note  # --amp variants run fp32 on a CPU without bf16 kernels
    print(
        f"# {device_name(device)}, torch {torch.__version__}; measured matmul peak: fp32 "
        f"{peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s"
        + ("; freed CPU memory kept for reuse" if kept else "")
        + (f"\n# {note}" if note else ""),
        flush=True,
    )
    bench_config(args.models[0], device, args.rounds, args.variants, peaks, args.csv, args.batches, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
