"""RealNVP's learning per step: genperf's default recipe against the plain one, same architecture, same data.

    python benchmarks/bench_recipe.py [--steps 350] [--seeds 0 1 2] [--eval-every 50] [--markdown docs/quality.md]
        [--plot docs/quality-recipe.png]

Both recipes train README's first model (2 scales, 32 features, 2 residual blocks, batch 32, --amp) on the MNIST
images kept in tests/data/mnist (the first 9,000 train, the last 1,000 are held out), one process, eager, with
`python -m genperf.train`, and measure the held-out bits/dim every --eval-every steps:
  plain    the published recipe: Adam at 1e-3, constant, no warm-up (--lr 1e-3 --warmup 0 --lr-schedule constant)
  genperf  genperf's defaults for realnvp (see `python -m genperf.train realnvp --help`)
Counts steps, not seconds, so the two share nothing but the machine; each run is a fresh process, one at a time.
Prints the held-out curves (mean and spread over seeds), the steps each recipe needs to reach the plain recipe's
final mean, and with --markdown rewrites that file's section between its bench_recipe markers (machine, date,
commit).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench_quality import PLAIN_RECIPE, commit, write_section

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODEL = [
    "realnvp", "--amp", "--nproc", "1", "--compile", "off", "--data", "mnist", "--data-root",
    os.path.join(REPO, "tests", "data", "mnist"), "--mid-channels", "32", "--num-blocks", "2", "--batch-size", "32",
]  # fmt: skip
RECIPES = {"plain": PLAIN_RECIPE["realnvp"], "genperf": []}
BEGIN, END = "<!-- bench_recipe -->", "<!-- /bench_recipe -->"


def heldout_curve(recipe, seed, steps, eval_every, work):
    """{step: held-out bits/dim} of one run."""
    out = os.path.join(work, f"{recipe}-{seed}")
    cmd = [sys.executable, "-m", "genperf.train", *MODEL, *RECIPES[recipe], "--seed", str(seed)]
    cmd += ["--steps", str(steps), "--eval-every", str(eval_every), "--out", out]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["bits_per_dim"] for r in rows if r.get("split") == "heldout"}


def spread(values):
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def steps_to(curve, target):
    return next((s for s in sorted(curve) if curve[s] <= target), None)


def report(curves, seeds, steps):
    """The markdown section: held-out bits/dim at every evaluation, and steps to the plain recipe's final mean."""
    from genperf.perf import machine

    points = sorted(set.intersection(*(set(c) for cs in curves.values() for c in cs)))
    target = statistics.mean(c[steps] for c in curves["plain"])
    lines = [
        f"RealNVP's learning per step, {machine()}, {datetime.date.today()}, commit {commit()} "
        f"(`python benchmarks/bench_recipe.py`): README's first model, one process, seeds {seeds}; held-out "
        f"bits/dim, mean ± standard deviation over seeds. genperf's recipe: {defaults()}.",
        "",
        "| recipe | " + " | ".join(f"step {s}" for s in points) + f" | steps to {target:.3f} |",
        "| --- | " + " | ".join("---" for _ in points) + " | --- |",
    ]
    for recipe, cs in curves.items():
        reached = [steps_to(c, target) for c in cs]
        when = f"{statistics.mean(reached):.0f}" if all(reached) else f"{sum(map(bool, reached))}/{len(cs)} reach it"
        lines.append(f"| {recipe} | " + " | ".join(spread([c[s] for c in cs]) for s in points) + f" | {when} |")
    return "\n".join(lines)


def defaults():
    from genperf import config

    c = config.parse_args(MODEL[:1])
    return f"Adam at {c.lr:g}, {c.warmup} warm-up steps, {c.lr_schedule} schedule"


def plot(path, curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for (recipe, cs), color in zip(curves.items(), ("tab:gray", "tab:blue")):
        for i, c in enumerate(cs):
            ax.plot(sorted(c), [c[s] for s in sorted(c)], color=color, alpha=0.8, label=recipe if i == 0 else None)
    ax.set(xlabel="steps (batch 32)", ylabel="held-out bits/dim", title="RealNVP on MNIST")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/bench_recipe.py", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=350)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--markdown", help="rewrite this file's bench_recipe section with the table")
    p.add_argument("--plot", help="a PNG of every curve")
    args = p.parse_args(argv)
    curves = {recipe: [] for recipe in RECIPES}
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for recipe in RECIPES if seed % 2 == 0 else reversed(RECIPES):  # alternate which runs first
                curves[recipe].append(heldout_curve(recipe, seed, args.steps, args.eval_every, work))
                print(f"{recipe} seed {seed}: {curves[recipe][-1]}", file=sys.stderr, flush=True)
    text = report(curves, args.seeds, args.steps)
    print(text)
    if args.plot:
        plot(args.plot, curves)
        text += f"\n\n![held-out bits/dim against steps, both recipes, every seed]({os.path.basename(args.plot)})"
    if args.markdown:
        write_section(args.markdown, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
