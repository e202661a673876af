"""CelebA loading: DALI vs the torchvision DataLoader, same work, same parallelism, in one run.

    python benchmarks/bench_data.py [--images 3000] [--workers 2] [--batch-size 64] [--root DIR]

Both loaders are genperf's own (genperf.data.make_batches): decode a CelebA-size JPEG (178x218),
center crop 148, resize to 64, random flip, scale to [0, 1], batch; DALI with --workers threads,
torchvision with --workers processes. Generated CelebA-shaped JPEGs stand in for CelebA (written to
--root, or a temporary folder). Reports images/s over one epoch after a warm-up, then the fraction
of a DCGAN training step spent waiting for data with each loader.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

from genperf.data import celeba, load_dataset, make_batches
from genperf.precision import keep_freed_cpu_memory


def throughput(data, loader, args, device):
    batches = make_batches(data.train, args.batch_size, seed=0, device=device, loader=loader, workers=args.workers)
    it = batches.epoch(0)
    for _ in range(args.warmup):  # pipeline start, worker start-up, first page faults
        next(it)
    n, t0 = 0, time.perf_counter()
    for x in it:
        n += len(x)
    return n / (time.perf_counter() - t0), n


def wait_fraction(data, loader, args, device):
    """Trains DCGAN (64x64) for --steps steps; returns (fraction of wall time in next(batch), s/step)."""
    from genperf import models
    from genperf.families.gan import GANObjective
    from genperf.precision import Precision

    torch.manual_seed(0)
    precision = Precision(device.type, enabled=True)
    G = models.DCGANGenerator(100, 3, 64).to(device)
    D = models.DCGANDiscriminator(3, 64).to(device)
    objective = GANObjective("dcgan", G, D, precision, 2e-4, device.type, False, 1, 10.0, 0.01, True)
    it = make_batches(data.train, args.batch_size, seed=0, device=device, loader=loader, workers=args.workers).epoch(0)
    for step in range(2):  # warm-up
        objective.train_step(next(it), step)
    waited, t0 = 0.0, time.perf_counter()
    for step in range(args.steps):
        t = time.perf_counter()
        x = next(it)
        waited += time.perf_counter() - t
        objective.train_step(x, step)
    total = time.perf_counter() - t0
    return waited / total, total / args.steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader processes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3, help="batches before the clock starts")
    p.add_argument("--steps", type=int, default=15, help="DCGAN steps timed per loader")
    p.add_argument("--root", help="folder for the generated images (kept; default: a temporary folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    loaders = ["torch"] + (["dali"] if celeba.dali_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        if not os.path.exists(os.path.join(root, "celeba", "list_eval_partition.txt")):
            t = time.perf_counter()
            celeba.write_fake_celeba(root, args.images, partition=(0.98, 0.01))
            print(f"# wrote {args.images} CelebA-shaped JPEGs to {root} in {time.perf_counter() - t:.0f} s")
        data = load_dataset("celeba", root, 64)
        print(
            f"# {len(data.train)} training images, batch {args.batch_size}, {args.workers} workers/threads, "
            f"{device} ({os.cpu_count()} CPUs), torch {torch.__version__}"
            + ("" if "dali" in loaders else "; DALI not installed"),
            flush=True,
        )
        rates = {}
        for loader in loaders:
            rates[loader], n = throughput(data, loader, args, device)
            print(
                f"load   {loader:5s} {rates[loader]:8.0f} images/s  ({n} images after {args.warmup} warm-up batches)",
                flush=True,
            )
        if "dali" in rates:
            print(f"load   dali / torch: x{rates['dali'] / rates['torch']:.2f}", flush=True)
        for loader in loaders:
            frac, step = wait_fraction(data, loader, args, device)
            print(
                f"train  {loader:5s} DCGAN 64x64 step {step * 1e3:7.1f} ms, {100 * frac:5.1f}% of it waiting for data",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
