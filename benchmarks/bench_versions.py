"""This checkout against another one (e.g. an earlier commit in a git worktree), side by side in one run: each
round runs bench_train.py (whole steps of the configurations and variants asked) and bench_loop.py (the loop's
cost over the bare step) of both checkouts, each with its own code and scripts, in alternating order (the other
first in odd rounds, this one first in even rounds) so that machine drift falls on both.

    git worktree add /tmp/old COMMIT && cp genperf/_C*.so /tmp/old/genperf/  # the same csrc: reuse the build
    python benchmarks/bench_versions.py --other /tmp/old [--models realnvp-mnist-b16 dcgan-28] [--rounds 2]

Prints each measurement and the ratio this/other (below 1: this checkout is faster). The other checkout runs
from its source folder (PYTHONPATH), with kernels/ reachable as genperf.kernels through a link there."""

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tree):
    return dict(os.environ, PYTHONPATH=tree)


def _prepare(tree):
    """Makes `tree` importable from source: genperf.kernels is kernels/ (installs map it there)."""
    link = os.path.join(tree, "genperf", "kernels")
    if tree != HERE and not os.path.exists(link):
        os.symlink(os.path.join(tree, "kernels"), link)


def step_times(tree, models, variants, rounds):
    """{(config, variant): ms per step} of bench_train.py in `tree`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "train.csv")
        cmd = [sys.executable, "benchmarks/bench_train.py", "--models", *models, "--variants", *variants]
        subprocess.run(
            [*cmd, "--rounds", str(rounds), "--csv", out],
            cwd=tree,
            env=_env(tree),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(out) as f:
            return {(r["config"], r["variant"]): float(r["ms_per_step"]) for r in csv.DictReader(f)}


def loop_cost(tree, steps):
    """(genperf.train's ms per step, the bare step's) of bench_loop.py in `tree`."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_loop.py", "--steps", str(steps), "--rounds", "1"],
        cwd=tree,
        env=_env(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"genperf\.train ([\d.]+) ms/step, bare step ([\d.]+) ms/step", proc.stdout)
    return float(found.group(1)), float(found.group(2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--other", required=True, help="the other checkout's folder")
    p.add_argument("--models", nargs="+", default=["realnvp-mnist-b16", "dcgan-28"])
    p.add_argument("--variants", nargs="+", default=["baseline", "fused", "+amp"])
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two checkouts")
    p.add_argument("--loop-steps", type=int, default=2000)
    args = p.parse_args(argv)
    trees = {"other": os.path.abspath(args.other), "this": HERE}
    for tree in trees.values():
        _prepare(tree)
    steps, loops = {name: [] for name in trees}, {name: [] for name in trees}
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]  # ABBA: drift falls on both
        for name, tree in order:
            steps[name].append(step_times(tree, args.models, args.variants, 5))
            loops[name].append(loop_cost(tree, args.loop_steps))
            print(f"# round {r + 1}, {name}: done", flush=True)
    print(f"{'configuration':22s} {'variant':10s} {'other ms':>9s} {'this ms':>9s} {'this/other':>10s}")
    for key in steps["this"][0]:
        other, this = (statistics.median(run[key] for run in steps[n]) for n in ("other", "this"))
        print(f"{key[0]:22s} {key[1]:10s} {other:9.2f} {this:9.2f} {this / other:10.3f}")
    for i, what in enumerate(("genperf.train loop", "bare step")):
        other, this = (statistics.median(v[i] for v in loops[n]) for n in ("other", "this"))
        print(f"{'bench_loop (toy)':22s} {what:10s} {other:9.2f} {this:9.2f} {this / other:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
