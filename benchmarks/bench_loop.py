"""What genperf.train's loop costs over the bare training step, side by side in one run.

    python benchmarks/bench_loop.py [--model wgan-gp] [--data ring8] [--steps 3000] [--rounds 2] [-- TRAIN OPTIONS]

Each round times, in this process, (1) `python -m genperf.train` itself: the wall time of its
summary.json (the loop with batches, per-step checks, logging, the progress bar, per-epoch sample plots and
checkpoints, and the final ones; start-up and FLOP counting excluded), and (2) a bare loop of the same
objective's train_step over the same batches. Default: the study's toy protocol (2-d noise, batch 256),
whose steps of a few milliseconds show the loop's cost most. Prints per-step times and the loop's share.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from genperf import config, train
from genperf.data import load_dataset, make_batches
from genperf.families import build_objective
from genperf.precision import Precision

TOY = ["--latent-dim", "2", "--batch-size", "256", "--gp-weight", "0.1", "--log-every", "100"]


def genperf_train(argv, steps):
    """Seconds per step of python -m genperf.train (its own summary.json)."""
    with tempfile.TemporaryDirectory() as out:
        if train.main([*argv, "--steps", str(steps), "--out", out]) != 0:
            raise SystemExit("genperf.train failed")
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["wall_time_s"] / steps


def bare_loop(argv, steps):
    """Seconds per step of train_step alone, on the batches genperf.train would draw."""
    args = config.parse_args([*argv, "--out", "unused"])
    device = torch.device(args.device)
    data = load_dataset(args.data, args.data_root, args.image_size, args.channels, False, args.seed)
    torch.manual_seed(args.seed)
    objective = build_objective(args, data, Precision(device.type, args.amp), device)
    batches = make_batches(data.train, args.batch_size, args.seed, device=device)
    step, t0 = 0, time.perf_counter()
    while step < steps:
        for x in batches.epoch(step // len(batches)):
            objective.train_step(x, step)
            step += 1
            if step == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wgan-gp")
    p.add_argument("--data", default="ring8")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(ours)
    run_argv = [args.model, "--data", args.data, *(TOY if extra is None else extra)]
    loop, bare = [], []
    for r in range(args.rounds):  # alternated, so that machine noise falls on both
        loop.append(genperf_train(run_argv, args.steps))
        bare.append(bare_loop(run_argv, args.steps))
        print(
            f"# round {r + 1}: genperf.train {1e3 * loop[-1]:.2f} ms/step, "
            f"bare train_step {1e3 * bare[-1]:.2f} ms/step",
            flush=True,
        )
    t_loop, t_bare = statistics.median(loop), statistics.median(bare)
    print(
        f"{' '.join(run_argv)}, {args.steps} steps, {torch.get_num_threads()} threads: genperf.train "
        f"{1e3 * t_loop:.2f} ms/step, bare step {1e3 * t_bare:.2f} ms/step; the loop adds "
        f"{1e3 * (t_loop - t_bare):.2f} ms/step ({100 * (t_loop / t_bare - 1):.1f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
