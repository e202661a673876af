"""Time to quality: held-out quality against wall-clock, genperf's defaults with --amp beside the plain
baseline of the same model, trained back to back on the same data from the same seed.

    python benchmarks/bench_quality.py [--models realnvp vae dcgan] [--budget-s 1200] [--seeds 0 1 2]
        [--compile-cache cold|warm] [--genperf-options "--lr 2.5e-3"] [--csv benchmarks/results/quality.csv]
        [--plot FILE.png] [--markdown FILE.md]

Data: MNIST's test split kept in tests/data/mnist (genperf trains on its first 9,000 images and holds out the
last 1,000, as `genperf.train --data mnist` does without the training split). Models (genperf.train's own, built
by its build_objective):
  realnvp  the study's RealNVP at 2 scales, 32 features, 4 blocks: held-out bits/dim (lower is better); the
           baseline at the study's batch 64, genperf at its default batch (16 on a CPU)
  vae      the MNIST VAE (MLP), batch 128: held-out negative ELBO in nats (lower is better)
  dcgan    DCGAN 28x28, batch 64: classifier FID of 1,000 samples against the 1,000 held-out images (lower is
           better; a small CNN trained once on the training images, see genperf.metrics)
Variants:
  baseline  plain PyTorch: the reference ops (--backend reference), fp32, eager, foreach Adam (as bench_train)
  genperf   genperf.train's defaults with --amp (bf16 where the CPU has fast bf16 kernels, else fp32), so
            --compile auto: it times two eager steps and compiles, here or in a child process beside the eager
            steps, only where the time left to the budget pays for it (genperf.autocompile); with
            --genperf-options, those options added (named in the tables), to race another recipe
Each (model, seed, variant) trains in a fresh process for --budget-s seconds of training: the clock counts the
steps, compiling included, and stops while the held-out metric is measured (at evenly spaced points, the same
for both variants; a child process compiling for --compile auto is stopped meanwhile). The order of the variants
alternates from seed to seed. With --compile-cache cold (the default) torch.compile starts from an empty on-disk
cache, as a user's first run does; warm reuses one filled by a short compiled run before.

Reported per model: the metric of each variant at fixed budgets (--table-s), the median over seeds with the
range, and the time each variant takes to reach the target: the baseline's median metric at the full budget.
"""

import argparse
import contextlib
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from genperf import autocompile
from genperf.compiled import compile_choice, compile_options, graph_key, precision_name, record_seconds
from genperf.config import OPTION
from genperf.families.flow import PUBLISHED_RECIPE, STUDY_BATCH_SIZE
from genperf.perf import machine

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MNIST = os.path.join(REPO, "tests", "data", "mnist")
# name -> (genperf.train options, the metric, its label, the number of points at which it is measured)
MODELS = {
    "realnvp": (
        ["realnvp", "--num-scales", "2", "--mid-channels", "32", "--num-blocks", "4"],
        "bits_per_dim",
        "held-out bits/dim",
    ),
    "vae": (["vae", "--batch-size", "128"], "nelbo", "held-out -ELBO (nats)"),
    "dcgan": (["dcgan", "--batch-size", "64"], "classifier_fid", "classifier FID"),
}
VARIANTS = {"baseline": ["--backend", "reference", "--no-compile"], "genperf": ["--amp"]}
FILL = ["--amp", "--compile"]  # what fills the cache of --compile-cache warm
# The baseline's training recipe where genperf's default differs: RealNVP's published one (Adam at 1e-3, constant),
# and the study's batch where genperf's default batch differs.
PLAIN_RECIPE = {"realnvp": [arg for k, v in PUBLISHED_RECIPE.items() for arg in (OPTION[k].cli, str(v))]}
STUDY_BATCH = {"realnvp": ["--batch-size", str(STUDY_BATCH_SIZE)]}
FID_SAMPLES = 1000


# ---- one training run, in a process of its own ----


