"""torchrun --nproc-per-node 2 benchmarks/bench_sharded.py [--steps N] [training options]

The whole FSDP2 training step with torch's Adam and gradient clipping over the DTensors against genperf.sharded's
(the same arithmetic on each rank's local shards), side by side: two trainers of the same run in one job, their
steps alternating, each timed between barriers. Prints the median step of each and the ratio. The default run is
README's first command (RealNVP at 14x14 on the shipped MNIST, --amp --fsdp).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist

import genperf.precision as precision
from genperf.config import parse_args
from genperf.distributed import init_distributed, under_torchrun
from genperf.perf import machine
from genperf.trainer import Trainer

README_RUN = (
    "realnvp --amp --fsdp --data mnist --data-root tests/data/mnist --image-size 14 --mid-channels 32 "
    "--num-blocks 2 --batch-size 32"
).split()
# What genperf.precision builds Adam and clips with, each way
WAYS = {
    "torch over DTensors": ((lambda params: False), torch.nn.utils.clip_grad_norm_),
    "genperf.sharded": (precision.on_shards, precision.clip_grad_norm_),
}


def use(way):
    """Makes genperf.precision build and clip the torch way or genperf.sharded's."""
    precision.on_shards, precision.clip_grad_norm_ = way


def trainer(argv, dist_, way):
    """A Trainer of the run `argv` whose optimizer is built `way`, in a temporary folder rank 0 makes."""
    use(way)
    out = [tempfile.mkdtemp(prefix="bench_sharded_") if dist_.rank == 0 else None]
    dist.broadcast_object_list(out)
    return Trainer(parse_args([*argv, "--out", out[0], "--steps", "1000000"]), dist_)


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/bench_sharded.py", description=__doc__.split("\n")[2])
    p.add_argument("--steps", type=int, default=80, help="steps of each, alternating (default 80; 5 warm up)")
    args, train_argv = p.parse_known_args(argv)
    if not under_torchrun():
        p.error("run it under torchrun: torchrun --nproc-per-node 2 benchmarks/bench_sharded.py")
    dist_ = init_distributed("cuda" if torch.cuda.is_available() else "cpu")
    runs = {name: trainer(train_argv or README_RUN, dist_, way) for name, way in WAYS.items()}
    batches = [x for _, x in zip(range(4), runs["genperf.sharded"].train.epoch(0))]
    seconds = {name: [] for name in runs}
    for i in range(args.steps):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            use(WAYS[name])
            dist.barrier()
            start = time.perf_counter()
            runs[name].train_step(batches[i % len(batches)])
            dist.barrier()
            seconds[name].append(time.perf_counter() - start)
    if dist_.rank == 0:
        batch = runs["genperf.sharded"].config.batch_size
        median = {name: statistics.median(s[5:]) for name, s in seconds.items()}
        print(f"{machine(dist_.device)}, {dist_.world_size} ranks, {args.steps} alternating steps of each, medians:")
        for name, s in median.items():
            print(f"  {name:20s} {s * 1e3:7.1f} ms a step, {batch / s:6.0f} images/s")
        a, b = median.values()
        print(f"  genperf.sharded's step is {a / b:.3f}x as fast")
        for run in runs.values():
            shutil.rmtree(run.config.out, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
