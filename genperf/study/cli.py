"""python -m genperf.study EXPERIMENT|all --out DIR [--seeds N] [--quick]: the study's experiments, reproduced.

Each experiment trains what it needs with genperf.fit, once per seed (or reuses the run directories under
--runs, default DIR/runs, so experiments that share models train them once), then writes DIR/report.md, its
figures (PNG) and DIR/results.json: every number as the mean and standard deviation over the seeds with each
seed's value, and a verdict on each claim of the source study it tests. `all` runs every experiment into
DIR/NAME and writes a summary DIR/report.md. --quick is a smoke test on the bundled `digits` data for tests and
CI; the full versions train on MNIST (--data-root).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from genperf.errors import GenperfError
from genperf.study.experiments import RUNNERS
from genperf.study.report import write_summary
from genperf.study.runner import Study


def parse_seeds(text):
    """--seeds: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of seeds, got {text!r}") from None
    if len(seeds) == 1:
        if seeds[0] < 1:
            raise argparse.ArgumentTypeError(f"the number of seeds must be >= 1, got {seeds[0]}")
        return list(range(seeds[0]))
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0, got {text}")
    return seeds


# Seeds per experiment when --seeds is not given: five for the toys (cheap, and the noisiest metric), three
# for the image experiments; two for the --quick smoke tests.
DEFAULT_SEEDS = {"mode-collapse": 5}
FULL_SEEDS, QUICK_SEEDS = 3, 2


def default_seeds(name, quick):
    return list(range(QUICK_SEEDS if quick else DEFAULT_SEEDS.get(name, FULL_SEEDS)))


def run_experiment(args, name, out):
    study = Study(args, name, out, args.seeds or default_seeds(name, args.quick))
    t0 = time.perf_counter()
    RUNNERS[name](study)
    study.write(time.perf_counter() - t0)
    print(f"genperf.study: {name} done in {time.perf_counter() - t0:.0f} s; report {out}/report.md", flush=True)
    return study


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m genperf.study", description=__doc__.split("\n")[0])
    p.add_argument("experiment", choices=["all", *RUNNERS], help="one experiment, or all of them (each into OUT/NAME)")
    p.add_argument("--out", required=True, help="report folder: report.md, figures, results.json")
    p.add_argument(
        "--seeds",
        type=parse_seeds,
        metavar="N|S1,S2,...",
        help="train every configuration with seeds 0..N-1 (or the seeds listed) and report mean +- std "
        f"(default: {DEFAULT_SEEDS['mode-collapse']} for mode-collapse, {FULL_SEEDS} for the others, "
        f"{QUICK_SEEDS} with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test budgets on the bundled digits data (minutes)")
    p.add_argument("--runs", help="folder of the training runs, shared between experiments (default OUT/runs)")
    p.add_argument("--data", default="mnist", help="image data of the full versions (default mnist)")
    p.add_argument("--data-root", default="data", help="where --data lives (default ./data, where MNIST is downloaded)")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train and evaluate (default: cuda when available)",
    )
    p.add_argument(
        "--inception-weights",
        help="local FID Inception weights file; adds the standard FID (needs torchmetrics[image]) to label-smoothing",
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.experiment != "all":
            run_experiment(args, args.experiment, args.out)
            return 0
        args.runs = args.runs or os.path.join(args.out, "runs")
        studies = [run_experiment(args, name, os.path.join(args.out, name)) for name in RUNNERS]
    except GenperfError as e:
        print(f"genperf.study: error: {e}", file=sys.stderr, flush=True)
        return 2
    write_summary(args, studies, time.perf_counter() - t0)
    print(f"genperf.study: all done in {time.perf_counter() - t0:.0f} s; summary {args.out}/report.md", flush=True)
    return 0