class Scorer:
    """The held-out metric of a model, measured off the clock."""

    def __init__(self, model, objective, data, device, seed, work):
        from genperf.data import make_batches

        self.model, self.objective, self.seed, self.device = model, objective, seed, device
        self.heldout = make_batches(data.heldout, 256, 0, device=device, shuffle=False, drop_last=False)
        if model == "dcgan":
            from genperf import metrics

            self.classifier, _ = metrics.cached_classifier(os.path.join(work, "classifier-mnist.pt"), data)
            self.real = data.heldout[:FID_SAMPLES].float() / 255

    def __call__(self):
        from genperf.streams import seeded

        with seeded(self.seed, self.device):
            if self.model == "dcgan":
                from genperf import metrics

                z = self.objective.noise(FID_SAMPLES, torch.Generator().manual_seed(self.seed)).to(self.device)
                return metrics.classifier_fid(self.classifier, self.real, self.objective.sample(z).float().cpu())
            held = self.objective.evaluate(self.heldout)
        return held["bits_per_dim"] if self.model == "realnvp" else -held["elbo"]


def variant_flags(variant):
    """genperf.train options of a variant; "genperf OPTIONS" is genperf's with OPTIONS added (--genperf-options)."""
    if variant == "fill":
        return FILL
    name, _, added = variant.partition(" ")
    return VARIANTS[name] + shlex.split(added)


def variant_argv(model, variant, seed=0):
    """genperf.train's command line of one variant of `model`."""
    options, _, _ = MODELS[model]
    plain = PLAIN_RECIPE.get(model, []) + STUDY_BATCH.get(model, []) if variant == "baseline" else []
    device = ["--device", "cpu"]  # train_for trains on the CPU: its defaults are the CPU's
    return [*options, *device, "--seed", str(seed), *variant_flags(variant), *plain]


def batch_size(model, variant):
    from genperf import config

    return config.parse_args(variant_argv(model, variant)).batch_size


