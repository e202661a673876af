"""Images per second of one process, --ddp and --fsdp, side by side in one run: the whole training step as
`python -m genperf.train` runs it, at the same global batch.

    python benchmarks/bench_parallel.py [--models dcgan-64 realnvp-mnist-b16] [--nproc 2] [--steps 20]
        [--csv benchmarks/results/parallel.csv] [--markdown docs/parallel.md]

Each (model, mode) trains in fresh processes, one after another (never two at once), on synthetic images of the
model's shape (always available; data loading is in memory and not what is compared). One process gets every
core of the machine; --ddp and --fsdp ranks split them (genperf's launcher gives each rank cores / ranks threads),
over gloo on CPU and nccl on GPUs. Reported: the median images/s of the logged steps after the first --warmup,
in all and per rank, and the ratio to one process. On a CPU the ranks share the cores one process would use, so
the ratio shows what the gradient all-reduce (DDP) or the parameter gathers and gradient reduce-scatters (FSDP)
cost; on GPUs, each rank with a device of its own, the total is what scales.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
from bench_quality import commit

from genperf.perf import machine

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# name -> genperf.train options (synthetic images of the preset's shape) and the global batch
MODELS = {
    "dcgan-64": (["dcgan", "--data", "synthetic", "--channels", "3", "--image-size", "64"], 64),
    "realnvp-mnist-b16": (["realnvp", "--data", "synthetic", "--channels", "1", "--image-size", "28"], 16),
}
MODES = {"one process": [], "ddp": ["--ddp"], "fsdp": ["--fsdp"]}


def train_rate(options, batch, mode, nproc, steps, warmup, work):
    """Median images/s (all ranks together) of the logged steps after `warmup`, from the run's metrics.jsonl."""
    out = tempfile.mkdtemp(prefix="run-", dir=work)
    ranks = ["--nproc", str(nproc)] if mode else []
    argv = [*options, *mode, *ranks, "--batch-size", str(batch), "--steps", str(steps), "--log-every", "1"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the launcher splits the cores
    proc = subprocess.run(
        [sys.executable, "-m", "genperf.train", *argv, "--out", out],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"bench_parallel: {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rates = [r["images_per_s"] for r in rows if r["split"] == "train" and r["step"] > warmup]
    return statistics.median(rates)


def markdown(rows, stamp):
    head = (
        f"Training step images/s by parallel mode on {stamp['machine']}, {stamp['date']}, commit "
        f"{stamp['commit']}, torch {stamp['torch']}; {stamp['nproc']} ranks, median of steps "
        f"{stamp['warmup'] + 1}-{stamp['steps']} (`python benchmarks/bench_parallel.py`)."
    )
    lines = [head, "", "| model | mode | ranks | images/s | per rank | vs one process |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['ranks']} | {r['images_per_s']:.1f} | {r['per_rank']:.1f} | "
            f"{r['vs_one_process']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--nproc", type=int, default=2, help="ranks of --ddp and --fsdp (default 2)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the median (default 5)")
    p.add_argument("--csv", default=os.path.join(HERE, "results", "parallel.csv"), help="'' for none")
    p.add_argument("--markdown", help="append the table here too, under a line naming machine, date and commit")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps {args.steps} leaves no step after --warmup {args.warmup}")
    stamp = dict(
        machine=machine(),
        date=datetime.date.today().isoformat(),
        commit=commit(),
        torch=torch.__version__,
        nproc=args.nproc,
        steps=args.steps,
        warmup=args.warmup,
    )
    print(f"# {stamp['machine']}; torch {stamp['torch']}; commit {stamp['commit']}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genperf-parallel-") as work:
        for model in args.models:
            options, batch = MODELS[model]
            single = None
            for mode, flags in MODES.items():
                rate = train_rate(options, batch, flags, args.nproc, args.steps, args.warmup, work)
                single = single or rate
                ranks = args.nproc if flags else 1
                row = dict(model=model, mode=mode, ranks=ranks, batch=batch, images_per_s=rate)
                row.update(per_rank=rate / ranks, vs_one_process=rate / single, **stamp)
                rows.append(row)
                print(f"{model:18s} {mode:12s} {ranks} ranks {rate:8.1f} img/s ({rate / single:.2f}x)", flush=True)
    table = markdown(rows, stamp)
    print("\n" + table)
    if args.csv:
        from genperf.perf import append_csv

        append_csv(args.csv, rows)
    if args.markdown:
        with open(args.markdown, "a") as f:  # one section per run of this script
            f.write(table + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