def train_for(model, variant, seed, budget_s, points, work):
    """Trains one model for budget_s seconds of steps; returns its curve: (seconds, step, metric) at 0 and at
    `points` evenly spaced times."""
    from bench_train import plain_adam

    from genperf import config
    from genperf.data import load_dataset, make_batches
    from genperf.families import build_objective
    from genperf.ops import use_backend
    from genperf.precision import Precision, keep_freed_cpu_memory
    from genperf.schedule import lr_factor, scheduled, set_lr

    keep_freed_cpu_memory()  # as genperf.train does
    args = config.parse_args(variant_argv(model, variant, seed))
    device = torch.device("cpu")
    data = load_dataset("mnist", MNIST, download=False, seed=seed)
    torch.manual_seed(seed)
    precision = Precision(device.type, args.amp)
    objective = build_objective(args, data, precision, device)
    if variant == "baseline":
        plain_adam(objective)
    key = graph_key(args, device.type, precision_name(precision.dtype))
    auto = None
    if compile_choice(args) == "auto":  # as genperf.train, its time left being the budget's
        say = lambda line: print("  " + line, file=sys.stderr, flush=True)  # noqa: E731
        auto = autocompile.plan(args, device.type, precision_name(precision.dtype), lambda _: budget_s - clock, say)
    if compile_choice(args) == "on":
        objective.compile(**compile_options(args))
    score = Scorer(model, objective, data, device, seed, work)
    batches = make_batches(data.train, args.batch_size, seed, device=device)
    marks = [budget_s * (i + 1) / points for i in range(points)]
    curve, clock, step, epoch = [(0.0, 0, score())], 0.0, 0, 0
    with use_backend(args.backend) if args.backend else contextlib.nullcontext():
        while marks:
            for x in batches.epoch(epoch):
                t0 = time.perf_counter()
                if scheduled(args.warmup, args.lr_schedule):  # the schedule spans the time budget
                    set_lr(
                        objective.optimizers.values(), lr_factor(step, clock / budget_s, args.warmup, args.lr_schedule)
                    )
                objective.train_step(x, step)
                step_s = time.perf_counter() - t0
                clock += step_s
                if step == 0 and compile_choice(args) == "on":  # as genperf.train keeps it, for --compile auto
                    record_seconds(key, step_s)
                if auto and step > 0 and auto.after_step(step_s, x):  # the first step warms up, as in genperf.train
                    auto = None
                    objective.compile(**compile_options(args))
                step += 1
                if clock >= marks[0]:  # a step that compiled may pass several marks: one measurement
                    while marks and clock >= marks[0]:
                        marks.pop(0)
                    with auto.paused() if auto else contextlib.nullcontext():
                        curve.append((clock, step, score()))
                    print(
                        f"  {model} {variant} seed {seed}: {clock:7.1f} s, step {step:6d}, {curve[-1][2]:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if not marks:
                        break
            epoch += 1
    if auto:
        auto.close()
    return curve


# ---- the whole benchmark ----


def run_variant(model, variant, seed, budget_s, points, work, cache):
    """One training run in a fresh interpreter (its own allocator, and the compile cache `cache`)."""
    out = os.path.join(work, f"{model}-{variant}-{seed}.json")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    cmd = [sys.executable, __file__, "--worker", model, variant, str(seed), str(budget_s), str(points), work, out]
    subprocess.run(cmd, check=True, env=env)
    with open(out) as f:
        return json.load(f)


def value_at(curve, seconds):
    """(steps, metric) after `seconds` of training: at the first measurement at or past it (a measurement follows
    the step that crossed its mark, so it overshoots by at most one step)."""
    return next(((s, m) for t, s, m in curve if t >= seconds), curve[-1][1:])


def time_to(curve, target):
    """Seconds of training until the metric first reached `target` (None: never within the budget)."""
    return next((t for t, _, m in curve if m <= target), None)


def summarize(model, curves, table_s):
    """Rows of the table: per budget, per variant the median metric over seeds with its range; then the time
    to the target (the baseline's median metric at the full budget)."""
    _, _, label = MODELS[model]
    budget = max(table_s)
    target = statistics.median(value_at(c, budget)[1] for c in curves["baseline"])
    rows = []
    for seconds in table_s:
        for variant, cs in curves.items():
            steps, values = zip(*(value_at(c, seconds) for c in cs))
            rows.append(
                dict(
                    model=model,
                    metric=label,
                    variant=variant,
                    budget_s=seconds,
                    steps=statistics.median(steps),
                    value=statistics.median(values),
                    low=min(values),
                    high=max(values),
                    seeds=len(cs),
                )
            )
    reached = {v: [time_to(c, target) for c in cs] for v, cs in curves.items()}
    return rows, target, reached


def markdown(model, rows, target, reached, table_s):
    _, _, label = MODELS[model]
    variants = list(reached)
    lines = [
        f"| {model}: {label} after | " + " | ".join(f"{v} (batch {batch_size(model, v)})" for v in variants) + " |",
        "| --- | " + " | ".join("---" for _ in variants) + " |",
    ]
    for seconds in table_s:
        cells = []
        for v in variants:
            r = next(r for r in rows if r["variant"] == v and r["budget_s"] == seconds)
            spread = f" [{r['low']:.3f}-{r['high']:.3f}]" if r["seeds"] > 1 else ""
            cells.append(f"{r['value']:.3f}{spread} ({r['steps']:.0f} steps)")
        after = f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds:g} s"
        lines.append(f"| {after} | " + " | ".join(cells) + " |")

    def when(ts):
        done = [t for t in ts if t is not None]
        return f"{statistics.median(done) / 60:.1f} min ({len(done)}/{len(ts)} seeds)" if done else "not reached"

    lines.append(f"| time to {target:.3f} | " + " | ".join(when(reached[v]) for v in variants) + " |")
    return "\n".join(lines)


def plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.4), squeeze=False)
    for ax, (model, curves) in zip(axes[0], results.items()):
        for (variant, cs), color in zip(curves.items(), ("tab:gray", "tab:blue")):
            for i, c in enumerate(cs):
                ax.plot(
                    [t / 60 for t, _, _ in c[1:]],
                    [m for _, _, m in c[1:]],
                    color=color,
                    alpha=0.8,
                    label=variant if i == 0 else None,
                )
        # A run's first measurement after a cold compile can be thousands of bits/dim: the axis stops above most
        # values so that the race itself stays readable
        values = sorted(m for cs in curves.values() for c in cs for _, _, m in c[1:])
        if values:
            ax.set_ylim(0.9 * values[0], 1.2 * values[int(0.9 * (len(values) - 1))])
        ax.set(title=model, xlabel="minutes of training", ylabel=MODELS[model][2])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def commit():
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def write_section(path, text, begin, end):
    """Replaces the section of `path` between the markers `begin` and `end` with `text` (appends one if there is
    none), writing the file whole or not at all."""
    from genperf.runlog import atomic_write_text

    old = open(path).read() if os.path.exists(path) else ""
    section = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + section + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(new, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--budget-s", type=float, default=1200, help="seconds of training per run (default 1200)")
    p.add_argument("--table-s", type=float, nargs="+", help="budgets of the table (default 2 and 5 min and the whole)")
    p.add_argument("--points", type=int, default=20, help="held-out measurements per run (default 20)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--compile-cache", choices=["cold", "warm"], default="cold")
    p.add_argument("--genperf-options", default="", help="genperf.train options added to genperf's side")
    p.add_argument("--csv", default=os.path.join(HERE, "results", "quality.csv"), help="'' for none")
    p.add_argument("--plot", help="a PNG of every curve")
    p.add_argument("--markdown", help="append the tables here too, under a line naming machine, date and commit")
    p.add_argument("--work", help="folder for the runs' curves and the FID classifier (default: a new temp folder)")
    p.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        model, variant, seed, budget, points, work, out = args.worker
        curve = train_for(model, variant, int(seed), float(budget), int(points), work)
        with open(out, "w") as f:
            json.dump(curve, f)
        return 0
    table_s = args.table_s or sorted({s for s in (120, 300, args.budget_s) if s <= args.budget_s})
    work = args.work or tempfile.mkdtemp(prefix="genperf-quality-")
    os.makedirs(work, exist_ok=True)
    stamp = dict(
        machine=machine(),
        date=datetime.date.today().isoformat(),
        commit=commit(),
        torch=torch.__version__,
        compile_cache=args.compile_cache,
    )
    print(
        f"# {stamp['machine']}; torch {stamp['torch']}; commit {stamp['commit']}; {args.budget_s:.0f} s per run, "
        f"seeds {args.seeds}, compile cache {args.compile_cache}",
        flush=True,
    )
    results, tables, rows = {}, [], []
    for model in args.models:
        warm = tempfile.mkdtemp(prefix="genperf-inductor-", dir=work)
        if args.compile_cache == "warm":  # a short compiled run fills the cache the measured runs reuse
            run_variant(model, "fill", args.seeds[0], 1, 1, work, warm)
        curves = {v: [] for v in ("baseline", f"genperf {args.genperf_options}".strip())}
        for i, seed in enumerate(args.seeds):
            for variant in list(curves)[:: 1 if i % 2 == 0 else -1]:
                cold = tempfile.mkdtemp(prefix="genperf-inductor-", dir=work)
                cache = warm if args.compile_cache == "warm" else cold
                curves[variant].append(run_variant(model, variant, seed, args.budget_s, args.points, work, cache))
        results[model] = curves
        model_rows, target, reached = summarize(model, curves, table_s)
        for r in model_rows:
            r["time_to_target_s"] = json.dumps(reached[r["variant"]])
            r["target"] = target
        rows += [{**r, **stamp} for r in model_rows]
        tables.append(markdown(model, model_rows, target, reached, table_s))
        print("\n" + tables[-1] + "\n", flush=True)
    if args.csv:
        from genperf.perf import append_csv

        append_csv(args.csv, rows)
    if args.plot:
        plot(args.plot, results)
    if args.markdown:
        head = (
            f"Time to quality on {stamp['machine']}, {stamp['date']}, commit {stamp['commit']}, torch "
            f"{stamp['torch']}; {args.budget_s:.0f} s of training per run, seeds {args.seeds}, compile cache "
            f"{args.compile_cache} (`python benchmarks/bench_quality.py`; median over seeds [range])."
        )
        if args.plot:
            relative = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.markdown)))
            tables.append(f"![held-out quality against minutes of training]({relative})")
        with open(args.markdown, "a") as f:  # one section per run of this script
            f.write(head + "\n\n" + "\n\n".join(tables) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
